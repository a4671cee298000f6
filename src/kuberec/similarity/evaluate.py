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

from kuberec.similarity.metrics import (
    DEFAULT_KNN_K,
    DEFAULT_KS,
    DEFAULT_MAP_QUERIES,
    EvaluationError,
    RetrievalMetrics,
    nearest,
    retrieval_metrics,
)

log = logging.getLogger("kuberec.similarity.evaluate")

RESULT_FILE = "similarity_evaluation.json"
GRID_FILE = "neighbours.png"


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


@dataclass(frozen=True)
class EvaluationData:
    """The labelled queries and index images of one table version: what every model of one comparison is scored
    on (the evaluation step, and the champion gate scoring challenger and champion alike)."""

    query_images: np.ndarray
    query_labels: np.ndarray
    index_images: np.ndarray
    index_labels: np.ndarray
    table_uri: str
    table_version: int
    query_split: str
    index_split: str


def load_evaluation_data(table_uri: str, version: int | None, *, query_split: str = "test",
                         index_split: str = "train", max_queries: int | None = None,
                         seed: int = 0) -> EvaluationData:
    """Both splits of one table version (default: latest); `max_queries`: a seeded sample of the queries."""
    from kuberec.lake import feed
    from kuberec.lake.delta import table_version

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
    return EvaluationData(q_images, q_labels, index.images[labelled], index.labels[labelled], table_uri, version,
                          query_split, index_split)


def score_model(model, data: EvaluationData, *, map_queries: int = DEFAULT_MAP_QUERIES,
                seed: int = 0) -> RetrievalMetrics:
    """The model's retrieval metrics alone (no baseline, no picture): what the champion gate compares."""
    from kuberec.similarity.model import embed

    return retrieval_metrics(embed(model, data.query_images), data.query_labels, embed(model, data.index_images),
                             data.index_labels, ks=DEFAULT_KS, knn_k=DEFAULT_KNN_K, map_queries=map_queries,
                             seed=seed)


def evaluate_similarity(model_dir: str | Path, table_uri: str, version: int | None, out_dir: str | Path, *,
                        query_split: str = "test", index_split: str = "train", max_queries: int | None = None,
                        map_queries: int = DEFAULT_MAP_QUERIES, seed: int = 0) -> EvaluationResult:
    """Load an exported model and both splits of one table version; evaluate and write the outputs."""
    from kuberec.similarity.model import load_embedding_model

    model = load_embedding_model(model_dir)
    data = load_evaluation_data(table_uri, version, query_split=query_split, index_split=index_split,
                                max_queries=max_queries, seed=seed)
    return evaluate_embeddings(model, data.query_images, data.query_labels, data.index_images, data.index_labels,
                               out_dir, model_dir=str(model_dir), table_uri=table_uri, table_version=data.table_version,
                               query_split=query_split, index_split=index_split, map_queries=map_queries, seed=seed)


def add_arguments(parser: argparse.ArgumentParser, table_required: bool = True) -> None:
    """Arguments of the evaluation; `table_required=False` is the CLI's, which also evaluates a tracked run."""
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="exported embedding model directory (<train out>/model)")
    if not table_required:
        model.add_argument("--run", dest="run_id",
                           help="MLflow run id of a tracked training: evaluate its model and log into that run")
    parser.add_argument("--table", required=table_required, help="Delta table URI (Fashion-MNIST format)" + (
        "" if table_required else "; default: with --run the table version the run trained on, with --model the "
                                  "lake's fashion_mnist"))
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
