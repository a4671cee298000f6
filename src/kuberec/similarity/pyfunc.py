"""The registered similarity recommender: an MLflow pyfunc of embedding model + ANN index + item metadata.

Request (one row per query; in a row set exactly one of):
  - `image_b64` (string): a base64 PNG/JPEG (a `data:image/...;base64,` prefix is fine), any size; it is turned
    into a 28x28 Fashion-MNIST-like image exactly as `kuberec ingest images` does (fitted, resized, inverted when
    its background is light);
  - `pixels` (string): 784 integers 0..255, a 28x28 grayscale image row-major, as a JSON list (flat or 28x28) or
    separated by commas/spaces. A string rather than an array column: MLServer answered 500 to array signatures;
  - `item_id` (long): a catalog item; it is left out of its own results. In a batch that mixes kinds, rows without
    an item use -1 (integer columns cannot hold missing values).
Params: `k` (1..100, default 5); `with_images` (default false): add each result's image as a base64 PNG;
`include_query` (default false): for item_id queries also return the item itself as rank 0 (distance 0), which is
how a client fetches a catalog item's picture by id.

Response: a DataFrame with one row per (query, rank): `query` (row number in the request), `rank` (1 = nearest),
`item_id`, `distance` (cosine distance, 0 = identical), `label` (-1 = unlabelled), `label_name` ("" when
unlabelled) and, with `with_images`, `image_png_b64`.

Item images live in the index metadata (784 bytes each, zstd-compressed parquet), so the served model can answer
thumbnail requests without access to the lake. Loading needs TensorFlow, FAISS and kuberec; not TF Similarity.
Bad requests raise `SimilarityInputError`, an `MlflowException` with INVALID_PARAMETER_VALUE (HTTP 400 in MLflow's
scoring server) that names the row and the problem.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow.pyfunc
import numpy as np
import pandas as pd

from kuberec import tracking
from kuberec.champion import ChampionDecision
from kuberec.datasets.fashion_mnist import IMAGE_BYTES, IMAGE_SIDE
from kuberec.errors import KuberecError
from kuberec.model_input import MAX_K, ModelInputError, checked_params, parse_k
from kuberec.settings import Settings
from kuberec.similarity.config import EXPERIMENT, REGISTERED_NAME
from kuberec.similarity.index import ItemIndex

log = logging.getLogger(__name__)

ARTIFACT_NAME = "model"
DEFAULT_K = 5
MAX_QUERIES = 1024  # rows per request
MAX_IMAGE_BYTES = 5 * 1024 * 1024  # decoded upload size
TRAINING_RUN_TAG = "kuberec.training_run_id"
SOURCE_VERSION_TAG = "kuberec.refreshed_from_version"
INDEX_VERSION_TAG = "kuberec.index.table_version"
INDEX_ITEMS_TAG = "kuberec.index.items"
# What serving needs installed besides kuberec itself (which the serving image provides).
REQUIREMENTS = ("mlflow", "tensorflow", "tf-keras", "faiss-cpu", "numpy", "pandas", "pyarrow", "pillow")


class SimilarityInputError(ModelInputError):
    """A similarity request the model cannot answer."""


def signature():
    """Explicit signature: optional string/long columns and scalar params (no array columns; see module doc)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "image_b64", required=False), ColSpec("string", "pixels", required=False),
                     ColSpec("long", "item_id", required=False)])
    outputs = Schema([ColSpec("long", "query"), ColSpec("long", "rank"), ColSpec("long", "item_id"),
                      ColSpec("double", "distance"), ColSpec("long", "label"), ColSpec("string", "label_name"),
                      ColSpec("string", "image_png_b64", required=False)])
    params = ParamSchema([ParamSpec("k", "long", DEFAULT_K), ParamSpec("with_images", "boolean", False),
                          ParamSpec("include_query", "boolean", False)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


# -- request parsing -----------------------------------------------------------------------------------------------

def _text(value: Any) -> str | None:
    """A string cell (a BYTES tensor may arrive as bytes); None/NaN/"" mean "not set"."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", errors="replace")
    value = str(value).strip()
    return value or None


def decode_image(text: str, row: int) -> np.ndarray:
    """base64 PNG/JPEG -> uint8 [28,28], prepared like catalog images."""
    from kuberec.ingest.images import to_catalog_image

    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise SimilarityInputError(f"row {row}: image_b64 is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise SimilarityInputError(f"row {row}: image_b64 is not valid base64 ({err})") from err
    try:
        return to_catalog_image(data, f"row {row}: image_b64")
    except KuberecError as err:
        raise SimilarityInputError(str(err)) from err
    except Exception as err:  # PIL raises a zoo of types (e.g. DecompressionBombError) for hostile inputs
        raise SimilarityInputError(f"row {row}: image_b64 could not be decoded as an image ({err})") from err


def parse_pixels(text: str, row: int) -> np.ndarray:
    """784 integers 0..255 (JSON list, flat or 28x28, or comma/space separated) -> uint8 [28,28]."""
    try:
        if text.startswith("["):
            values = np.asarray(json.loads(text), dtype=np.float64)
        else:
            values = np.asarray([float(v) for v in re.split(r"[,\s]+", text) if v], dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise SimilarityInputError(f"row {row}: pixels must be {IMAGE_BYTES} numbers (a JSON list or "
                                   f"comma-separated), could not parse them: {err}") from err
    if values.size != IMAGE_BYTES:
        raise SimilarityInputError(f"row {row}: pixels has {values.size} values, expected {IMAGE_BYTES} "
                                   f"({IMAGE_SIDE}x{IMAGE_SIDE} grayscale, row-major)")
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 255:
        raise SimilarityInputError(f"row {row}: pixel values must be integers 0..255")
    if not np.equal(np.mod(values, 1), 0).all():
        raise SimilarityInputError(f"row {row}: pixel values must be integers 0..255 (for [0, 1] floats, "
                                   "multiply by 255 and round)")
    return values.astype(np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)


@dataclass(frozen=True)
class Queries:
    """A request split by kind; positions are the request's row numbers."""

    image_rows: np.ndarray  # int [Ni]
    images: np.ndarray  # uint8 [Ni,28,28]
    item_rows: np.ndarray  # int [Nk]
    item_ids: np.ndarray  # int64 [Nk]
    count: int


def parse_queries(model_input: Any) -> Queries:
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    columns = [c for c in ("image_b64", "pixels", "item_id") if c in frame.columns]
    if not columns or frame.empty:
        raise SimilarityInputError("no queries: send rows with one of the columns image_b64, pixels, item_id")
    if len(frame) > MAX_QUERIES:
        raise SimilarityInputError(f"{len(frame)} queries in one request; at most {MAX_QUERIES}")
    image_b64 = frame["image_b64"].tolist() if "image_b64" in frame else [None] * len(frame)
    pixels = frame["pixels"].tolist() if "pixels" in frame else [None] * len(frame)
    item_col = frame["item_id"].tolist() if "item_id" in frame else [None] * len(frame)
    image_rows, images, item_rows, item_ids = [], [], [], []
    for row, (image_cell, pixel_cell, item_cell) in enumerate(zip(image_b64, pixels, item_col)):
        image_text, pixel_text = _text(image_cell), _text(pixel_cell)
        item = None
        if item_cell is not None and not (isinstance(item_cell, float) and np.isnan(item_cell)):
            try:
                item_value = float(item_cell)
            except (TypeError, ValueError) as err:
                raise SimilarityInputError(f"row {row}: item_id {item_cell!r} is not an integer") from err
            if not item_value.is_integer():
                raise SimilarityInputError(f"row {row}: item_id {item_cell!r} is not an integer")
            item = int(item_value) if item_value >= 0 else None  # -1: no item in this row of a mixed batch
        given = [name for name, value in (("image_b64", image_text), ("pixels", pixel_text), ("item_id", item))
                 if value is not None]
        if len(given) != 1:
            raise SimilarityInputError(f"row {row}: set exactly one of image_b64, pixels, item_id (>= 0); "
                                       f"got {', '.join(given) if given else 'none'}")
        if item is not None:
            item_rows.append(row)
            item_ids.append(item)
        else:
            image_rows.append(row)
            images.append(decode_image(image_text, row) if image_text else parse_pixels(pixel_text, row))
    return Queries(np.asarray(image_rows, np.int64),
                   np.stack(images) if images else np.empty((0, IMAGE_SIDE, IMAGE_SIDE), np.uint8),
                   np.asarray(item_rows, np.int64), np.asarray(item_ids, np.int64), len(frame))


def parse_params(params: Mapping[str, Any] | None) -> tuple[int, bool, bool]:
    params = checked_params(params, ("k", "with_images", "include_query"))
    return parse_k(params, DEFAULT_K, MAX_K), _flag(params, "with_images"), _flag(params, "include_query")


def _flag(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise SimilarityInputError(f"{name} must be true or false, got {value!r}")


def png_b64(image: np.ndarray | None) -> str:
    if image is None:
        return ""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- the model -----------------------------------------------------------------------------------------------------

class SimilarityRecommender(mlflow.pyfunc.PythonModel):
    """pyfunc: queries (images or item ids) -> ranked similar catalog items. See the module docstring."""

    def load_context(self, context) -> None:
        from kuberec.similarity.model import load_embedding_model

        self.embedding_model_path = Path(context.artifacts["embedding_model"])
        self.index_path = Path(context.artifacts["index"])
        self.model = load_embedding_model(self.embedding_model_path)
        self.index = ItemIndex.load(self.index_path)
        if self.model.embedding_dim != self.index.dim:
            raise KuberecError(f"embedding model is {self.model.embedding_dim}-d but the index is "
                               f"{self.index.dim}-d: they were not built together")
        log.info("loaded similarity model: %d items (table v%s), %d-d", len(self.index), self.index.table_version,
                 self.index.dim)

    def embed(self, images: np.ndarray) -> np.ndarray:
        from kuberec.similarity.model import embed

        # Fixed-size calls: a query's answer must not depend on the queries the server batched it with.
        return embed(self.model, images, fixed_calls=True)

    def predict(self, context, model_input, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        k, with_images, include_query = parse_params(params)
        queries = parse_queries(model_input)
        results: list[tuple[int, np.ndarray, np.ndarray]] = []  # (request row, ids [k], distances [k])
        if len(queries.image_rows):
            ids, dist = self.index.search(self.embed(queries.images), k)
            results += zip(queries.image_rows.tolist(), ids, dist)
        if len(queries.item_rows):
            try:
                ids, dist = self.index.search_items(queries.item_ids, k)
            except KuberecError as err:
                raise SimilarityInputError(str(err)) from err
            if include_query:
                ids = np.concatenate([queries.item_ids[:, None], ids], axis=1)
                dist = np.concatenate([np.zeros((len(ids), 1), np.float32), dist], axis=1)
            results += zip(queries.item_rows.tolist(), ids, dist)
        return self._frame(sorted(results, key=lambda r: r[0]), queries, include_query, with_images)

    def _frame(self, results, queries: Queries, include_query: bool, with_images: bool) -> pd.DataFrame:
        item_rows = set(queries.item_rows.tolist())
        query, rank, item_id, distance = [], [], [], []
        for row, ids, dist in results:
            keep = ids >= 0
            first = 0 if include_query and row in item_rows else 1
            query += [row] * int(keep.sum())
            rank += list(range(first, first + int(keep.sum())))
            item_id += ids[keep].tolist()
            distance += dist[keep].tolist()
        labels, names = self.index.labels(item_id)
        frame = pd.DataFrame({
            "query": np.asarray(query, np.int64), "rank": np.asarray(rank, np.int64),
            "item_id": np.asarray(item_id, np.int64),
            "distance": np.maximum(np.asarray(distance, np.float64), 0.0),  # float error can give -1e-7
            "label": labels, "label_name": names,
        })
        if with_images:
            frame["image_png_b64"] = [png_b64(img) for img in self.index.images(item_id)] if item_id else []
        return frame


# -- logging and registering ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegisteredSimilarityModel:
    name: str
    version: int
    run_id: str
    table_uri: str
    table_version: int | None
    items: int
    champion: bool
    decision: ChampionDecision | None = None  # the champion gate's, when a pipeline step registered it

    @property
    def model_uri(self) -> str:
        return tracking.model_uri(self.name, version=self.version)


def log_similarity_model(settings: Settings, embedding_model_path: str | Path, index: ItemIndex | str | Path, *,
                         name: str = REGISTERED_NAME, training_run_id: str | None = None,
                         set_champion: bool | None = None, experiment: str = EXPERIMENT,
                         run_name: str | None = None, tags: Mapping[str, str] | None = None,
                         recall_k: int = 5) -> RegisteredSimilarityModel:
    """Log model + index as a pyfunc, register it as a new version of `name`, and maybe make it champion.

    Runs inside the active MLflow run if there is one, else in a new run of `experiment` tagged with the index's
    Delta lineage. `set_champion`: True moves the `champion` alias to the new version, False leaves it, None (the
    default) sets it only when the model has no champion yet, so a first build is servable right away.
    """
    import mlflow

    tracking.configure(settings)
    loaded = index if isinstance(index, ItemIndex) else ItemIndex.load(index)
    lineage = {loaded.table_uri: loaded.table_version} if loaded.table_uri and loaded.table_version is not None \
        else {}
    version_tags = {**tracking.lineage_tags(lineage), INDEX_VERSION_TAG: str(loaded.table_version),
                    INDEX_ITEMS_TAG: str(len(loaded)), **(tags or {})}
    if training_run_id:
        version_tags[TRAINING_RUN_TAG] = training_run_id
    recall = loaded.recall_vs_exact(k=recall_k)
    with tempfile.TemporaryDirectory(prefix="kuberec-similarity-") as tmp:
        index_dir = Path(index) if not isinstance(index, ItemIndex) else loaded.save(Path(tmp) / "index")
        runs = (contextlib.nullcontext() if mlflow.active_run() else
                tracking.start_run(settings, experiment, run_name=run_name or "register-similarity",
                                   lineage=lineage))
        with runs:
            run = mlflow.active_run()
            mlflow.set_tags({k: v for k, v in version_tags.items() if k != INDEX_ITEMS_TAG})
            tracking.log_params({"index.m": loaded.params.m, "index.ef_construction": loaded.params.ef_construction,
                                 "index.ef_search": loaded.params.ef_search, "index.dim": loaded.dim,
                                 "index.splits": ",".join(loaded.splits or ["all"])})
            tracking.log_metrics({"index_items": len(loaded), f"index_recall_at_{recall_k}_vs_exact": recall.recall})
            info = mlflow.pyfunc.log_model(
                name=ARTIFACT_NAME, python_model=SimilarityRecommender(),
                artifacts={"embedding_model": str(embedding_model_path), "index": str(index_dir)},
                signature=signature(), pip_requirements=tracking.pinned_requirements(REQUIREMENTS))
            run_id = run.info.run_id
    version, champion = tracking.register_and_promote(
        settings, info.model_uri, name, set_champion=set_champion, tags=version_tags,
        description=f"similarity model + HNSW index of {len(loaded)} items from {loaded.table_uri or '?'} "
                    f"v{loaded.table_version}")
    log.info("registered %s version %s (%d items, recall@%d %.4f)%s", name, version.version, len(loaded), recall_k,
             recall.recall, " as champion" if champion else "")
    return RegisteredSimilarityModel(name=name, version=int(version.version), run_id=run_id,
                                     table_uri=loaded.table_uri, table_version=loaded.table_version,
                                     items=len(loaded), champion=champion)


def load_recommender(settings: Settings, name: str = REGISTERED_NAME, *, version: int | str | None = None,
                     alias: str | None = None) -> tuple["mlflow.pyfunc.PyFuncModel", Any]:
    """(pyfunc model, its ModelVersion) for a registered version or alias (default: champion)."""
    model_version = tracking.get_version(settings, name, version=version, alias=alias)
    uri = tracking.model_uri(name, version=model_version.version)
    return mlflow.pyfunc.load_model(uri), model_version
