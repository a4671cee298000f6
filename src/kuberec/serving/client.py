"""A small V2 (Open Inference Protocol) client for the served recommenders (stdlib HTTP).

`recommend_similar(url, image=..., item_id=..., k=5)` and `recommend_products(url, user_id, candidates, k)` return
rows as dicts; `infer(url, model, columns, params)` is the raw call (columns -> V2 inputs, outputs -> columns).
Errors the server reports (4xx with `{"error": ...}` or `{"detail": ...}`) raise `ServingRequestError` with the
server's message.
"""

from __future__ import annotations

import base64
import http.client
import json
import urllib.parse
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kuberec.errors import KuberecError
from kuberec.models import SIMILARITY, WIDEDEEP

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 60.0


class ServingRequestError(KuberecError):
    """The server refused or failed a request; `status` is the HTTP status, the message is the server's."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _datatype(values: Sequence[Any]) -> str:
    if all(isinstance(v, (str, bytes)) for v in values):
        return "BYTES"
    if all(isinstance(v, (bool, np.bool_)) for v in values):
        return "BOOL"
    if all(isinstance(v, (int, np.integer)) for v in values):
        return "INT64"
    return "FP64"


def request_body(columns: Mapping[str, Sequence[Any]], params: Mapping[str, Any] | None = None) -> dict:
    """V2 inference request: one 1-d input per column (all columns the same length)."""
    inputs = []
    for name, values in columns.items():
        values = [v.decode() if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)
                  for v in values]
        inputs.append({"name": name, "shape": [len(values)], "datatype": _datatype(values), "data": values})
    body: dict[str, Any] = {"inputs": inputs}
    if params:
        body["parameters"] = dict(params)
    return body


def post(url: str, path: str, payload: bytes | str, timeout: float = TIMEOUT_S) -> tuple[int, bytes]:
    """POST `payload` as JSON to `url` + `path` (the URL may have a path of its own, e.g. a proxy's); returns
    (status, body) whatever the status. An unreachable server raises ServingRequestError."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        connection.request("POST", parts.path.rstrip("/") + path, body=payload,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    except OSError as err:
        raise ServingRequestError(f"cannot reach the model server at {url}: {err}; is `kuberec serve` "
                                  "running (and --url right)?") from err
    finally:
        connection.close()


def post_json(url: str, path: str, body: Any, timeout: float = TIMEOUT_S) -> Any:
    """POST JSON, return the decoded answer; non-2xx -> ServingRequestError with the server's message."""
    status, data = post(url, path, body if isinstance(body, (bytes, str)) else json.dumps(body), timeout)
    if status >= 300:
        raise ServingRequestError(f"{status}: {error_message(data)}", status)
    return json.loads(data)


def error_message(data: bytes) -> str:
    try:
        decoded = json.loads(data)
    except ValueError:
        return data.decode(errors="replace")[:500] or "(no message)"
    if isinstance(decoded, dict):
        if decoded.get("error"):
            return str(decoded["error"])
        if "detail" in decoded:  # FastAPI validation errors
            detail = decoded["detail"]
            if isinstance(detail, list):
                return "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
            return str(detail)
    return str(decoded)[:500]


def outputs_to_columns(response: Mapping[str, Any]) -> dict[str, list]:
    return {output["name"]: list(output["data"]) for output in response.get("outputs", [])}


def rows(columns: Mapping[str, list]) -> list[dict]:
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]


def infer(url: str, model: str, columns: Mapping[str, Sequence[Any]], params: Mapping[str, Any] | None = None,
          timeout: float = TIMEOUT_S) -> dict[str, list]:
    """One V2 inference call; returns the outputs as {column: values}."""
    return outputs_to_columns(post_json(url, f"/v2/models/{model}/infer", request_body(columns, params), timeout))


def image_b64(image: str | Path | bytes) -> str:
    """A PNG/JPEG file path or its bytes -> base64 text for the `image_b64` column."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(data).decode("ascii")


def similarity_columns(images: Sequence[str | Path | bytes | np.ndarray] = (),
                       item_ids: Sequence[int] = ()) -> dict[str, list]:
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


def recommend_similar(url: str = DEFAULT_URL, image: str | Path | bytes | np.ndarray | None = None,
                      item_id: int | None = None, k: int = SIMILARITY.default_k, *, with_images: bool = False,
                      include_query: bool = False, model: str = SIMILARITY.registered_name) -> list[dict]:
    """The k catalog items most similar to one image (file, bytes or 28x28 array) or one catalog item id.

    Rows: rank, item_id, distance, label, label_name (and image_png_b64 with `with_images`).
    """
    if (image is None) == (item_id is None):
        raise ServingRequestError("give exactly one of image and item_id")
    columns = similarity_columns([image] if image is not None else [], [item_id] if item_id is not None else [])
    params: dict[str, Any] = {"k": k}
    if with_images:
        params["with_images"] = True
    if include_query:
        params["include_query"] = True
    result = rows(infer(url, model, columns, params))
    return [{key: value for key, value in row.items() if key != "query"} for row in result]


def recommend_products(url: str = DEFAULT_URL, user_id: int | None = None, candidates: Sequence[int] | None = None,
                       k: int = WIDEDEEP.default_k, *, model: str = WIDEDEEP.registered_name) -> list[dict]:
    """The top-k products for a shopper (ranked by the wide & deep model), optionally among `candidates`."""
    if user_id is None:
        raise ServingRequestError("user_id is required")
    columns: dict[str, list] = {"user_id": [int(user_id)] * (len(candidates) if candidates else 1)}
    if candidates:
        columns["product_id"] = [int(c) for c in candidates]
    return rows(infer(url, model, columns, {"k": k}))


def format_table(records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not records:
        return "(no results)"
    columns = list(columns or [c for c in records[0] if c != "image_png_b64"])
    cells = [[f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
             for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
