"""The champion gate: whether a newly registered model version takes the `champion` alias (what serving follows).

One policy per registration (`--champion`, the pipelines' `champion` parameter):

- `gate` (default): the new version (the challenger) becomes champion only when it beats the current champion on
  the same evaluation data by more than `tolerance` in the model's headline metric (similarity precision@5, wide &
  deep per-user AUC; both higher-is-better). Both are scored here, by the same function on the same table version,
  so the comparison never rests on an old number. A model's first version has nothing to beat and becomes champion.
- `always`: the new version becomes champion.
- `never`: `champion` does not move, even for a model's first version.

The decision (policy, both scores, the reason) goes into the step's output, the training run (tags and metrics),
the new model version's tags and the pipeline's KFP artifacts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from kuberec.errors import KuberecError

POLICIES = ("gate", "always", "never")
DEFAULT_POLICY = "gate"
# Twice wide & deep's per-user AUC spread over seeds and above similarity precision@5's drift between CPU kinds
# (docs/BENCHMARKS.md): a rerun of the same model on other hardware does not replace the champion.
DEFAULT_TOLERANCE = 0.001
TAG_PREFIX = "kuberec.champion_gate."


class ChampionPolicyError(KuberecError):
    """A champion policy or tolerance kuberec does not have."""


def check_policy(policy: str, tolerance: float = DEFAULT_TOLERANCE) -> None:
    if policy not in POLICIES:
        raise ChampionPolicyError(f"unknown champion policy {policy!r}; choose one of {', '.join(POLICIES)} "
                                  f"(gate: only a version that beats the champion; always; never)")
    if not tolerance >= 0:  # also refuses NaN
        raise ChampionPolicyError(f"champion tolerance must be a number >= 0, got {tolerance!r}")


@dataclass(frozen=True)
class ChampionDecision:
    policy: str
    promote: bool  # the new version becomes champion
    metric: str
    tolerance: float
    reason: str
    challenger: float | None = None  # the new version's score (None: not scored under this policy)
    champion: float | None = None  # the current champion's score on the same data (None: none or not scored)
    champion_version: int | None = None  # the champion when the decision was taken

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def tags(self) -> dict[str, str]:
        """MLflow tags (run and model version): every field, as text."""
        return {f"{TAG_PREFIX}{key}": "" if value is None else str(value) for key, value in self.to_dict().items()}

    def metrics(self) -> dict[str, float]:
        """The scores as MLflow metrics of the training run."""
        scores = {"challenger": self.challenger, "champion": self.champion}
        return {f"champion_gate_{who}_{self.metric}": value for who, value in scores.items() if value is not None}

    def summary(self) -> str:
        verdict = "promoted to champion" if self.promote else "not champion"
        return f"{verdict} ({self.policy}): {self.reason}"


def decide(policy: str, *, metric: str, champion_version: int | None, score_challenger: Callable[[], float],
           score_champion: Callable[[], float], tolerance: float = DEFAULT_TOLERANCE,
           hold: bool = False) -> ChampionDecision:
    """Apply `policy` (module docstring). The score functions run only under `gate` with a champion to beat;
    `score_champion` re-scores the current champion (`champion_version`) on the challenger's evaluation data.

    `hold`: the challenger only has to hold the champion's score within `tolerance` instead of beating it by more
    (an index refresh: the same weights over more items, which exists for coverage, not for a better score)."""
    check_policy(policy, tolerance)
    common = dict(policy=policy, metric=metric, tolerance=tolerance, champion_version=champion_version)
    if policy == "always":
        return ChampionDecision(promote=True, reason="policy always: every new version becomes champion", **common)
    if policy == "never":
        where = f"stays on version {champion_version}" if champion_version is not None else "stays unset"
        return ChampionDecision(promote=False, reason=f"policy never: champion {where}", **common)
    if champion_version is None:
        return ChampionDecision(promote=True, reason="first version: no champion to beat", **common)
    challenger, champion = float(score_challenger()), float(score_champion())
    margin = challenger - champion
    if hold:
        promote = margin >= -tolerance
        reason = (f"{metric} {challenger:.4f} holds champion v{champion_version}'s {champion:.4f} within tolerance "
                  f"{tolerance:g}" if promote else
                  f"{metric} {challenger:.4f} is below champion v{champion_version}'s {champion:.4f} by {-margin:.4f} "
                  f"(> tolerance {tolerance:g}): the champion stays")
        return ChampionDecision(promote=promote, reason=reason, challenger=challenger, champion=champion, **common)
    if margin > tolerance:
        reason = (f"{metric} {challenger:.4f} beats champion v{champion_version}'s {champion:.4f} by {margin:.4f} "
                  f"(> tolerance {tolerance:g})")
    elif margin >= -tolerance:
        reason = (f"{metric} {challenger:.4f} ties champion v{champion_version}'s {champion:.4f} within tolerance "
                  f"{tolerance:g}: the champion stays")
    else:
        reason = (f"{metric} {challenger:.4f} is below champion v{champion_version}'s {champion:.4f} by "
                  f"{-margin:.4f}: the champion stays")
    return ChampionDecision(promote=margin > tolerance, reason=reason, challenger=challenger, champion=champion,
                            **common)


def record_decision(decision: ChampionDecision) -> None:
    """The decision as tags and metrics of the active MLflow run (the training run of the challenger)."""
    import mlflow

    from kuberec import tracking

    mlflow.set_tags(decision.tags())
    tracking.log_metrics(decision.metrics())
