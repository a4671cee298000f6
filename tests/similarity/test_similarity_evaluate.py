"""Retrieval metrics on hand-made embeddings whose answers are worked out below, plus the exact search itself."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kuberec.similarity.evaluate import EvaluationError, pixel_embeddings
from kuberec.similarity.metrics import average_precision_at_r, nearest, retrieval_metrics

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`


def unit(degrees: float) -> list[float]:
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


# Index: six points on the unit circle; cosine similarity ranks them by angular distance from a query.
INDEX = np.array([unit(a) for a in (0, 10, 20, 90, 100, 180)], dtype=np.float32)
INDEX_LABELS = np.array([0, 0, 1, 1, 1, 2])  # class sizes R: 0 -> 2, 1 -> 3, 2 -> 1
# Queries and their rankings (angular distance in brackets):
#   4 deg, label 0:  0(4)  10(6)  20(16)  90(86) ...          labels 0 0 1 1  -> p@1 1, p@3 2/3, AP@R(R=2) = 1
#  12 deg, label 1: 10(2)  20(8)   0(12)  90(78) ...          labels 0 1 0 1  -> p@1 0, p@3 1/3, AP@R(R=3) = (1/2)/3
#  94 deg, label 2: 90(4) 100(6)  20(74)  10(84) 180(86) ...  labels 1 1 1 0 2 -> p@1 0, p@3 0,  AP@R(R=1) = 0
#  (an unlabelled query is left out)
QUERIES = np.array([unit(a) for a in (4, 12, 94, 50)], dtype=np.float32)
QUERY_LABELS = np.array([0, 1, 2, -1])


def test_metrics_match_hand_computed_values():
    m = retrieval_metrics(QUERIES, QUERY_LABELS, INDEX, INDEX_LABELS, ks=(1, 3), knn_k=3)
    assert m.queries == 3 and m.index_size == 6 and m.map_queries == 3
    assert m.precision[1] == pytest.approx(1 / 3)
    assert m.precision[3] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert m.recall[1] == pytest.approx(1 / 3)  # only the first query's nearest item shares its class
    assert m.recall[3] == pytest.approx(2 / 3)  # the second finds one of its class by rank 2; the third never
    assert m.map_at_r == pytest.approx((1 + 1 / 6 + 0) / 3)
    # 3-NN votes: (0,0,1) -> 0 right; (0,1,0) -> 0 wrong; (1,1,1) -> 1 wrong
    assert m.knn_accuracy == pytest.approx(1 / 3)
    assert m.flat()["precision_at_3"] == m.precision[3]
    assert set(m.flat("raw_")) == {"raw_precision_at_1", "raw_precision_at_3", "raw_recall_at_1",
                                   "raw_recall_at_3", "raw_map_at_r", "raw_knn_accuracy_at_3"}


def test_knn_ties_go_to_the_nearer_label():
    # 2-NN of 12 deg is (10 deg: label 0, 20 deg: label 1): a tie, resolved for label 0 (nearer).
    as_zero = retrieval_metrics(QUERIES[1:2], [0], INDEX, INDEX_LABELS, ks=(1,), knn_k=2)
    as_one = retrieval_metrics(QUERIES[1:2], [1], INDEX, INDEX_LABELS, ks=(1,), knn_k=2)
    assert as_zero.knn_accuracy == 1.0 and as_one.knn_accuracy == 0.0


def test_map_uses_a_seeded_sample():
    one = retrieval_metrics(QUERIES, QUERY_LABELS, INDEX, INDEX_LABELS, ks=(1,), map_queries=1, seed=3)
    again = retrieval_metrics(QUERIES, QUERY_LABELS, INDEX, INDEX_LABELS, ks=(1,), map_queries=1, seed=3)
    assert one.map_queries == 1
    assert one.map_at_r == again.map_at_r
    assert any(one.map_at_r == pytest.approx(ap) for ap in (1.0, 1 / 6, 0.0))


def test_average_precision_at_r():
    assert average_precision_at_r(np.array([True, False, True, True]), 2) == pytest.approx(0.5)
    assert average_precision_at_r(np.array([False, True, True]), 3) == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert average_precision_at_r(np.array([True]), 0) == 0.0


def test_nearest_is_exact_across_chunks():
    rng = np.random.default_rng(0)
    queries, index = rng.normal(size=(300, 16)).astype(np.float32), rng.normal(size=(500, 16)).astype(np.float32)
    indices, sims = nearest(queries, index, 7, chunk=128)
    expected = np.argsort(-(queries @ index.T), axis=1)[:, :7]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(sims, np.take_along_axis(queries @ index.T, expected, axis=1), rtol=1e-6)


def test_pixel_baseline_is_unit_length_and_keeps_blank_images_zero():
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[1, 3, 4] = 200
    images[2] = 7
    emb = pixel_embeddings(images)
    assert emb.shape == (3, 784)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), [0.0, 1.0, 1.0], atol=1e-6)


def test_unusable_inputs_are_rejected():
    with pytest.raises(EvaluationError, match="no labelled queries"):
        retrieval_metrics(QUERIES, [-1, -1, -1, -1], INDEX, INDEX_LABELS)
    with pytest.raises(EvaluationError, match="same D"):
        retrieval_metrics(QUERIES, QUERY_LABELS, np.ones((6, 3), np.float32), INDEX_LABELS)
