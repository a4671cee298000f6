"""Evaluation metrics on hand-made cases with known answers, and a real evaluation run against the baselines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kuberec.widedeep.evaluate import SCORED_MODELS, Popularity, evaluate_widedeep
from kuberec.widedeep.metrics import (
    METRICS,
    EvaluationError,
    auc,
    basket_f1,
    best_threshold,
    log_loss,
    map_at_k,
    ranking_metrics,
    user_auc,
)


@pytest.mark.fast
def test_auc_counts_pairs_and_ties():
    # Positives 0.9, 0.4; negatives 0.5, 0.4, 0.1 -> pairs won: 0.9 beats 3, 0.4 beats 0.1 and ties 0.4 = 4.5 / 6.
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.5, 0.4, 0.4, 0.1])
    assert auc(labels, scores) == pytest.approx(4.5 / 6)
    assert auc(labels, -scores) == pytest.approx(1 - 4.5 / 6)
    with pytest.raises(EvaluationError, match="both labels"):
        auc(np.ones(3), np.arange(3))


@pytest.mark.fast
def test_log_loss_by_hand():
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))  # clipped, not infinite


@pytest.mark.fast
def test_map_at_10_by_hand():
    # User 1: ranked labels 1,0,1,0 -> AP = (1/1 + 2/3) / 2. User 2: ranked 0,1 -> AP = (1/2) / 1.
    # User 3 has no positive and is left out. User 4: 12 candidates, its single positive ranked 11th -> AP 0.
    users = np.array([1, 1, 1, 1, 2, 2, 3, 3] + [4] * 12)
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 0] + [0] * 10 + [1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.6, 0.3, 0.5, 0.2] + list(np.linspace(0.99, 0.5, 12)))
    expected = ((1 + 2 / 3) / 2 + 0.5 + 0.0) / 3
    order = np.random.default_rng(0).permutation(len(users))  # row order must not matter
    assert map_at_k(users[order], labels[order], scores[order], k=10) == pytest.approx(expected)
    # More positives than k: the denominator is k.
    assert map_at_k(np.zeros(12), np.ones(12), np.arange(12), k=10) == pytest.approx(1.0)


@pytest.mark.fast
def test_recall_at_k_by_hand():
    # User 1: 3 positives, 2 of them in the top 2; user 2: 1 positive ranked 3rd; user 3: no positive (left out).
    users = np.array([1, 1, 1, 1, 2, 2, 2, 3])
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.9, 0.8, 0.7, 0.5])
    assert ranking_metrics(users, labels, scores, k=2)["recall_at_2"] == pytest.approx((2 / 3 + 0) / 2)
    assert ranking_metrics(users, labels, scores, k=3)["recall_at_3"] == pytest.approx((2 / 3 + 1) / 2)


@pytest.mark.fast
def test_user_auc_is_the_mean_of_each_users_auc():
    # User 1 ranks perfectly (AUC 1); user 2 is reversed (0); user 3 ties (0.5); user 4 has one label (left out).
    # Pooled AUC mixes users: user 2's high scores beat user 1's positives.
    users = np.array([1, 1, 2, 2, 3, 3, 4])
    labels = np.array([1, 0, 1, 0, 1, 0, 1])
    scores = np.array([0.3, 0.2, 0.8, 0.9, 0.5, 0.5, 0.7])
    assert user_auc(users, labels, scores) == pytest.approx((1 + 0 + 0.5) / 3)
    assert auc(labels, scores) != pytest.approx(user_auc(users, labels, scores))
    with pytest.raises(EvaluationError, match="both labels"):
        user_auc(np.array([1, 1]), np.array([1, 1]), np.array([0.1, 0.2]))


@pytest.mark.fast
def test_basket_f1_by_hand_and_its_threshold():
    # Threshold 0.5: user 1 picks {a, b} of positives {a, c}: F1 = 2*1/(2+2) = 0.5; user 2 picks {} of {d}: F1 0.
    users = np.array([1, 1, 1, 2, 2])
    labels = np.array([1, 0, 1, 1, 0])
    scores = np.array([0.9, 0.6, 0.2, 0.4, 0.1])
    assert basket_f1(users, labels, scores, 0.5) == pytest.approx((0.5 + 0) / 2)
    # Threshold 0.15 picks everything but the last row: user 1 {a, b, c}: F1 0.8; user 2 {d}: 1.0.
    assert basket_f1(users, labels, scores, 0.15) == pytest.approx((0.8 + 1.0) / 2)
    chosen = best_threshold(users, labels, scores)
    assert basket_f1(users, labels, scores, chosen) >= basket_f1(users, labels, scores, 0.5)


@pytest.mark.fast
def test_popularity_is_a_smoothed_rate():
    popularity = Popularity.fit(np.array([1, 1, 1, 1, 2, 2]), np.array([1, 1, 1, 0, 0, 0]), prior_weight=2)
    assert popularity.global_rate == pytest.approx(0.5)
    np.testing.assert_allclose(popularity.score([1, 2, 99]), [(3 + 1) / 6, (0 + 1) / 4, 0.5])


def test_evaluation_compares_every_model_on_the_test_split(trained, examples_uri, tmp_path):
    result = evaluate_widedeep(examples_uri, tmp_path / "eval", model_dir=trained)
    assert list(result.scores) == list(SCORED_MODELS)
    for values in result.scores.values():
        assert list(values) == list(METRICS)
        assert all(0 <= values[m] <= 1 for m in METRICS if m != "log_loss") and values["log_loss"] > 0
    # Trained models beat chance on generated data with strong repeat purchasing; so do the wide part alone and the
    # trees.
    for model in ("wide_deep", "wide", "deep", "gbt"):
        assert result.scores[model]["user_auc"] > 0.6, (model, result.scores[model])
    assert result.scores["popularity"]["auc"] > 0.5
    assert set(result.seconds) == {"wide", "deep", "gbt"}  # trained in this run; W&D came from the model
    assert set(result.thresholds) == set(SCORED_MODELS)
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["scores"] == result.scores and saved["test_rows"] == result.test_rows > 0
    assert result.metrics()["user_auc"] == result.scores["wide_deep"]["user_auc"]
    assert result.metrics()["popularity_auc"] == result.scores["popularity"]["auc"]
    assert "wide_deep" in result.table() and "popularity" in result.table()
