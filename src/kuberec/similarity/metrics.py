"""Retrieval metrics of an embedding: each query's nearest neighbours (cosine) among the index images, scored by
label: precision@k, recall@k, mAP@R and k-NN accuracy. The evaluation step and tuning trials score with these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kuberec.errors import KuberecError

DEFAULT_KS = (1, 5, 10)
DEFAULT_KNN_K = 5
DEFAULT_MAP_QUERIES = 1000


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
