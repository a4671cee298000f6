"""The demo page: a tiny stdlib web app on loopback that queries the V2 endpoint and shows pictures.

`GET /?item_id=N[&k=5]` shows catalog item N and its k most similar items (images, labels, distances);
`POST /similar` with `{"image_b64": ...}` (what the page's upload box sends) answers the same HTML fragment for an
uploaded picture; `GET /?user_id=U` shows the shopper's ranked products when the wide & deep model is served.
Images come from the similarity model itself (`with_images`), so the page needs nothing but the model server.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kuberec.models import SIMILARITY, WIDEDEEP
from kuberec.serving import client
from kuberec.settings import LOOPBACK, exposure_warning

log = logging.getLogger(__name__)

HOST = LOOPBACK
DEFAULT_PORT = 8000
MAX_UPLOAD_BYTES = 8 * 2**20

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>kuberec demo</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; background: #fafafa; }}
form, .upload {{ display: inline-block; margin: 0 2em 1em 0; }}
.items {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; padding: 8px; background: #fff; border: 1px solid #ddd; text-align: center; width: 120px; }}
figure.query {{ border: 2px solid #2a6; }}
figure img {{ width: 112px; height: 112px; image-rendering: pixelated; background: #000; }}
figcaption {{ font-size: 12px; }}
.error {{ color: #b00; font-weight: bold; }}
table {{ border-collapse: collapse; background: #fff; }} td, th {{ border: 1px solid #ddd; padding: 4px 8px; }}
</style></head>
<body>
<h1>kuberec</h1>
<p>Model server: <code>{server}</code> &middot; models: {models}</p>
<h2>More items like this</h2>
<form method="get" action="/"><label>catalog item id <input name="item_id" type="number" min="0"
  value="{item_id}"></label> <label>k <input name="k" type="number" min="1" max="100" value="{k}"
  style="width:4em"></label> <button type="submit">Find similar</button></form>
<div class="upload"><label>or upload an image
  <input id="upload" type="file" accept="image/png,image/jpeg"></label></div>
<div id="similar">{similar}</div>
{products_section}
<script>
document.getElementById("upload").addEventListener("change", function (event) {{
  const file = event.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = function () {{
    fetch("/similar", {{method: "POST", headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify({{image_b64: reader.result, k: {k}}})}})
      .then(r => r.text()).then(t => {{ document.getElementById("similar").innerHTML = t; }});
  }};
  reader.readAsDataURL(file);
}});
</script>
</body></html>
"""

PRODUCTS = """<h2>Top products for a shopper</h2>
<form method="get" action="/"><label>user id <input name="user_id" type="number" min="0" value="{user_id}"></label>
<button type="submit">Rank products</button></form>
<div id="products">{products}</div>"""


def _figure(row: dict, query: bool = False) -> str:
    label = html.escape(str(row.get("label_name") or "unlabelled"))
    caption = (f"query item {row['item_id']}<br>{label}" if query else
               f"#{row['rank']} item {row['item_id']}<br>{label}<br>distance {row['distance']:.3f}")
    return (f'<figure class="{"query" if query else "result"}" data-item-id="{row["item_id"]}">'
            f'<img alt="item {row["item_id"]}" src="data:image/png;base64,{row.get("image_png_b64", "")}">'
            f"<figcaption>{caption}</figcaption></figure>")


def similar_fragment(server: str, *, item_id: int | None = None, image_b64: str | None = None, k: int = 5) -> str:
    """HTML for a query and its k most similar items (or the server's error message)."""
    try:
        if item_id is not None:
            results = client.recommend_similar(server, item_id=item_id, k=k, with_images=True, include_query=True)
        else:  # the upload box sends a data: URL, which the model accepts as is
            results = client.rows(client.infer(server, SIMILARITY.registered_name, {"image_b64": [image_b64]},
                                               {"k": k, "with_images": True}))
    except client.ServingRequestError as err:
        return f'<p class="error">{html.escape(str(err))}</p>'
    query = [_figure(r, query=True) for r in results if r["rank"] == 0]
    found = [_figure(r) for r in results if r["rank"] > 0]
    return f'<div class="items">{"".join(query + found)}</div>'


def products_fragment(server: str, user_id: int) -> str:
    try:
        results = client.recommend_products(server, user_id)
    except client.ServingRequestError as err:
        return f'<p class="error">{html.escape(str(err))}</p>'
    return client.format_table(results).join(("<pre>", "</pre>")) if results else "<p>(no products)</p>"


def served_models(server: str) -> list[str]:
    """Names of the models the server serves (KServe's `GET /v2/models`; it lists a model once it has loaded)."""
    try:
        with urllib.request.urlopen(f"{server}/v2/models", timeout=10) as response:
            return list(json.loads(response.read())["models"])
    except (OSError, ValueError, KeyError):
        return []


def _int(query: dict[str, list[str]], name: str, default: int | None = None) -> int | None:
    try:
        return int(query[name][0])
    except (KeyError, IndexError, ValueError):
        return default


def make_handler(server: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("demo: " + fmt, *args)

        def _send(self, status: int, body: str, content_type: str = "text/html; charset=utf-8") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            if parts.path == "/healthz":
                return self._send(200, "ok", "text/plain")
            if parts.path != "/":
                return self._send(404, "not found", "text/plain")
            query = urllib.parse.parse_qs(parts.query)
            item_id, user_id = _int(query, "item_id"), _int(query, "user_id")
            k = min(max(_int(query, "k", 5) or 5, 1), 100)
            models = served_models(server)
            similar = similar_fragment(server, item_id=item_id, k=k) if item_id is not None else ""
            products_section = ""
            if WIDEDEEP.registered_name in models:
                products = products_fragment(server, user_id) if user_id is not None else ""
                products_section = PRODUCTS.format(user_id="" if user_id is None else user_id, products=products)
            self._send(200, PAGE.format(server=html.escape(server), models=html.escape(", ".join(models) or
                                                                                         "none ready"),
                                        item_id="" if item_id is None else item_id, k=k, similar=similar,
                                        products_section=products_section))

        def do_POST(self) -> None:
            if urllib.parse.urlsplit(self.path).path != "/similar":
                return self._send(404, "not found", "text/plain")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD_BYTES:
                return self._send(413, f'<p class="error">upload larger than {MAX_UPLOAD_BYTES // 2**20} MiB</p>')
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                image, k = str(body["image_b64"]), int(body.get("k", 5))
            except (ValueError, KeyError, TypeError):
                return self._send(400, '<p class="error">send JSON {"image_b64": ..., "k": 5}</p>')
            self._send(200, similar_fragment(server, image_b64=image, k=k))

    return Handler


@dataclass
class Demo:
    httpd: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{HOST if host in ('0.0.0.0', '::') else host}:{port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def start_demo(server: str, port: int = DEFAULT_PORT, host: str = HOST) -> Demo:
    """Serve the page on host:port (0 = any free port; default host 127.0.0.1) in a background thread."""
    warning = exposure_warning(host, "the demo page")
    if warning:
        log.warning(warning)
    httpd = ThreadingHTTPServer((host, port), make_handler(server.rstrip("/")))
    thread = threading.Thread(target=httpd.serve_forever, name="kuberec-demo", daemon=True)
    thread.start()
    demo = Demo(httpd, thread)
    log.info("demo page at %s (model server %s)", demo.url, server)
    return demo
