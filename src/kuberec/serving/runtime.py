"""kuberec's recommenders on KServe's Python model server: `KuberecModel`, a `kserve.Model` over an MLflow pyfunc,
`FollowedRepository`, the models one server process serves, and `KuberecDataPlane`, KServe's data plane.

KServe decodes the Open Inference Protocol (V2) request, over REST (JSON tensors or the binary tensor data extension)
or gRPC, into an `InferRequest`; this model turns its 1-d inputs into the DataFrame the pyfunc's signature describes,
predicts, and answers one 1-d output per column of the pyfunc's result. What the client can fix is `InvalidInput`
(HTTP 400 / gRPC INVALID_ARGUMENT, with the model's message); an oversized request is `PayloadTooLarge` (413 /
INVALID_ARGUMENT); a genuine failure stays an error (500 / INTERNAL) with a logged traceback.

Parameters: a request's `parameters` hold the protocol's own (`binary_data_output`, the sequence and scheduling
extensions'), which KServe acts on, and the model's (`k`, ...). The model's are checked against the pyfunc's params
schema: MLflow drops an undeclared one with only a log warning, so a typo such as "top" for "k" would silently give
default results; it is refused instead, naming what the model accepts.

Batching: a model whose output has a `query` column (the request row each output row answers, as the similarity
recommender's) gets concurrent requests coalesced into one pyfunc call: requests with the same columns and
parameters that arrive while a call runs are concatenated and predicted together (one TensorFlow call, one index
search), and the output is split back by `query`. No request waits for a batch to fill, so a lone client pays
nothing (docs/BENCHMARKS.md, "Serving that uses the machine").

Versions: `registry_version` (the MLflow registry version served) is every response's `model_version`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelRepository
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.dataplane import DataPlane
from kserve.utils.numpy_codec import from_np_dtype
from mlflow.exceptions import MlflowException
from prometheus_client import Counter

from kuberec.errors import KuberecError
from kuberec.inference import MAX_REQUEST_BYTES
from kuberec.serving import repository

log = logging.getLogger(__name__)

# MLflow error codes that mean "the request is wrong" (schema enforcement, bad params, kuberec input errors).
CLIENT_ERROR_CODES = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE"}
QUERY_COLUMN = "query"  # output column naming the request row an output row answers: what makes a model batchable
MAX_BATCH_ROWS = 64  # request rows per batched call (8 concurrent single-image queries is the case measured)
COLLECT_TURNS = 3  # event-loop turns a batch waits for requests already being parsed (microseconds, not a timer)
# Request parameters the protocol and its extensions reserve (binary tensor data, sequences, schedule policy; the
# list tritonclient refuses as custom parameters): the server's, never the model's.
PROTOCOL_PARAMETERS = frozenset({"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority",
                                 "timeout", "headers"})
PROTOCOL_PARAMETER_PREFIX = "triton_"

# MLflow column types -> V2 datatypes (model metadata).
V2_DATATYPES = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64",
                "string": "BYTES", "binary": "BYTES"}

# Beside KServe's per-model latency histograms (request_predict_seconds: count = requests), the refusals and failures.
REQUEST_ERRORS = Counter("kuberec_request_errors", "inference requests answered with an error, by kind",
                         ["model_name", "kind"])


class PayloadTooLarge(InvalidInput):
    """A request over the size limit (HTTP 413)."""

    status_code = 413

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"request payload is {size / 2**20:.1f} MiB; the limit is {limit / 2**20:.0f} MiB "
                         "(send fewer rows per request, or smaller images)")


def payload_size(payload: InferRequest) -> int:
    """Approximate decoded size in bytes: string/bytes lengths plus 8 bytes per number (binary tensors: their bytes)."""
    def walk(values: Iterable[Any]) -> int:
        total = 0
        for value in values:
            if isinstance(value, (str, bytes, bytearray)):
                total += len(value)
            elif isinstance(value, (list, tuple, np.ndarray)):
                total += walk(value)
            else:
                total += 8
        return total

    total = 0
    for item in payload.inputs:
        raw = getattr(item, "_raw_data", None)
        total += len(raw) if raw is not None else walk(item.data if item.data is not None else [])
    return total


def is_client_error(err: BaseException) -> bool:
    if isinstance(err, (KuberecError, InvalidInput)):
        return True
    return isinstance(err, MlflowException) and err.error_code in CLIENT_ERROR_CODES


def _parameter_value(value: Any) -> Any:
    """A REST parameter as it is; a gRPC `InferParameter` as the value of the field it sets."""
    if hasattr(value, "WhichOneof"):
        field = value.WhichOneof("parameter_choice")
        return getattr(value, field) if field else None
    return value


def request_frame(payload: InferRequest) -> pd.DataFrame:
    """The request's inputs as DataFrame columns: each a 1-d tensor ([n] or [n, 1]) of one length; BYTES as str."""
    columns: dict[str, np.ndarray] = {}
    for item in payload.inputs:
        try:
            values = item.as_numpy()
        except (ValueError, TypeError) as err:  # data that does not fill the shape, or is not of the datatype
            raise InvalidInput(f"input {item.name!r} ({item.datatype}, shape {item.shape}) cannot be read: "
                               f"{err}") from err
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise InvalidInput(f"input {item.name!r} has shape {list(values.shape)}; each input is one column: "
                               "shape [n] (or [n, 1])")
        if values.dtype == np.object_:
            values = np.array([v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in values],
                              dtype=object)
        columns[item.name] = values
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise InvalidInput(f"inputs have different lengths {lengths}; every input is one column of the same rows")
    return pd.DataFrame(columns)


