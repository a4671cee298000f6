"""Asking a served similarity model: its request columns, `kuberec recommend` options, refusals and demo section.

A query is an image (PNG/JPEG file or bytes, base64 in `image_b64`), a 28x28 array (`pixels`) or a catalog item id
(`item_id`); the answer rows are rank, item_id, distance, label, label_name (and image_png_b64 with `with_images`).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kuberec.inference import (
    MAX_REQUEST_BYTES,
    UNKNOWN_ID,
    BadRequest,
    QueryOption,
    ServingRequestError,
    body_text,
    infer,
    rows,
    v2_input,
)

Image = str | Path | bytes | np.ndarray

QUERY_OPTIONS = (
    QueryOption("--image", "a PNG/JPEG file: the most similar catalog items"),
    QueryOption("--item-id", "a catalog item: the most similar other items", int),
)
PROBE = {"item_id": [0]}  # one query any catalog answers (the e2e checks and load tests ask it)
ANSWER_COLUMN = "item_id"  # the output column that tells two answers apart


def image_b64(image: str | Path | bytes) -> str:
    """A PNG/JPEG file path or its bytes -> base64 text for the `image_b64` column."""
    if isinstance(image, bytes):
        return base64.b64encode(image).decode("ascii")
    path = Path(image)
    if not path.is_file():
        raise ServingRequestError(f"image {image}: no such file")
    return base64.b64encode(path.read_bytes()).decode("ascii")


def request_columns(images: Sequence[Image] = (), item_ids: Sequence[int] = ()) -> dict[str, list]:
    """Request columns for a batch: image files/bytes (base64), 28x28 arrays (pixels), then item ids."""
    image_col, pixel_col, item_col = [], [], []
    for image in images:
        if isinstance(image, np.ndarray):
            image_col.append("")
            pixel_col.append(",".join(map(str, np.asarray(image, np.uint8).ravel().tolist())))
        else:
            image_col.append(image_b64(image))
            pixel_col.append("")
        item_col.append(-1)  # "no item in this row" (an integer column cannot hold missing values)
    for item_id in item_ids:
        image_col.append("")
        pixel_col.append("")
        item_col.append(int(item_id))
    columns = {"image_b64": image_col, "pixels": pixel_col, "item_id": item_col}
    return {name: values for name, values in columns.items() if any(v not in ("", -1) for v in values)}


def recommend(url: str, *, model: str, image: Image | None = None, item_id: int | None = None, k: int | None = None,
              with_images: bool = False, include_query: bool = False) -> list[dict]:
    """The catalog items most similar to one image (file, bytes or 28x28 array) or one catalog item id; k of them
    (the model's default when None)."""
    if (image is None) == (item_id is None):
        raise ServingRequestError("give exactly one of image and item_id")
    columns = request_columns([image] if image is not None else [], [item_id] if item_id is not None else [])
    params: dict[str, Any] = {"k": k} if k is not None else {}
    if with_images:
        params["with_images"] = True
    if include_query:
        params["include_query"] = True
    return [{key: value for key, value in row.items() if key != "query"}
            for row in rows(infer(url, model, columns, params))]


def bad_requests(model: str) -> list[BadRequest]:
    """What a server of this model must refuse, beyond kuberec.inference.protocol_bad_requests."""
    return [
        BadRequest("no inputs", model, '{"inputs": []}', 400, "no queries"),
        BadRequest("wrong datatype", model, v2_input("item_id", [1], "BYTES", ["seven"]), 400, "item_id"),
        BadRequest("wrong shape", model, v2_input("item_id", [3], "INT64", [1]), 400, ""),
        BadRequest("undecodable image", model, body_text({"image_b64": [base64.b64encode(b"not an image").decode()]}),
                   400, "not a readable PNG/JPEG"),
        BadRequest("not base64", model, body_text({"image_b64": ["%%%"]}), 400, "not valid base64"),
        BadRequest("pixel count", model, body_text({"pixels": ["1,2,3"]}), 400, "pixels has 3 values, expected 784"),
        BadRequest("oversized", model, body_text({"image_b64": ["A" * (MAX_REQUEST_BYTES + 1)]}), 413,
                   "limit is 8 MiB"),
        BadRequest("k zero", model, body_text({"item_id": [1]}, {"k": 0}), 400, "k must be between 1 and 100"),
        BadRequest("k too big", model, body_text({"item_id": [1]}, {"k": 101}), 400, "k must be between 1 and 100"),
        BadRequest("unknown param", model, body_text({"item_id": [1]}, {"top": 3}), 400, "unknown parameters"),
        BadRequest("unknown item", model, body_text({"item_id": [UNKNOWN_ID]}), 400, f"unknown item_id {UNKNOWN_ID}"),
    ]


# The demo page's section. The upload box posts {"image_b64": <data: URL>, "k": ...} to the page's /<model>/answer,
# which answers with demo_answer's fragment; the model accepts a data: URL as it is.
DEMO_FORM = """<h2>More items like this</h2>
<form method="get" action="/"><label>catalog item id <input name="item_id" type="number" min="0"
  value="{item_id}"></label> <label>k <input name="k" type="number" min="1" max="100" value="{k}"
  style="width:4em"></label> <button type="submit">Find similar</button></form>
<div class="upload"><label>or upload an image
  <input id="upload" type="file" accept="image/png,image/jpeg"></label></div>
<div id="similar">{answer}</div>
<script>
document.getElementById("upload").addEventListener("change", function (event) {{
  const file = event.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = function () {{
    fetch("{answer_path}", {{method: "POST", headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify({{image_b64: reader.result, k: "{k}"}})}})
      .then(r => r.text()).then(t => {{ document.getElementById("similar").innerHTML = t; }});
  }};
  reader.readAsDataURL(file);
}});
</script>"""


def _figure(row: dict, query: bool = False) -> str:
    label = html.escape(str(row.get("label_name") or "unlabelled"))
    caption = (f"query item {row['item_id']}<br>{label}" if query else
               f"#{row['rank']} item {row['item_id']}<br>{label}<br>distance {row['distance']:.3f}")
    return (f'<figure class="{"query" if query else "result"}" data-item-id="{row["item_id"]}">'
            f'<img alt="item {row["item_id"]}" src="data:image/png;base64,{row.get("image_png_b64", "")}">'
            f"<figcaption>{caption}</figcaption></figure>")


def demo_answer(url: str, model: str, query: Mapping[str, str]) -> str:
    """HTML for the page's query (item_id or image_b64, and k) and its most similar items; "" when the query asks
    this model nothing. A refusal raises ServingRequestError (the page shows its message)."""
    k = int(query["k"]) if query.get("k") else None
    if query.get("item_id"):
        results = recommend(url, model=model, item_id=int(query["item_id"]), k=k, with_images=True,
                            include_query=True)
    elif query.get("image_b64"):
        results = rows(infer(url, model, {"image_b64": [query["image_b64"]]},
                             {"with_images": True, **({"k": k} if k else {})}))
    else:
        return ""
    figures = [_figure(r, query=True) for r in results if r["rank"] == 0]
    figures += [_figure(r) for r in results if r["rank"] > 0]
    return f'<div class="items">{"".join(figures)}</div>'


def demo_form(query: Mapping[str, str], answer: str, answer_path: str) -> str:
    return DEMO_FORM.format(item_id=html.escape(query.get("item_id", "")), k=html.escape(query.get("k", "")),
                            answer=answer, answer_path=answer_path)
