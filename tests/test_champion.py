"""The champion gate's rule on known scores (kuberec.champion); the register steps apply it to real models in
tests/similarity/test_refresh.py and tests/widedeep/test_widedeep_pipeline.py."""

from __future__ import annotations

import pytest

from kuberec.champion import ChampionPolicyError, check_policy, decide

pytestmark = pytest.mark.fast


def _decide(policy: str, challenger: float, champion: float | None, tolerance: float = 0.01):
    scored = []

    def score(who: str, value: float):
        return lambda: scored.append(who) or value

    decision = decide(policy, metric="precision_at_5", champion_version=None if champion is None else 4,
                      score_challenger=score("challenger", challenger), score_champion=score("champion", champion),
                      tolerance=tolerance)
    return decision, scored


def test_the_gate_promotes_only_a_challenger_that_beats_the_champion_by_more_than_the_tolerance():
    better, scored = _decide("gate", 0.80, 0.78)
    assert better.promote and scored == ["challenger", "champion"]
    assert (better.challenger, better.champion, better.champion_version) == (0.80, 0.78, 4)
    assert "beats champion v4's 0.7800 by 0.0200" in better.reason
    worse, _ = _decide("gate", 0.70, 0.78)
    assert not worse.promote and "below champion v4's 0.7800" in worse.reason
    for challenger in (0.785, 0.78, 0.775):  # within the tolerance either way: the champion stays
        tie, _ = _decide("gate", challenger, 0.78)
        assert not tie.promote and "within tolerance 0.01" in tie.reason


def test_a_first_version_passes_the_gate_unscored_and_always_and_never_score_nothing():
    first, scored = _decide("gate", 0.1, None)
    assert first.promote and scored == [] and first.reason == "first version: no champion to beat"
    always, scored = _decide("always", 0.1, 0.9)
    assert always.promote and scored == []
    never, scored = _decide("never", 0.9, None)  # not even a first version
    assert not never.promote and scored == [] and "stays unset" in never.reason


def test_an_index_refresh_only_has_to_hold_the_champions_score():
    def hold(challenger: float):
        return decide("gate", metric="index_precision_at_5", champion_version=2, score_challenger=lambda: challenger,
                      score_champion=lambda: 0.80, tolerance=0.01, hold=True)

    assert hold(0.80).promote and hold(0.791).promote and "holds champion v2's 0.8000" in hold(0.791).reason
    assert not hold(0.78).promote and "below champion v2's 0.8000 by 0.0200" in hold(0.78).reason


def test_the_decision_is_recorded_as_tags_and_metrics():
    decision, _ = _decide("gate", 0.80, 0.78)
    assert decision.tags()["kuberec.champion_gate.promote"] == "True"
    assert decision.tags()["kuberec.champion_gate.champion_version"] == "4"
    assert decision.metrics() == {"champion_gate_challenger_precision_at_5": 0.80,
                                  "champion_gate_champion_precision_at_5": 0.78}


def test_an_unknown_policy_or_a_negative_tolerance_is_refused_by_name():
    with pytest.raises(ChampionPolicyError, match="unknown champion policy 'sometimes'; choose one of gate, always"):
        check_policy("sometimes")
    with pytest.raises(ChampionPolicyError, match="tolerance must be a number >= 0, got -0.1"):
        check_policy("gate", -0.1)
    with pytest.raises(ChampionPolicyError, match="got nan"):
        check_policy("gate", float("nan"))
