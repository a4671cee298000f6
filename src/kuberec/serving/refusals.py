"""Requests kuberec's model servers must refuse, each with the HTTP status and the words of the refusal.

One list for every place a model is served: the serving tests send it to `kuberec serve`'s model server, and `make
e2e` sends it to the InferenceServices on the cluster (the same runtime in kuberec's serving image), so a bad input
gets the same 4xx naming the problem wherever it is asked. After each refusal the server must go on serving.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from kuberec.models import SIMILARITY, WIDEDEEP
from kuberec.serving import MAX_REQUEST_BYTES, client

UNKNOWN_ID = 10 ** 9  # no catalog item or product has it


@dataclass(frozen=True)
class BadRequest:
    case: str
    model: str  # the model name in the request's path
    body: str  # sent exactly as it is
    status: int
    message: str  # in the server's error message (case-insensitive)

    def check(self, url: str) -> str:
        """Send it to the server at `url`; "" when refused as expected, else what happened instead."""
        status, data = client.post(url, f"/v2/models/{self.model}/infer", self.body)
        said = client.error_message(data)
        if status != self.status or self.message.lower() not in said.lower():
            return f"{self.case}: expected {self.status} saying {self.message!r}, got {status}: {said[:200]}"
        return ""


def _body(columns: dict, params: dict | None = None) -> str:
    return json.dumps(client.request_body(columns, params))


def _v2_input(name: str, shape: list[int], datatype: str, data: list) -> str:
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]})


def bad_requests(model: str) -> list[BadRequest]:
    """The refusals for `model` (a registered name: kuberec-similarity or kuberec-widedeep)."""
    common = [
        BadRequest("malformed JSON", model, '{"inputs": [', 422, "json"),
        BadRequest("empty body", model, "", 422, ""),
        BadRequest("model not found", "no-such-model", _body({"item_id": [1]}), 404, "no-such-model does not exist"),
    ]
    if model == SIMILARITY.registered_name:
        return common + [
            BadRequest("no inputs", model, '{"inputs": []}', 400, "no queries"),
            BadRequest("wrong datatype", model, _v2_input("item_id", [1], "BYTES", ["seven"]), 400, "item_id"),
            BadRequest("wrong shape", model, _v2_input("item_id", [3], "INT64", [1]), 400, ""),
            BadRequest("undecodable image", model, _body({"image_b64": [base64.b64encode(b"not an image").decode()]}),
                       400, "not a readable PNG/JPEG"),
            BadRequest("not base64", model, _body({"image_b64": ["%%%"]}), 400, "not valid base64"),
            BadRequest("pixel count", model, _body({"pixels": ["1,2,3"]}), 400, "pixels has 3 values, expected 784"),
            BadRequest("oversized", model, _body({"image_b64": ["A" * (MAX_REQUEST_BYTES + 1)]}), 413,
                       "limit is 8 MiB"),
            BadRequest("k zero", model, _body({"item_id": [1]}, {"k": 0}), 400, "k must be between 1 and 100"),
            BadRequest("k too big", model, _body({"item_id": [1]}, {"k": 101}), 400, "k must be between 1 and 100"),
            BadRequest("unknown param", model, _body({"item_id": [1]}, {"top": 3}), 400, "unknown parameters"),
            BadRequest("unknown item", model, _body({"item_id": [UNKNOWN_ID]}), 400, f"unknown item_id {UNKNOWN_ID}"),
        ]
    if model == WIDEDEEP.registered_name:
        return common + [
            BadRequest("no inputs", model, '{"inputs": []}', 400, "missing inputs ['user_id']"),
            BadRequest("unknown product", model, _body({"user_id": [1], "product_id": [UNKNOWN_ID]}), 400,
                       "unknown product_id"),
            BadRequest("k zero", model, _body({"user_id": [1]}, {"k": 0}), 400, "k must be between 1 and 100"),
            BadRequest("no user", model, _body({"product_id": [1]}), 400, "user_id"),
            BadRequest("negative user", model, _body({"user_id": [-3]}), 400, "user_id must be >= 0"),
        ]
    raise ValueError(f"no refusals known for model {model!r}")
