"""Evaluation metrics on hand-made cases with known answers, and a real evaluation run against the baselines."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from kuberec.widedeep.evaluate import (EvaluationError, MODELS, Popularity, auc, evaluate_widedeep, log_loss,
                                       map_at_k)


def test_auc_counts_pairs_and_ties():
    # Positives 0.9, 0.4; negatives 0.5, 0.4, 0.1 -> pairs won: 0.9 beats 3, 0.4 beats 0.1 and ties 0.4 = 4.5 / 6.
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.5, 0.4, 0.4, 0.1])
    assert auc(labels, scores) == pytest.approx(4.5 / 6)
    assert auc(labels, -scores) == pytest.approx(1 - 4.5 / 6)
    with pytest.raises(EvaluationError, match="both labels"):
        auc(np.ones(3), np.arange(3))


def test_log_loss_by_hand():
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))  # clipped, not infinite


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


def test_popularity_is_a_smoothed_rate():
    popularity = Popularity.fit(np.array([1, 1, 1, 1, 2, 2]), np.array([1, 1, 1, 0, 0, 0]), prior_weight=2)
    assert popularity.global_rate == pytest.approx(0.5)
    np.testing.assert_allclose(popularity.score([1, 2, 99]), [(3 + 1) / 6, (0 + 1) / 4, 0.5])


def test_evaluation_compares_all_four_on_the_test_split(trained, examples_uri, tmp_path):
    result = evaluate_widedeep(examples_uri, tmp_path / "eval", model_dir=trained)
    assert list(result.metrics) == list(MODELS)
    for values in result.metrics.values():
        assert 0 <= values["auc"] <= 1 and values["log_loss"] > 0 and 0 <= values["map_at_10"] <= 1
    # Trained models beat chance on generated data with strong repeat purchasing.
    assert result.metrics["wide_deep"]["auc"] > 0.6 and result.metrics["popularity"]["auc"] > 0.5
    assert set(result.seconds) == {"wide", "deep"}  # baselines trained in this run; W&D came from the model
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["metrics"] == result.metrics and saved["test_rows"] == result.test_rows > 0
    assert "wide_deep" in result.table() and "popularity" in result.table()
