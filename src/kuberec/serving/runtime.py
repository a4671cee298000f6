"""The MLServer runtime kuberec serves with: mlserver-mlflow's MLflowRuntime, with user errors as HTTP 4xx.

Stock `mlserver_mlflow.MLflowRuntime.predict` (1.7.1) lets every pyfunc exception escape and MLServer only maps its
own `MLServerError` to a status, so a request with an undecodable image or `k=0` gets 500 with no message. This
runtime turns what the client can fix into `InferenceError` (400, `{"error": "<message>"}`) and rejects oversized
payloads with 413; genuine failures still give 500 and a logged traceback. KServe's ClusterServingRuntime uses the
same class from the serving image (`implementation: kuberec.serving.runtime.KuberecMLflowRuntime`).

Batching: a model whose output signature has a `query` column (the request row each output row answers, as the
similarity recommender's) gets concurrent requests coalesced into one pyfunc call: requests with the same columns
and parameters that arrive while a call runs are decoded, concatenated and predicted together (one TensorFlow call,
one index search), and the output is split back by `query`. No request waits for a batch to fill, so a lone client
pays nothing (docs/BENCHMARKS.md, "Serving that uses the machine"). MLServer's own adaptive batching cannot be used
for such models: it merges the requests' parameters (one request's `k` would apply to all) and splits outputs by
input row counts, while this output has `k` rows per query.

Versions: the registry version served is `parameters.extra.registry_version` in model-settings.json, and every
response carries it as `model_version`. It is deliberately not MLServer's own `parameters.version`: loading a new
*version* makes MLServer route requests to it while it is still loading (they fail as not ready), whereas reloading
an unversioned model loads the new one first and then swaps (how `kuberec serve` follows a moving alias).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver_mlflow import MLflowRuntime
from mlserver_mlflow.codecs import TensorDictCodec
from mlserver_mlflow.runtime import get_model_uri

from kuberec.errors import KuberecError

log = logging.getLogger(__name__)

IMPLEMENTATION = f"{__name__}.KuberecMLflowRuntime"
MAX_REQUEST_BYTES = 8 * 2**20  # decoded payload; the pyfunc's own limit is 5 MiB per image, 1024 rows
# MLflow error codes that mean "the request is wrong" (schema enforcement, bad params, kuberec input errors).
CLIENT_ERROR_CODES = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE"}
QUERY_COLUMN = "query"  # output column naming the request row an output row answers: what makes a model batchable
MAX_BATCH_ROWS = 64  # request rows per batched call (8 concurrent single-image queries is the case measured)
COLLECT_TURNS = 3  # event-loop turns a batch waits for requests already being parsed (microseconds, not a timer)
REGISTRY_VERSION = "registry_version"  # model-settings parameters.extra key: the registry version served


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


@dataclass
class _Pending:
    """A decoded request waiting for its batch: its rows, parameters and where its answer goes."""

    frame: pd.DataFrame
    params: dict | None
    answer: asyncio.Future = field(repr=False)

    @property
    def key(self) -> str:
        # Only requests with the same columns and parameters can share a pyfunc call.
        return json.dumps([list(self.frame.columns), self.params], sort_keys=True, default=str)


class KuberecMLflowRuntime(MLflowRuntime):
    """MLflowRuntime whose input errors are 4xx with the model's message; see the module docstring."""

    max_request_bytes = MAX_REQUEST_BYTES
    max_batch_rows = MAX_BATCH_ROWS

    async def load(self) -> bool:
        # MLflowRuntime.load, with the pyfunc loaded in a thread: while a new champion loads (seconds of TensorFlow),
        # the event loop keeps answering with the model being replaced.
        self._model = await asyncio.to_thread(mlflow.pyfunc.load_model, await get_model_uri(self._settings))
        self._input_schema = self._model.metadata.get_input_schema()
        self._signature = self._model.metadata.signature
        self._sync_metadata()
        extra = self._settings.parameters.extra if self._settings.parameters else None
        self.registry_version = str((extra or {}).get(REGISTRY_VERSION) or "") or None
        outputs = self._signature.outputs if self._signature is not None else None
        self.batching = outputs is not None and QUERY_COLUMN in (outputs.input_names() or [])
        self._pending: list[_Pending] = []
        self._batching_task_running = False
        # The model's objects live as long as the server: move them out of the collector's reach, or each full
        # collection rescans them (measured: p99 113 -> 36 ms for image queries at 8 connections).
        gc.freeze()
        return True

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
        if self.batching and isinstance(decoded, pd.DataFrame) and len(decoded) < self.max_batch_rows:
            output = await self._batched(decoded, params)
        else:
            output = self._predict_one(decoded, params)
        response = self.encode_response(output, default_codec=TensorDictCodec)
        response.model_version = self.registry_version or response.model_version
        return response

    def _predict_one(self, decoded: Any, params: dict | None) -> Any:
        try:
            return self._model.predict(decoded, params=params)
        except Exception as err:
            if not is_client_error(err):
                raise
            message = err.message if isinstance(err, MlflowException) else str(err)
            log.info("%s: rejected request: %s", self.name, message)
            raise InferenceError(message) from err

    async def _batched(self, frame: pd.DataFrame, params: dict | None) -> pd.DataFrame:
        loop = asyncio.get_running_loop()
        pending = _Pending(frame, params, loop.create_future())
        self._pending.append(pending)
        if not self._batching_task_running:
            self._batching_task_running = True
            loop.create_task(self._run_batches())
        return await pending.answer

    async def _run_batches(self) -> None:
        """Answer what is queued, batch by batch. The model runs on the event loop (measured: a helper thread gained
        nothing, the GIL-holding parts dominate), so requests that arrive meanwhile queue for the next round."""
        for _ in range(COLLECT_TURNS):  # requests already being parsed join this round
            await asyncio.sleep(0)
        self._batching_task_running = False
        queued, self._pending = self._pending, []
        groups: dict[str, list[_Pending]] = {}
        for pending in queued:
            groups.setdefault(pending.key, []).append(pending)
        for group in groups.values():
            for batch in _chunks(group, self.max_batch_rows):
                try:
                    outcomes = self._answer(batch)
                except Exception as err:  # never leave a request waiting
                    outcomes = [(None, err)] * len(batch)
                for pending, (result, error) in zip(batch, outcomes):
                    _set(pending, result=result, error=error)

    def _answer(self, batch: list[_Pending]) -> list[tuple[Any, BaseException | None]]:
        """(result, error) per request of `batch`: one pyfunc call, split by the `query` column."""
        if len(batch) > 1:
            try:
                output = self._model.predict(pd.concat([p.frame for p in batch], ignore_index=True),
                                             params=batch[0].params)
            except Exception as err:
                if not is_client_error(err):
                    return [(None, err)] * len(batch)
                output = None  # one bad request must not fail its neighbours: answer each alone below
            if output is not None:
                return [(part, None) for part in _split_by_query(output, [len(p.frame) for p in batch])]
        outcomes = []
        for pending in batch:
            try:
                outcomes.append((self._predict_one(pending.frame, pending.params), None))
            except Exception as err:
                outcomes.append((None, err))
        return outcomes

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


