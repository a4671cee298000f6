"""Approximate-nearest-neighbour index of catalog embeddings, keyed by `item_id`.

FAISS HNSW over L2-normalised embeddings with inner-product search, so scores are cosine similarities; results are
reported as cosine distances (1 - similarity, 0 = identical), like TF Similarity's cosine distance. The default
parameters' speed and recall are measured by benchmarks/index_bench.py (docs/BENCHMARKS.md).

Next to the graph the index keeps each item's metadata (item_id, label, label_name and its 28x28 image, so a served
model can return thumbnails without reaching the lake) and the Delta table version it was built from; `add` grows it
when new catalog rows arrive (`kuberec index refresh`), without retraining or rebuilding.

On disk an index is a directory: `index.faiss` (the HNSW graph and vectors), `items.parquet` (metadata in FAISS
position order) and `manifest.json` (format, dimension, parameters, table URI and version, item count).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kuberec.datasets.fashion_mnist import IMAGE_BYTES, LABEL_NAMES
from kuberec.errors import DataError, KuberecError

log = logging.getLogger(__name__)

FORMAT = "kuberec-item-index/1"
INDEX_FILE, ITEMS_FILE, MANIFEST_FILE = "index.faiss", "items.parquet", "manifest.json"
ITEM_COLUMNS = ("item_id", "label", "label_name", "image")
UNLABELLED = -1
NORM_TOLERANCE = 1e-3


class IndexLoadError(KuberecError):
    """An index directory is missing, corrupt, or does not fit the request."""


@dataclass(frozen=True)
class HnswParams:
    """HNSW graph parameters. Defaults: >20,000 lookups/s on one core at recall@5 0.96 vs exact on 60,000 trained
    embeddings; efSearch 96 reaches 0.99 at about half the speed (docs/BENCHMARKS.md)."""

    m: int = 16  # links per node: memory and build time grow with it, recall at a given ef too
    ef_construction: int = 200  # candidate list while building: better graph, slower build
    ef_search: int = 32  # candidate list per query: the speed/recall knob (raised to k when k is larger)

    def __post_init__(self) -> None:
        if self.m < 2 or self.ef_construction < 1 or self.ef_search < 1:
            raise ValueError(f"bad HNSW parameters {self}: m >= 2, ef_construction >= 1, ef_search >= 1")


@dataclass(frozen=True)
class RecallReport:
    k: int
    recall: float  # mean fraction of the exact top-k found (ties at the k-th distance count as found)
    queries: int
    ef_search: int


def label_names(labels: np.ndarray) -> list[str]:
    """Fashion-MNIST class names for labels; "" for unlabelled (-1) items."""
    return [LABEL_NAMES[label] if 0 <= label < len(LABEL_NAMES) else "" for label in np.asarray(labels).tolist()]


def items_frame(item_ids: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray | None = None,
                images: np.ndarray | None = None, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Item metadata in index order: item_id, label (-1 = unlabelled), label_name, image (784 raw bytes or None)."""
    ids = np.asarray(item_ids, dtype=np.int64)
    labels_arr = np.full(len(ids), UNLABELLED, np.int32) if labels is None else np.asarray(labels, np.int32)
    if images is not None:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.reshape(len(images), -1).shape[1] != IMAGE_BYTES:
            raise DataError(f"item images must be uint8 28x28, got {images.dtype} {list(images.shape)}")
        image_col = [img.tobytes() for img in images.reshape(len(images), IMAGE_BYTES)]
    else:
        image_col = [None] * len(ids)
    if not len(ids) == len(labels_arr) == len(image_col):
        raise DataError(f"item_ids ({len(ids)}), labels ({len(labels_arr)}) and images ({len(image_col)}) differ "
                        "in length")
    return pd.DataFrame({"item_id": ids, "label": labels_arr,
                         "label_name": list(names) if names is not None else label_names(labels_arr),
                         "image": image_col})