def response_outputs(frame: pd.DataFrame) -> list[InferOutput]:
    """One 1-d output per column: numbers as their V2 datatype, everything else as BYTES (UTF-8 text)."""
    outputs = []
    for name in frame.columns:
        values = frame[name].to_numpy()
        if values.dtype.kind in "biuf":
            datatype = from_np_dtype(values.dtype)
        else:
            values = np.array(["" if v is None else str(v) for v in values], dtype=object)
            datatype = "BYTES"
        output = InferOutput(name=str(name), shape=[len(values)], datatype=datatype)
        output.set_data_from_numpy(values, binary_data=False)  # KServe re-encodes it when binary output is asked
        outputs.append(output)
    return outputs


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


class KuberecModel(Model):
    """A registered MLflow pyfunc served under `name`; see the module docstring."""

    max_request_bytes = MAX_REQUEST_BYTES
    max_batch_rows = MAX_BATCH_ROWS

    def __init__(self, name: str, uri: str, registry_version: str | None = None) -> None:
        super().__init__(name)
        self.uri, self.registry_version = uri, registry_version
        self._model = None
        self._pending: list[_Pending] = []
        self._batching_task_running = False

    def load(self) -> bool:
        import mlflow.pyfunc

        self._model = mlflow.pyfunc.load_model(self.uri)
        signature = self._model.metadata.signature
        self.param_names = [p.name for p in signature.params.params] if signature and signature.params else None
        self.input_types = [(spec.name, getattr(spec.type, "name", str(spec.type)))
                            for spec in (signature.inputs.inputs if signature else [])]
        outputs = signature.outputs if signature is not None else None
        self.batching = outputs is not None and QUERY_COLUMN in (outputs.input_names() or [])
        # The model's objects live as long as the server: move them out of the collector's reach, or each full
        # collection rescans them (measured: p99 113 -> 36 ms for image queries at 8 connections).
        gc.freeze()
        self.ready = True
        return self.ready

    def get_input_types(self) -> list[dict]:
        """The model metadata's inputs: one 1-d tensor per column of the pyfunc's input signature."""
        return [{"name": name, "datatype": V2_DATATYPES.get(type_name, "BYTES"), "shape": [-1]}
                for name, type_name in self.input_types]

    async def predict(self, payload: InferRequest, headers: dict | None = None,
                      response_headers: dict | None = None) -> InferResponse:
        try:
            frame, params = self._decode(payload)
            if self.batching and len(frame) < self.max_batch_rows:
                output = await self._batched(frame, params)
            else:
                output = self._predict_one(frame, params)
        except InvalidInput as err:
            REQUEST_ERRORS.labels(model_name=self.name, kind="refused").inc()
            log.info("%s: rejected request: %s", self.name, err)
            raise
        except Exception:
            REQUEST_ERRORS.labels(model_name=self.name, kind="failed").inc()
            raise
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name,
                             model_version=self.registry_version, infer_outputs=response_outputs(output),
                             use_binary_outputs=payload.use_binary_outputs,
                             requested_outputs=payload.request_outputs)

    def _decode(self, payload: InferRequest) -> tuple[pd.DataFrame, dict | None]:
        size = payload_size(payload)
        if size > self.max_request_bytes:
            raise PayloadTooLarge(size, self.max_request_bytes)
        params = {name: _parameter_value(value) for name, value in dict(payload.parameters or {}).items()
                  if name not in PROTOCOL_PARAMETERS and not name.startswith(PROTOCOL_PARAMETER_PREFIX)}
        if self.param_names is not None:
            unknown = sorted(set(params) - set(self.param_names))
            if unknown:
                raise InvalidInput(f"unknown parameters {unknown}; {self.name} accepts {self.param_names}")
        return request_frame(payload), params or None

    def _predict_one(self, frame: pd.DataFrame, params: dict | None) -> pd.DataFrame:
        try:
            return self._model.predict(frame, params=params)
        except Exception as err:
            if not is_client_error(err):
                raise
            message = err.message if isinstance(err, MlflowException) else str(err)
            raise InvalidInput(message) from err

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


