"""The demo page: a tiny stdlib web app on loopback that queries the V2 endpoint and shows pictures.

The page has one section per served model, each its package's (`ModelRecord.serving`): `GET /?item_id=N[&k=5]` shows
catalog item N and its k most similar items (images, labels, distances), `GET /?user_id=U` the shopper's ranked
products. `POST /<model>/answer` with the query as JSON (what the upload box sends: `{"image_b64": ...}`) answers the
section's HTML fragment alone. Images come from the similarity model itself (`with_images`), so the page needs
nothing but the model server.
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
from typing import Any, Mapping

from kuberec.inference import ServingRequestError
from kuberec.models import MODELS, ModelRecord
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
{sections}
</body></html>
"""


def answer(server: str, record: ModelRecord, query: Mapping[str, Any]) -> str:
    """The model's HTML answer to the page's query ("" when the query is not for it), or the server's refusal."""
    try:
        return record.serving.demo_answer(server, record.registered_name, {k: str(v) for k, v in query.items()})
    except (ServingRequestError, ValueError) as err:
        return f'<p class="error">{html.escape(str(err))}</p>'


def served_models(server: str) -> list[str]:
    """Names of the models the server serves (KServe's `GET /v2/models`; it lists a model once it has loaded)."""
    try:
        with urllib.request.urlopen(f"{server}/v2/models", timeout=10) as response:
            return list(json.loads(response.read())["models"])
    except (OSError, ValueError, KeyError):
        return []


def page(server: str, query: Mapping[str, str]) -> str:
    """A section for each model the server serves (for every model when it lists none: the forms, and the reason)."""
    models = served_models(server)
    records = [r for r in MODELS.values() if r.registered_name in models] or list(MODELS.values())
    sections = [record.serving.demo_form(query, answer(server, record, query), f"/{record.name}/answer")
                for record in records]
    return PAGE.format(server=html.escape(server), models=html.escape(", ".join(models) or "none ready"),
                       sections="\n".join(sections))


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
            query = {name: values[0] for name, values in urllib.parse.parse_qs(parts.query).items()}
            self._send(200, page(server, query))

        def do_POST(self) -> None:
            path = urllib.parse.urlsplit(self.path).path.strip("/").split("/")
            record = MODELS.get(path[0]) if len(path) == 2 and path[1] == "answer" else None
            if record is None:
                return self._send(404, "not found", "text/plain")
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD_BYTES:
                return self._send(413, f'<p class="error">upload larger than {MAX_UPLOAD_BYTES // 2**20} MiB</p>')
            try:
                query = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(query, dict):
                    raise ValueError
            except ValueError:
                return self._send(400, '<p class="error">send the query as a JSON object, e.g. {"image_b64": ..., '
                                       '"k": 5}</p>')
            self._send(200, answer(server, record, query))

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