def _as_vectors(vectors: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or (dim is not None and array.shape[1] != dim):
        raise DataError(f"{what} must be a float32 array [N, {dim or 'D'}], got shape {list(np.shape(vectors))}")
    if not np.isfinite(array).all():
        raise DataError(f"{what} contain NaN or infinite values")
    return array


def _normalised(queries: np.ndarray) -> np.ndarray:
    """Unit-length copies of float32 query rows (zero rows stay zero); DataError on NaN/inf.

    Checked through the squared norms (a NaN or inf anywhere makes its row's norm non-finite). Every row takes the
    same float32 operations however many come with it: a served query's answer must not depend on its batch (a
    Python-float path for lone queries, which skipped rows already near unit length, gave them other bits on AVX2).
    """
    squared = np.einsum("nd,nd->n", queries, queries)
    if not np.isfinite(squared).all():
        raise DataError("query vectors contain NaN or infinite values")
    return queries / np.sqrt(np.maximum(squared, np.float32(1e-24)))[:, None]


class ItemIndex:
    """An HNSW index of L2-normalised item embeddings with item metadata; see the module docstring."""

    def __init__(self, dim: int, params: HnswParams = HnswParams(), *, table_uri: str = "",
                 table_version: int | None = None, splits: Sequence[str] | None = None) -> None:
        import faiss

        self.params = params
        self.table_uri = table_uri
        self.table_version = table_version
        self.splits = list(splits) if splits else None  # None: every split of the table
        self._index = faiss.IndexHNSWFlat(dim, params.m, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = params.ef_construction
        self.ef_search = params.ef_search
        self.items = items_frame([])
        self._sync_lookups()

    # -- building ---------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, vectors: np.ndarray, items: pd.DataFrame, params: HnswParams = HnswParams(), *,
              table_uri: str = "", table_version: int | None = None,
              splits: Sequence[str] | None = None) -> "ItemIndex":
        vectors = _as_vectors(vectors, None, "embeddings")
        index = cls(vectors.shape[1], params, table_uri=table_uri, table_version=table_version, splits=splits)
        index.add(vectors, items)
        return index

    def add(self, vectors: np.ndarray, items: pd.DataFrame, table_version: int | None = None) -> int:
        """Add new items (their embeddings and metadata rows, same order); returns how many were added.

        Every item_id must be new: HNSW graphs cannot replace a vector, and a silent duplicate would be returned
        twice. `table_version` records the Delta version the index is now current with.
        """
        vectors = _as_vectors(vectors, self.dim, "embeddings")
        missing = set(ITEM_COLUMNS) - set(items.columns)
        if missing:
            raise DataError(f"item metadata lacks columns {sorted(missing)} (build it with items_frame)")
        if len(items) != len(vectors):
            raise DataError(f"{len(vectors)} embeddings but {len(items)} item rows")
        ids = items["item_id"].to_numpy(np.int64)
        if len(np.unique(ids)) != len(ids):
            raise DataError("item_ids repeat within the batch being added")
        already = self._positions.intersection(ids)
        if len(already):
            raise DataError(f"{len(already)} item_ids are already indexed (e.g. {sorted(already)[:5]}); "
                            "only new items can be added")
        norms = np.linalg.norm(vectors, axis=1)
        if len(norms) and np.abs(norms - 1).max() > NORM_TOLERANCE:
            raise DataError("embeddings must be L2-normalised (inner product = cosine); max |norm - 1| is "
                            f"{np.abs(norms - 1).max():.3g}")
        if len(vectors):
            self._index.add(vectors)
            new_items = items[list(ITEM_COLUMNS)].reset_index(drop=True)
            self.items = pd.concat([self.items, new_items], ignore_index=True) if len(self.items) else new_items
            self._sync_lookups()
        if table_version is not None:
            self.table_version = table_version
        return len(vectors)

    def _sync_lookups(self) -> None:
        """Arrays by FAISS position, rebuilt when items change, so a query never converts the metadata frame."""
        self._ids = self.items["item_id"].to_numpy(np.int64)  # position -> item_id
        self._positions = pd.Index(self._ids)  # item_id -> position
        self._labels = self.items["label"].to_numpy(np.int64)
        self._label_names = self.items["label_name"].fillna("").to_numpy(object)
        self._images = self.items["image"].to_numpy(object)

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._index.d

    def __len__(self) -> int:
        return self._index.ntotal

    @property
    def item_ids(self) -> np.ndarray:
        return self._ids

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        # Mirrored in Python: reading it through FAISS's SWIG proxy costs microseconds on every query.
        self._ef_search = int(value)
        self._index.hnsw.efSearch = self._ef_search

    def positions(self, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """FAISS positions of item_ids; DataError naming the ids that are not in the index."""
        wanted = np.asarray(item_ids, dtype=np.int64)
        positions = self._positions.get_indexer(wanted)
        if (positions < 0).any():
            unknown = wanted[positions < 0]
            raise DataError(f"unknown item_id {', '.join(map(str, unknown[:10].tolist()))}"
                            f"{' ...' if len(unknown) > 10 else ''}: not in the index "
                            f"({len(self)} items, ids {self._ids.min() if len(self) else '-'}.."
                            f"{self._ids.max() if len(self) else '-'})")
        return positions

    def contains(self, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._positions.get_indexer(np.asarray(item_ids, dtype=np.int64)) >= 0

    def vectors(self, item_ids: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Stored embeddings of item_ids (all, in index order, when None)."""
        if item_ids is None:
            return self._index.reconstruct_n(0, len(self)) if len(self) else np.empty((0, self.dim), np.float32)
        return np.stack([self._index.reconstruct(int(p)) for p in self.positions(item_ids)]) if len(item_ids) \
            else np.empty((0, self.dim), np.float32)

    # -- search -----------------------------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, k: int, *, exclude: Sequence[int] | np.ndarray | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest items of each query vector: (item_ids int64 [N,k], cosine distances float32 [N,k]).

        `exclude` gives one item_id per query to leave out of its results (the query item itself in "more like
        this item" lookups; -1 for none). Rows have fewer than k real results only when the index holds fewer
        items; the gaps are item_id -1 with distance inf.
        """
        import faiss

        if k < 1:
            raise DataError(f"k must be at least 1, got {k}")
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise DataError(f"query vectors must be a float32 array [N, {self.dim}], got shape "
                            f"{list(np.shape(vectors))}")
        queries = _normalised(queries)
        extra = 0 if exclude is None else 1
        fetch = min(k + extra, len(self))
        n = len(queries)
        if fetch == 0 or n == 0:
            return np.full((n, k), -1, np.int64), np.full((n, k), np.inf, np.float32)
        ef = max(ef_search or self._ef_search, fetch)
        # Per-call parameters only when they differ: building the SWIG object costs more than a small search.
        params = None if ef == self._ef_search else faiss.SearchParametersHNSW(efSearch=ef)
        scores, positions = self._index.search(queries, fetch, params=params)
        found = self._ids[positions]
        dist = np.float32(1) - scores
        if positions.min() < 0:  # only when the graph yields fewer than `fetch` results
            missing = positions < 0
            found[missing], dist[missing] = -1, np.inf
        if exclude is None and fetch == k:
            return found, dist
        ids = np.full((n, k), -1, np.int64)
        distances = np.full((n, k), np.inf, np.float32)
        if exclude is None:
            ids[:, :fetch], distances[:, :fetch] = found, dist
            return ids, distances
        excluded = np.asarray(exclude, dtype=np.int64).reshape(n, 1)
        for row in range(n):
            keep = found[row] != excluded[row]
            kept_ids, kept_dist = found[row][keep][:k], dist[row][keep][:k]
            ids[row, :len(kept_ids)], distances[row, :len(kept_ids)] = kept_ids, kept_dist
        return ids, distances

    def search_items(self, item_ids: Sequence[int] | np.ndarray, k: int,
                     ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k items most similar to catalog items (each item itself left out)."""
        ids = np.asarray(item_ids, dtype=np.int64)
        return self.search(self.vectors(ids), k, exclude=ids, ef_search=ef_search)

    def exact_search(self, vectors: np.ndarray, k: int,
                     exclude: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force search over the same vectors (the ground truth for recall)."""
        import faiss

        flat = faiss.IndexFlatIP(self.dim)
        flat.add(self.vectors())
        queries = _as_vectors(vectors, self.dim, "query vectors").copy()
        faiss.normalize_L2(queries)
        extra = 0 if exclude is None else 1
        fetch = min(k + extra, len(self))
        scores, positions = flat.search(queries, fetch)
        found, dist = self._ids[positions], (1.0 - scores).astype(np.float32)
        if exclude is not None:
            keep = found != np.asarray(exclude, np.int64).reshape(-1, 1)
            found = np.stack([row[m][:k] for row, m in zip(found, keep)])
            dist = np.stack([row[m][:k] for row, m in zip(dist, keep)])
        return found[:, :k], dist[:, :k]

    def recall_vs_exact(self, k: int = 5, queries: np.ndarray | None = None, sample: int = 1000, seed: int = 0,
                        ef_search: int | None = None) -> RecallReport:
        """Recall@k of the HNSW search against exact search.

        Without `queries`, `sample` indexed items are the queries and each is left out of its own results (the
        "more items like this one" lookup the served model does). A returned item counts as found when it is in
        the exact top-k or ties the exact k-th distance (duplicate images have identical embeddings).
        """
        exclude = None
        if queries is None:
            rng = np.random.default_rng(seed)
            chosen = np.sort(rng.choice(len(self), size=min(sample, len(self)), replace=False))
            exclude = self._ids[chosen]
            queries = self.vectors(exclude)
        approx_ids, approx_dist = self.search(queries, k, exclude=exclude, ef_search=ef_search)
        exact_ids, exact_dist = self.exact_search(queries, k, exclude=exclude)
        hits = 0
        for a_ids, a_dist, e_ids, e_dist in zip(approx_ids, approx_dist, exact_ids, exact_dist):
            kth = e_dist[-1] + 1e-6
            hits += sum(1 for i, d in zip(a_ids, a_dist) if i >= 0 and (i in e_ids or d <= kth))
        denominator = len(queries) * min(k, exact_ids.shape[1]) if len(queries) else 1
        return RecallReport(k=k, recall=hits / denominator, queries=len(queries),
                            ef_search=max(ef_search or self.ef_search, k))

    # -- persistence ------------------------------------------------------------------------------------------
    def manifest(self) -> dict:
        return {"format": FORMAT, "dim": self.dim, "items": len(self), "metric": "cosine (inner product on "
                "L2-normalised vectors)", "params": asdict(self.params), "table_uri": self.table_uri,
                "table_version": self.table_version, "splits": self.splits,
                "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def save(self, path: str | Path) -> Path:
        """Write the index directory at `path` (replacing an existing one only once the new one is complete).

        The new directory is written under a hidden staging name and renamed into place, so a process killed while
        saving never leaves a half-written index at `path`: `load` finds the previous one, or none. Leftovers of
        killed saves (staging and moved-aside directories of dead processes) are removed here.
        """
        import faiss

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _recover(path)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-{os.getpid()}-", dir=path.parent))
        try:
            faiss.write_index(self._index, str(staging / INDEX_FILE))
            self.items.to_parquet(staging / ITEMS_FILE, index=False, compression="zstd")
            (staging / MANIFEST_FILE).write_text(json.dumps(self.manifest(), indent=2))
            if path.exists():
                # Two renames (a directory cannot replace another in one): a kill between them leaves the old
                # index moved aside under a name with this pid, which `_recover` moves back.
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                path.rename(old)
                staging.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                staging.rename(path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("saved index of %d items (table v%s) to %s", len(self), self.table_version, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ItemIndex":
        import faiss

        path = Path(path)
        _recover(path)
        try:
            manifest = json.loads((path / MANIFEST_FILE).read_text())
        except (OSError, ValueError) as err:
            raise IndexLoadError(f"{path} is not a kuberec item index (no readable {MANIFEST_FILE}: {err})") from err
        if manifest.get("format") != FORMAT:
            raise IndexLoadError(f"{path}: index format {manifest.get('format')!r} is not {FORMAT}; rebuild it")
        index = cls.__new__(cls)
        index.params = HnswParams(**manifest["params"])
        index.table_uri = manifest.get("table_uri", "")
        index.table_version = manifest.get("table_version")
        index.splits = manifest.get("splits")
        try:
            index._index = faiss.read_index(str(path / INDEX_FILE))
            index.items = pd.read_parquet(path / ITEMS_FILE)
        except (OSError, RuntimeError, ValueError) as err:
            raise IndexLoadError(f"{path}: cannot read the index files ({err}); rebuild the index") from err
        if index._index.ntotal != len(index.items) or index._index.ntotal != manifest["items"]:
            raise IndexLoadError(f"{path}: the graph has {index._index.ntotal} vectors but the metadata "
                              f"{len(index.items)} rows (manifest: {manifest['items']}); the directory is corrupt")
        index.ef_search = index.params.ef_search
        index._sync_lookups()
        return index

    # -- images -----------------------------------------------------------------------------------------------
    def images(self, item_ids: Sequence[int] | np.ndarray) -> list[np.ndarray | None]:
        """Stored 28x28 uint8 images of item_ids (None where the index was built without images)."""
        return [None if self._images[p] is None else np.frombuffer(self._images[p], np.uint8).reshape(28, 28)
                for p in self.positions(item_ids)]

    def labels(self, item_ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels int64, label names) of item_ids; -1 and "" for unlabelled items."""
        positions = self.positions(item_ids)
        return self._labels[positions], self._label_names[positions]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _recover(path: Path) -> None:
    """Undo what a save killed part-way left next to `path`: put back the previous index a save had moved aside
    (when `path` is missing), and remove the staging and moved-aside directories of processes that are gone."""
    if not path.parent.is_dir():
        return
    leftovers = []
    for entry in path.parent.glob(f".{path.name}.*-*"):
        kind, _, rest = entry.name[len(path.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("new", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            leftovers.append((kind, entry))
    for kind, entry in leftovers:
        if kind == "old" and not path.exists() and (entry / MANIFEST_FILE).exists():
            entry.rename(path)
            log.warning("%s: put back the index an interrupted save had moved aside (%s)", path, entry.name)
        else:
            shutil.rmtree(entry, ignore_errors=True)
