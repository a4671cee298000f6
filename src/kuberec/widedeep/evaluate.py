"""Evaluate wide & deep against its parts and a popularity baseline on the test split (`kuberec evaluate widedeep`).

In one run, on the same Delta version of the gold examples table: the wide & deep model (trained by
`kuberec train widedeep`, or here when no model is given), a wide-only and a deep-only model trained here with the
same config on the same train split, and a popularity baseline: each product's smoothed label rate in the train
split, (positives + PRIOR_WEIGHT * global rate) / (candidates + PRIOR_WEIGHT), i.e. how often users who bought it
before bought it again in their final order. All four score every test-split row and are compared by:

- AUC over all test rows (ties count one half), log loss (probabilities clipped to [1e-7, 1 - 1e-7]);
- MAP@10 over users: each user's test candidates ranked by score, AP@10 = sum over the top 10 of precision@i at
  each positive / min(10, the user's positives); users without a positive in the test split are left out.

Writes `evaluation.json` into the output directory; `kuberec evaluate widedeep --run ID` (kuberec.widedeep.steps)
logs it and the metrics into the model's MLflow run and prints the table.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kuberec.errors import KuberecError
from kuberec.ingest.instacart_features import CATEGORICAL_FEATURES, ID_COLUMNS, NUMERIC_FEATURES

log = logging.getLogger(__name__)

MAP_K = 10
PRIOR_WEIGHT = 10.0
EPSILON = 1e-7
RESULT_FILE = "evaluation.json"
MODELS = ("wide_deep", "wide", "deep", "popularity")
EVAL_COLUMNS = (*ID_COLUMNS, *CATEGORICAL_FEATURES, *NUMERIC_FEATURES, "label")


class EvaluationError(KuberecError):
    """The evaluation data cannot be scored (no rows, one class only, missing model)."""


# -- metrics ------------------------------------------------------------------------------------------------------

def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise EvaluationError(f"AUC needs both labels; got {n_pos} positives and {n_neg} negatives")
    ranks = pd.Series(np.asarray(scores, np.float64)).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    y = np.asarray(labels, np.float64)
    p = np.clip(np.asarray(probabilities, np.float64), EPSILON, 1 - EPSILON)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def map_at_k(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = MAP_K) -> float:
    """Mean over users with a positive of AP@k of their candidates ranked by score (ties: input order)."""
    frame = pd.DataFrame({"user": np.asarray(users), "label": np.asarray(labels).astype(np.int64),
                          "score": np.asarray(scores, np.float64)})
    frame = frame.iloc[np.lexsort((-frame["score"].to_numpy(), frame["user"].to_numpy()))]
    grouped = frame.groupby("user", sort=False)
    rank = grouped.cumcount().to_numpy() + 1
    hits = grouped["label"].cumsum().to_numpy()
    rel = frame["label"].to_numpy()
    frame = frame.assign(gain=np.where((rank <= k) & (rel == 1), hits / rank, 0.0))
    per_user = frame.groupby("user").agg(gain=("gain", "sum"), positives=("label", "sum"))
    per_user = per_user[per_user["positives"] > 0]
    if per_user.empty:
        raise EvaluationError("MAP@k needs at least one user with a positive")
    return float((per_user["gain"] / np.minimum(per_user["positives"], k)).mean())


def metrics(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {"auc": auc(labels, scores), "log_loss": log_loss(labels, scores),
            f"map_at_{MAP_K}": map_at_k(users, labels, scores)}


# -- the popularity baseline --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Popularity:
    """Smoothed per-product label rate from a training split; unknown products get the global rate."""

    product_ids: np.ndarray  # int64 [P], sorted
    rates: np.ndarray  # float64 [P]
    global_rate: float

    @classmethod
    def fit(cls, product_ids: np.ndarray, labels: np.ndarray, prior_weight: float = PRIOR_WEIGHT) -> "Popularity":
        frame = pd.DataFrame({"product_id": np.asarray(product_ids, np.int64), "label": np.asarray(labels)})
        if frame.empty:
            raise EvaluationError("the popularity baseline needs training rows")
        global_rate = float(frame["label"].mean())
        per = frame.groupby("product_id")["label"].agg(["sum", "count"]).sort_index()
        rates = (per["sum"] + prior_weight * global_rate) / (per["count"] + prior_weight)
        return cls(per.index.to_numpy(np.int64), rates.to_numpy(np.float64), global_rate)

    def score(self, product_ids: np.ndarray) -> np.ndarray:
        product_ids = np.asarray(product_ids, np.int64)
        pos = np.clip(np.searchsorted(self.product_ids, product_ids), 0, max(len(self.product_ids) - 1, 0))
        known = (self.product_ids[pos] == product_ids) if len(self.product_ids) else np.zeros(len(product_ids), bool)
        return np.where(known, self.rates[pos] if len(self.rates) else 0.0, self.global_rate)


# -- the evaluation -----------------------------------------------------------------------------------------------

@dataclass
class EvaluationResult:
    examples_uri: str
    examples_version: int
    test_rows: int
    test_users_with_positives: int
    train_rows: int
    config: dict[str, Any]
    metrics: dict[str, dict[str, float]]  # model -> metric -> value
    seconds: dict[str, float] = field(default_factory=dict)  # training time of each model trained here
    files: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        keys = ["auc", "log_loss", f"map_at_{MAP_K}"]
        lines = [f"test split of {self.examples_uri}@v{self.examples_version}: {self.test_rows} rows, "
                 f"{self.test_users_with_positives} users with a positive",
                 f"{'model':<12}" + "".join(f"{k:>12}" for k in keys)]
        for name, values in self.metrics.items():
            lines.append(f"{name:<12}" + "".join(f"{values[k]:>12.4f}" for k in keys))
        return "\n".join(lines)


def evaluate_widedeep(examples_uri: str, out_dir: str | Path, *, model_dir: str | Path | None = None,
                      config=None, version: int | None = None) -> EvaluationResult:
    """Score W&D, wide-only, deep-only and popularity on the test split; see the module docstring.

    `model_dir`: a `kuberec train widedeep` output directory (its config and table version are used unless given);
    without it the wide & deep model is trained here too.
    """
    from kuberec import feed
    from kuberec.widedeep import model as wd
    from kuberec.widedeep.train import TrainResult, train_widedeep_model

    out_dir = Path(out_dir)
    trained = None
    if model_dir is not None:
        trained = TrainResult.load(model_dir)
        config = config or trained.config
        version = trained.tables.get(examples_uri, version) if version is None else version
    config = config or wd.WideDeepConfig()
    test = feed.load_table_arrays(examples_uri, EVAL_COLUMNS, version=version, split="test")
    version = test.version
    train = feed.load_table_arrays(examples_uri, ("product_id", "label"), version=version, split="train")
    columns, users, labels = test.columns, test.columns["user_id"], test.columns["label"]
    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    scratch = out_dir / "scratch"
    for kind in ("wide_deep", "wide", "deep"):
        if kind == "wide_deep" and trained is not None:
            scores[kind] = wd.predict(wd.load_model(trained.model_dir), columns)
            continue
        started = time.perf_counter()
        _, model = train_widedeep_model(config.replace(kind=kind), examples_uri, scratch, version=version,
                                        save=False)
        seconds[kind] = round(time.perf_counter() - started, 2)
        scores[kind] = wd.predict(model, columns)
    scores["popularity"] = Popularity.fit(train.columns["product_id"], train.columns["label"]).score(
        columns["product_id"])
    result = EvaluationResult(
        examples_uri=examples_uri, examples_version=version, test_rows=len(test),
        test_users_with_positives=int(pd.Series(labels).groupby(users).max().sum()), train_rows=len(train),
        config=config.to_dict(), metrics={name: metrics(users, labels, scores[name]) for name in MODELS},
        seconds=seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULT_FILE
    result.files = {"json": str(path)}
    path.write_text(json.dumps(dataclasses.asdict(result), indent=2))
    log.info("evaluation written to %s", path)
    return result
