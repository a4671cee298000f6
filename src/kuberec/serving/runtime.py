"""The MLServer runtime kuberec serves with: mlserver-mlflow's MLflowRuntime, with user errors as HTTP 4xx.

Stock `mlserver_mlflow.MLflowRuntime.predict` (1.7.1) lets every pyfunc exception escape and MLServer only maps its
own `MLServerError` to a status, so a request with an undecodable image or `k=0` gets 500 with no message. This
runtime turns what the client can fix into `InferenceError` (400, `{"error": "<message>"}`) and rejects oversized
payloads with 413; genuine failures still give 500 and a logged traceback. KServe's ClusterServingRuntime uses the
same class from the serving image (`implementation: kuberec.serving.runtime.KuberecMLflowRuntime`).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from mlflow.exceptions import MlflowException
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver_mlflow import MLflowRuntime
from mlserver_mlflow.codecs import TensorDictCodec

from kuberec.errors import KuberecError

log = logging.getLogger(__name__)

IMPLEMENTATION = f"{__name__}.KuberecMLflowRuntime"
MAX_REQUEST_BYTES = 8 * 2**20  # decoded payload; the pyfunc's own limit is 5 MiB per image, 1024 rows
# MLflow error codes that mean "the request is wrong" (schema enforcement, bad params, kuberec input errors).
CLIENT_ERROR_CODES = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE"}


class PayloadTooLarge(MLServerError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request payload is {size / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB "
                         "(send fewer rows per request, or smaller images)", status_code=413)


def payload_size(payload: InferenceRequest) -> int:
    """Approximate decoded size in bytes: string/bytes lengths plus 8 bytes per number."""
    def walk(values: Iterable[Any]) -> int:
        total = 0
        for value in values:
            if isinstance(value, (str, bytes, bytearray)):
                total += len(value)
            elif isinstance(value, (list, tuple)):
                total += walk(value)
            else:
                total += 8
        return total

    return sum(walk(getattr(item.data, "root", item.data) or []) for item in payload.inputs)


def is_client_error(err: BaseException) -> bool:
    if isinstance(err, KuberecError):
        return True
    return isinstance(err, MlflowException) and err.error_code in CLIENT_ERROR_CODES


class KuberecMLflowRuntime(MLflowRuntime):
    """MLflowRuntime whose input errors are 4xx with the model's message; see the module docstring."""

    max_request_bytes = MAX_REQUEST_BYTES

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        size = payload_size(payload)
        if size > self.max_request_bytes:
            raise PayloadTooLarge(size, self.max_request_bytes)
        try:
            decoded = self.decode_request(payload)
        except MLServerError:
            raise
        except Exception as err:  # codecs raise ValueError/TypeError/KeyError for mismatched shapes and types
            raise InferenceError(f"could not decode the request inputs: {err}") from err
        params = payload.parameters.model_extra if payload.parameters and payload.parameters.model_extra else None
        self._check_params(params)
        try:
            output = self._model.predict(decoded, params=params)
        except Exception as err:
            if not is_client_error(err):
                raise
            message = err.message if isinstance(err, MlflowException) else str(err)
            log.info("%s: rejected request: %s", self.name, message)
            raise InferenceError(message) from err
        return self.encode_response(output, default_codec=TensorDictCodec)

    def _check_params(self, params: dict | None) -> None:
        # MLflow drops parameters its signature does not declare with only a log warning; a typo such as
        # "top" for "k" would silently give default results, so name it instead.
        schema = self._signature.params if self._signature is not None else None
        if not params or schema is None:
            return
        known = [p.name for p in schema.params]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise InferenceError(f"unknown parameters {unknown}; {self.name} accepts {known}")