class FollowedRepository(ModelRepository):
    """The models of a `kuberec serve` repository (kuberec.serving.repository), each kept on what its spec names; or
    KServe's one model directory (`single`: name, directory), which never changes."""

    def __init__(self, root: Path | None = None, single: tuple[str, str] | None = None) -> None:
        super().__init__(models_dir=str(root or single[1]))
        self.root, self.single = root, single
        self._seen: dict[str, int] = {}  # name -> mtime_ns of the spec last acted on

    def names(self) -> list[str]:
        if self.single is not None:
            return [self.single[0]]
        return sorted(d.name for d in self.root.iterdir() if (d / repository.SPEC_FILE).is_file())

    def _spec_mtime(self, name: str) -> int:
        return 0 if self.root is None else (self.root / name / repository.SPEC_FILE).stat().st_mtime_ns

    def _model(self, name: str) -> KuberecModel:
        if self.single is not None:
            return KuberecModel(name, self.single[1])
        spec = repository.read_json(self.root / name / repository.SPEC_FILE) or {}
        return KuberecModel(name, spec["uri"], spec.get("registry_version"))

    def _record(self, name: str, model: KuberecModel, error: str | None = None) -> None:
        if self.root is not None:
            repository.write_json(repository.status_path(self.root, name, os.getpid()),
                                  {"registry_version": model.registry_version, "error": error})

    def load_all(self) -> None:
        """Load every model before serving; one that fails stops the process (nothing half-served)."""
        for name in self.names():
            self._seen[name] = self._spec_mtime(name)
            model = self._model(name)
            model.load()
            self.update(model)
            self._record(name, model)
            log.info("%s: loaded %s (registry version %s)", name, model.uri, model.registry_version or "-")

    async def load(self, name: str) -> bool:
        """Serve what `name`'s spec says now: load it beside the current model in a thread, then swap."""
        if name not in self.names():
            raise ModelNotFound(name)
        self._seen[name] = self._spec_mtime(name)
        model, current = self._model(name), self.get_model(name)
        if current is not None and (current.uri, current.registry_version) == (model.uri, model.registry_version):
            self._record(name, current)
            return True
        try:
            await asyncio.to_thread(model.load)
        except Exception as err:
            log.exception("%s: %s did not load; still serving %s", name, model.uri,
                          current.uri if current else "nothing")
            self._record(name, model, error=f"{type(err).__name__}: {err}")
            raise
        self.update(model)
        self._record(name, model)
        log.info("%s: now serving %s (registry version %s)", name, model.uri, model.registry_version or "-")
        return True

    async def follow(self, every_s: float) -> None:
        """Load each spec that changed, every `every_s` seconds, until cancelled."""
        while True:
            await asyncio.sleep(every_s)
            for name in self.names():
                if self._spec_mtime(name) != self._seen.get(name):
                    with contextlib.suppress(Exception):  # recorded in its status file; the old model serves on
                        await self.load(name)


class KuberecDataPlane(DataPlane):
    """KServe's data plane, reading a request body that is not declared JSON and has no header saying where its JSON
    ends as all JSON: the binary tensor extension needs that header only when binary data follows, and tritonclient
    sends JSON-only tensors with neither (KServe 0.21 refuses them, 400 "the 'inference-header-content-length' header
    is missing")."""

    def decode_inference_request(self, body, headers: dict, model_name: str) -> InferRequest:
        if isinstance(body, bytes) and INFERENCE_CONTENT_LENGTH_HEADER not in headers:
            headers = {**headers, INFERENCE_CONTENT_LENGTH_HEADER: str(len(body))}
        try:
            return super().decode_inference_request(body, headers, model_name)
        except InvalidInput:
            raise
        except ValueError as err:  # JSON that does not parse
            raise InvalidInput(f"the request body is not a V2 inference request: {err}") from err
