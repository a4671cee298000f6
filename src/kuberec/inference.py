"""The Open Inference Protocol (V2) as kuberec's clients speak it: a small stdlib HTTP client, the requests every
served model must refuse, and the shapes a model package uses to describe its own queries.

`infer(url, model, columns, params)` is one call (columns -> V2 inputs, outputs -> columns). Errors the server reports
(4xx with `{"error": ...}` or `{"detail": ...}`) raise `ServingRequestError` with the server's message. Each model's
package builds its requests on this (`kuberec.<model>.serving`); `kuberec.models` lists them.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kuberec.errors import KuberecError

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 60.0
MAX_REQUEST_BYTES = 8 * 2**20  # decoded request payload; the pyfunc's own limit is 5 MiB per image, 1024 rows
UNKNOWN_ID = 10 ** 9  # no catalog item, product or shopper has it


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


@dataclass(frozen=True)
class QueryOption:
    """One `kuberec recommend` option of a model: `--item-id 3` becomes `recommend(url, item_id=3, ...)`.

    The options that `starts` a query are mutually exclusive across all models: the one given picks the model."""

    flag: str  # e.g. "--item-id"; the keyword argument is its name with underscores
    help: str
    parse: Callable[[str], Any] = str
    starts: bool = True  # False: it only refines a query another option of the same model starts

    @property
    def keyword(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class BadRequest:
    """A request every server of the model must refuse with `status` and `message` in its words."""

    case: str
    model: str  # the model name in the request's path
    body: str  # sent exactly as it is
    status: int
    message: str  # in the server's error message (case-insensitive)

    def check(self, url: str) -> str:
        """Send it to the server at `url`; "" when refused as expected, else what happened instead."""
        status, data = post(url, f"/v2/models/{self.model}/infer", self.body)
        said = error_message(data)
        if status != self.status or self.message.lower() not in said.lower():
            return f"{self.case}: expected {self.status} saying {self.message!r}, got {status}: {said[:200]}"
        return ""


def body_text(columns: Mapping[str, Sequence[Any]], params: Mapping[str, Any] | None = None) -> str:
    """A request body as the bad requests send it: JSON text."""
    return json.dumps(request_body(columns, params))


def v2_input(name: str, shape: list[int], datatype: str, data: list) -> str:
    """A body with one input exactly as given (a shape or datatype `request_body` would never write)."""
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]})


def protocol_bad_requests(model: str) -> list[BadRequest]:
    """The refusals that do not depend on the model: bodies that are not a V2 request, a model that is not served."""
    return [
        BadRequest("malformed JSON", model, '{"inputs": [', 422, "json"),
        BadRequest("empty body", model, "", 422, ""),
        BadRequest("model not found", "no-such-model", body_text({"item_id": [1]}), 404,
                   "no-such-model does not exist"),
    ]
