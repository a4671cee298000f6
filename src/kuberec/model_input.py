"""Request checks shared by the registered pyfuncs: an input error that the model server and `mlflow models serve`
answer with a 4xx (INVALID_PARAMETER_VALUE), and the params every recommender takes."""

from __future__ import annotations

from typing import Any, Collection, Mapping

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from kuberec.errors import KuberecError

MAX_K = 100


class ModelInputError(KuberecError, MlflowException):
    """A request the model cannot answer; the message names the row and what to fix."""

    def __init__(self, message: str) -> None:
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


def checked_params(params: Mapping[str, Any] | None, known: Collection[str]) -> dict[str, Any]:
    """The request's params, refusing any name the model does not take (a typo must not be ignored silently)."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ModelInputError(f"unknown parameters {unknown}; known: {', '.join(known)}")
    return params


def parse_k(params: Mapping[str, Any], default: int, maximum: int = MAX_K) -> int:
    """The `k` param: an integer (JSON may send 5.0) in 1..maximum."""
    k = params.get("k", default)
    try:
        k_int = int(k)
        if k_int != float(k):
            raise ValueError
    except (TypeError, ValueError) as err:
        raise ModelInputError(f"k must be an integer 1..{maximum}, got {k!r}") from err
    if not 1 <= k_int <= maximum:
        raise ModelInputError(f"k must be between 1 and {maximum}, got {k_int}")
    return k_int