def _split_by_query(output: pd.DataFrame, sizes: list[int]) -> list[pd.DataFrame]:
    """The output rows of each request of a batch whose requests had `sizes` rows, `query` renumbered from 0."""
    if not output[QUERY_COLUMN].is_monotonic_increasing:
        output = output.sort_values(QUERY_COLUMN, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    cuts = np.searchsorted(output[QUERY_COLUMN].to_numpy(), starts)
    parts = []
    for first, (begin, end) in zip(starts[:-1], zip(cuts[:-1], cuts[1:])):
        part = output.iloc[begin:end].reset_index(drop=True)
        parts.append(part.assign(**{QUERY_COLUMN: part[QUERY_COLUMN] - first}))
    return parts


def _chunks(group: list[_Pending], max_rows: int) -> Iterable[list[_Pending]]:
    """Consecutive runs of `group` with at most `max_rows` rows in all (a request is never split)."""
    batch: list[_Pending] = []
    rows = 0
    for pending in group:
        if batch and rows + len(pending.frame) > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(pending)
        rows += len(pending.frame)
    if batch:
        yield batch


def _set(pending: _Pending, *, result: Any = None, error: BaseException | None = None) -> None:
    if pending.answer.done():  # the request was cancelled (client gone)
        return
    if error is not None:
        pending.answer.set_exception(error)
    else:
        pending.answer.set_result(result)
