"""Retrieval quality of an embedding model, next to a raw-pixel baseline computed in the same run.

Protocol (`kuberec evaluate similarity`): every labelled image of the test split is a query against an index of the
labelled train split (Fashion-MNIST: 10,000 queries x 60,000 items), exact cosine search (embeddings are
L2-normalised, so cosine similarity is a dot product). The baseline embeds each image as its flattened pixels,
L2-normalised. Definitions, per query q with label y_q and ranked neighbours n_1, n_2, ... (TF Similarity's, where it
has one):

- precision@k: |{i <= k : label(n_i) = y_q}| / k, averaged over queries.
- recall@k: 1 if any of n_1..n_k has label y_q, else 0, averaged over queries (TF Similarity's `RecallAtK`:
  "did the user see at least one item of the right kind").
- mAP@R: with R = number of index items labelled y_q, AP@R = (1/R) * sum_{i<=R} [label(n_i) = y_q] * precision@i
  (Musgrave et al. 2020, "A Metric Learning Reality Check"; TF Similarity's `MapAtK(clip_at_r=True)`), averaged
  over a fixed seeded sample of `map_queries` queries (ranking up to R = 6,000 items per query is the costly part).
- k-NN accuracy@k: 1 if the majority label among n_1..n_k is y_q, else 0; ties go to the tied label whose first
  occurrence ranks highest.

Outputs: `similarity_evaluation.json` (all numbers, protocol, model and data lineage) and `neighbours.png` (queries
with their nearest neighbours by the model and by raw pixels; green frame = same class).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kuberec.errors import KuberecError

log = logging.getLogger("kuberec.similarity.evaluate")

DEFAULT_KS = (1, 5, 10)
DEFAULT_KNN_K = 5
DEFAULT_MAP_QUERIES = 1000
RESULT_FILE = "similarity_evaluation.json"
GRID_FILE = "neighbours.png"


class EvaluationError(KuberecError):
    """The evaluation inputs are unusable (no labelled queries, empty index, mismatched shapes)."""


@dataclass(frozen=True)
class RetrievalMetrics:
    precision: dict[int, float]  # k -> precision@k
    recall: dict[int, float]  # k -> recall@k
    map_at_r: float
    knn_accuracy: float
    knn_k: int
    queries: int
    index_size: int
    map_queries: int

    def flat(self, prefix: str = "") -> dict[str, float]:
        """Metric name -> value, e.g. {"precision_at_5": 0.93, ...} (MLflow-friendly names)."""
        values = {f"precision_at_{k}": v for k, v in self.precision.items()}
        values.update({f"recall_at_{k}": v for k, v in self.recall.items()})
        values.update({"map_at_r": self.map_at_r, f"knn_accuracy_at_{self.knn_k}": self.knn_accuracy})
        return {prefix + name: value for name, value in values.items()}


def _check(query_emb: np.ndarray, query_labels: np.ndarray, index_emb: np.ndarray, index_labels: np.ndarray):
    query_emb = np.ascontiguousarray(query_emb, dtype=np.float32)
    index_emb = np.ascontiguousarray(index_emb, dtype=np.float32)
    query_labels, index_labels = np.asarray(query_labels), np.asarray(index_labels)
    if query_emb.ndim != 2 or index_emb.ndim != 2 or query_emb.shape[1] != index_emb.shape[1]:
        raise EvaluationError(f"embeddings must be [N, D] with the same D, got {query_emb.shape} and "
                              f"{index_emb.shape}")
    if len(query_emb) != len(query_labels) or len(index_emb) != len(index_labels):
        raise EvaluationError("each embedding needs exactly one label")
    labelled = query_labels >= 0
    if not labelled.any():
        raise EvaluationError("no labelled queries: evaluation needs images with labels")
    if len(index_emb) == 0:
        raise EvaluationError("the index is empty")
    return query_emb[labelled], query_labels[labelled], index_emb, index_labels


def nearest(query_emb: np.ndarray, index_emb: np.ndarray, k: int, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (cosine for L2-normalised rows): (indices int64 [Q,k], similarities [Q,k])."""
    k = min(k, len(index_emb))
    indices = np.empty((len(query_emb), k), dtype=np.int64)
    sims = np.empty((len(query_emb), k), dtype=np.float32)
    for start in range(0, len(query_emb), chunk):
        block = query_emb[start:start + chunk] @ index_emb.T
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < block.shape[1] else \
            np.broadcast_to(np.arange(block.shape[1]), block.shape).copy()
        top_sims = np.take_along_axis(block, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        indices[start:start + chunk] = np.take_along_axis(top, order, axis=1)
        sims[start:start + chunk] = np.take_along_axis(top_sims, order, axis=1)
    return indices, sims


def _knn_vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """Majority label per row; ties go to the tied label seen first (nearest)."""
    votes = np.empty(len(neighbour_labels), dtype=neighbour_labels.dtype)
    for row, labels in enumerate(neighbour_labels):
        values, first, counts = np.unique(labels, return_index=True, return_counts=True)
        best = counts == counts.max()
        votes[row] = values[best][np.argmin(first[best])]
    return votes


def average_precision_at_r(relevant_ranked: np.ndarray, r: int) -> float:
    """AP@R of one query from its relevance flags in rank order (at least R of them)."""
    if r <= 0:
        return 0.0
    hits = relevant_ranked[:r].astype(np.float64)
    precision_at_i = np.cumsum(hits) / np.arange(1, r + 1)
    return float((hits * precision_at_i).sum() / r)


def retrieval_metrics(query_emb: np.ndarray, query_labels: np.ndarray, index_emb: np.ndarray,
                      index_labels: np.ndarray, *, ks: Sequence[int] = DEFAULT_KS, knn_k: int = DEFAULT_KNN_K,
                      map_queries: int = DEFAULT_MAP_QUERIES, seed: int = 0) -> RetrievalMetrics:
    """All metrics of the module docstring for L2-normalised query and index embeddings.

    Unlabelled queries (label < 0) are left out. mAP@R uses a seeded sample of `map_queries` queries (all when there
    are fewer), drawn from those whose class occurs in the index (others have R = 0).
    """
    query_emb, query_labels, index_emb, index_labels = _check(query_emb, query_labels, index_emb, index_labels)
    k_max = max(max(ks), knn_k)
    neighbours, _ = nearest(query_emb, index_emb, k_max)
    same = index_labels[neighbours] == query_labels[:, None]
    precision = {k: float(same[:, :k].sum(axis=1).mean() / k) for k in ks}
    recall = {k: float(same[:, :k].any(axis=1).mean()) for k in ks}
    knn = float((_knn_vote(index_labels[neighbours[:, :knn_k]]) == query_labels).mean())

    class_sizes = dict(zip(*np.unique(index_labels, return_counts=True)))
    r_of = np.array([class_sizes.get(label, 0) for label in query_labels])
    candidates = np.flatnonzero(r_of > 0)
    sample = candidates if len(candidates) <= map_queries else \
        np.sort(np.random.default_rng(seed).choice(candidates, size=map_queries, replace=False))
    ap = []
    if len(sample):
        ranked, _ = nearest(query_emb[sample], index_emb, int(r_of[sample].max()))
        for row, q in enumerate(sample):
            ap.append(average_precision_at_r(index_labels[ranked[row]] == query_labels[q], int(r_of[q])))
    return RetrievalMetrics(precision=precision, recall=recall, map_at_r=float(np.mean(ap)) if ap else 0.0,
                            knn_accuracy=knn, knn_k=knn_k, queries=len(query_emb), index_size=len(index_emb),
                            map_queries=len(sample))


def pixel_embeddings(images_uint8: np.ndarray) -> np.ndarray:
    """The raw-pixel baseline: flattened pixels as float32, L2-normalised (an all-black image stays zero)."""
    flat = np.asarray(images_uint8, dtype=np.float32).reshape(len(images_uint8), -1)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.maximum(norms, 1e-12)


# -- the evaluation step ------------------------------------------------------------------------------------------

@dataclass
class EvaluationResult:
    model: RetrievalMetrics
    raw_pixels: RetrievalMetrics
    model_dir: str
    table_uri: str | None
    table_version: int | None
    query_split: str
    index_split: str
    seconds: float
    files: dict[str, str] = field(default_factory=dict)  # "json"/"png" -> path

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat metric names for tracking: model metrics unprefixed, baseline as `raw_pixels_*`."""
        return {**self.model.flat(), **self.raw_pixels.flat("raw_pixels_")}

    def table(self) -> str:
        """A plain-text comparison table."""
        rows = [("metric", "model", "raw pixels")]
        for (name, value), base in zip(self.model.flat().items(), self.raw_pixels.flat().values()):
            rows.append((name, f"{value:.4f}", f"{base:.4f}"))
        width = max(len(r[0]) for r in rows)
        lines = [f"{a:<{width}}  {b:>8}  {c:>10}" for a, b, c in rows]
        lines.append(f"({self.model.queries} {self.query_split} queries vs {self.model.index_size} "
                     f"{self.index_split} items; mAP@R on {self.model.map_queries} queries)")
        return "\n".join(lines)


def evaluate_embeddings(model, query_images: np.ndarray, query_labels: np.ndarray, index_images: np.ndarray,
                        index_labels: np.ndarray, out_dir: str | Path, *, model_dir: str = "",
                        table_uri: str | None = None, table_version: int | None = None,
                        query_split: str = "test", index_split: str = "train", ks: Sequence[int] = DEFAULT_KS,
                        knn_k: int = DEFAULT_KNN_K, map_queries: int = DEFAULT_MAP_QUERIES, seed: int = 0,
                        grid_rows: int = 10, grid_k: int = 5) -> EvaluationResult:
    """Evaluate `model` (exported or Keras, see `model.embed`) and the raw-pixel baseline; write JSON and PNG."""
    from kuberec.similarity.model import embed

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    query_emb, index_emb = embed(model, query_images), embed(model, index_images)
    log.info("embedded %d queries and %d index images in %.1f s", len(query_emb), len(index_emb),
             time.perf_counter() - started)
    options = dict(ks=ks, knn_k=knn_k, map_queries=map_queries, seed=seed)
    model_metrics = retrieval_metrics(query_emb, query_labels, index_emb, index_labels, **options)
    query_px, index_px = pixel_embeddings(query_images), pixel_embeddings(index_images)
    pixel_metrics = retrieval_metrics(query_px, query_labels, index_px, index_labels, **options)
    result = EvaluationResult(model=model_metrics, raw_pixels=pixel_metrics, model_dir=str(model_dir),
                              table_uri=table_uri, table_version=table_version, query_split=query_split,
                              index_split=index_split, seconds=0.0)

    rows = _grid_queries(np.asarray(query_labels), grid_rows, seed)
    grid = {"model": nearest(query_emb[rows], index_emb, grid_k)[0],
            "raw pixels": nearest(query_px[rows], index_px, grid_k)[0]}
    png = out_dir / GRID_FILE
    plot_neighbours(png, query_images[rows], np.asarray(query_labels)[rows], index_images,
                    np.asarray(index_labels), grid)
    result.seconds = round(time.perf_counter() - started, 2)
    json_path = out_dir / RESULT_FILE
    result.files = {"json": str(json_path), "png": str(png)}
    json_path.write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _grid_queries(labels: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """Seeded query rows for the picture, one per class first so every class shows up."""
    rng = np.random.default_rng(seed)
    picked = [int(rng.choice(np.flatnonzero(labels == c))) for c in np.unique(labels[labels >= 0])][:rows]
    rest = np.setdiff1d(np.flatnonzero(labels >= 0), picked)
    picked += rng.choice(rest, size=min(rows - len(picked), len(rest)), replace=False).tolist()
    return np.array(picked, dtype=np.int64)


def _label_name(label: int) -> str:
    from kuberec.datasets.fashion_mnist import LABEL_NAMES

    return LABEL_NAMES[label] if 0 <= label < len(LABEL_NAMES) else str(label)


def plot_neighbours(path: Path, query_images: np.ndarray, query_labels: np.ndarray, index_images: np.ndarray,
                    index_labels: np.ndarray, neighbours: dict[str, np.ndarray]) -> Path:
    """PNG grid: one row per query; the query, then each method's neighbours (green frame = same class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(n.shape[1] for n in neighbours.values())
    columns = 1 + len(neighbours) * (k + 1)  # a blank column before each method's block
    fig, axes = plt.subplots(len(query_images), columns, figsize=(columns * 0.95, len(query_images) * 1.1),
                             squeeze=False)
    for row, (image, label) in enumerate(zip(query_images, query_labels)):
        for ax in axes[row]:
            ax.axis("off")
        axes[row, 0].imshow(image, cmap="gray_r")
        axes[row, 0].set_title(_label_name(int(label)), fontsize=6)
        for block, (method, hits) in enumerate(neighbours.items()):
            first = 1 + block * (k + 1) + 1
            if row == 0:
                axes[row, first].text(0, 1.45, method, transform=axes[row, first].transAxes, fontsize=8)
            for j, item in enumerate(hits[row]):
                ax = axes[row, first + j]
                ax.imshow(index_images[item], cmap="gray_r")
                ax.axis("on")
                ax.set_xticks([])
                ax.set_yticks([])
                same = index_labels[item] == label
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:green" if same else "tab:red")
                    spine.set_linewidth(2)
                ax.set_title(_label_name(int(index_labels[item])), fontsize=5)
    fig.suptitle("query | nearest neighbours (green = same class)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate_similarity(model_dir: str | Path, table_uri: str, version: int | None, out_dir: str | Path, *,
                        query_split: str = "test", index_split: str = "train", max_queries: int | None = None,
                        map_queries: int = DEFAULT_MAP_QUERIES, seed: int = 0) -> EvaluationResult:
    """Load an exported model and both splits of one table version; evaluate and write the outputs."""
    from kuberec import feed
    from kuberec.lake.delta import table_version
    from kuberec.similarity.model import load_embedding_model

    model = load_embedding_model(model_dir)
    version = table_version(table_uri) if version is None else version
    queries = feed.load_arrays(table_uri, version=version, split=query_split)
    index = feed.load_arrays(table_uri, version=version, split=index_split)
    for name, arrays in ((query_split, queries), (index_split, index)):
        if not (arrays.labels >= 0).any():
            raise EvaluationError(f"split {name!r} of {table_uri}@v{version} has no labelled images; "
                                  "ingest Fashion-MNIST first (kuberec ingest fashion-mnist)")
    q_images, q_labels = queries.images, queries.labels
    if max_queries is not None and max_queries < len(q_images):
        keep = np.sort(np.random.default_rng(seed).choice(len(q_images), size=max_queries, replace=False))
        q_images, q_labels = q_images[keep], q_labels[keep]
    labelled = index.labels >= 0
    return evaluate_embeddings(model, q_images, q_labels, index.images[labelled], index.labels[labelled], out_dir,
                               model_dir=str(model_dir), table_uri=table_uri, table_version=version,
                               query_split=query_split, index_split=index_split, map_queries=map_queries, seed=seed)


def add_arguments(parser: argparse.ArgumentParser, table_required: bool = True) -> None:
    """Arguments of the evaluation; `table_required=False` is the CLI's, which also evaluates a tracked run."""
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="exported embedding model directory (<train out>/model)")
    if not table_required:
        model.add_argument("--run", dest="run_id",
                           help="MLflow run id of a tracked training: evaluate its model and log into that run")
    parser.add_argument("--table", required=table_required, help="Delta table URI (Fashion-MNIST format)")
    parser.add_argument("--version", type=int, default=None, help="Delta version to read (default: latest)")
    parser.add_argument("--out", default=None, help="output directory (default: <model>/../evaluation)")
    parser.add_argument("--queries", type=int, default=None, help="evaluate on a seeded sample of this many queries")
    parser.add_argument("--map-queries", type=int, default=DEFAULT_MAP_QUERIES,
                        help=f"queries in the mAP@R sample (default {DEFAULT_MAP_QUERIES})")


def default_out_dir(model_dir: str | Path) -> Path:
    return Path(model_dir).absolute().parent / "evaluation"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuberec.similarity.evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    result = evaluate_similarity(args.model, args.table, args.version, args.out or default_out_dir(args.model),
                                 max_queries=args.queries, map_queries=args.map_queries)
    print(result.table())
    print(f"wrote {result.files['json']} and {result.files['png']}")
    return 0


if __name__ == "__main__":
    from kuberec.entrypoint import run_program

    run_program("kuberec.similarity.evaluate", main)
