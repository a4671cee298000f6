"""Evaluate wide & deep against its parts and two baselines on the test split (`kuberec evaluate widedeep`).

In one run, on the same Delta version of the gold examples table (time-shifted snapshots: train on each user's
earlier orders, valid/test on different users' final orders; kuberec.ingest.instacart_features):

- wide & deep: the model `kuberec train widedeep` trained (or trained here when no model is given);
- wide-only and deep-only: the same config with one part, trained here with the same data and the same budget: the
  same optimizer steps per epoch on the same global batch (the trained model's batch x its workers, in one process:
  synchronous data-parallel training averages the same gradients), the same epochs and early stopping on `valid`;
- popularity: each product's smoothed label rate in the train split, (positives + PRIOR_WEIGHT * global rate) /
  (candidates + PRIOR_WEIGHT), i.e. how often users who bought it before bought it again in a target order;
- gbt: gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier, what a Kaggle user reaches for) on the
  same numeric and aisle/department features, early stopping on the valid split, on at most GBT_MAX_ROWS train rows
  (a uniform sample when the split is larger).

Every model scores every test row; the metrics (`metrics`; tracked as `<metric>` for the trained model and
`<baseline>_<metric>` for the others, as the similarity evaluation does):
- `auc`: pooled AUC over all test rows (ties count one half); `user_auc`: the mean over users with both labels of
  each user's AUC among their own candidates (what ranking a user's products needs; pooled AUC also rewards telling
  heavy from light buyers apart); `log_loss` (probabilities clipped to [1e-7, 1 - 1e-7]);
- `map_at_10` and `recall_at_10` over users with a positive: each user's candidates ranked by score; AP@10 = sum
  over the top 10 of precision@i at each positive / min(10, positives); recall@10 = positives in the top 10 /
  positives;
- `f1`: the Instacart competition's metric, the mean over users with a positive of the F1 of the predicted basket
  (candidates scoring at least a threshold; the threshold that maximises the same metric on the valid split).

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

from kuberec.ingest.instacart_features import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from kuberec.widedeep.config import FEED_COLUMNS, WideDeepConfig
from kuberec.widedeep.metrics import (
    METRICS,
    EvaluationError,
    best_threshold,
    confusion_matrix,
    metrics,
    roc_curve,
)

log = logging.getLogger(__name__)

PRIOR_WEIGHT = 10.0
GBT_MAX_ROWS = 2_000_000
RESULT_FILE = "evaluation.json"
TRAINED = "wide_deep"  # the model under evaluation; the others are its baselines
SCORED_MODELS = (TRAINED, "wide", "deep", "popularity", "gbt")


# -- baselines ----------------------------------------------------------------------------------------------------
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


def _gbt_features(columns: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(columns[name], np.float32) for name in (*CATEGORICAL_FEATURES, *NUMERIC_FEATURES)],
                    axis=1)


@dataclass
class GradientBoosted:
    """HistGradientBoostingClassifier on the aisle/department ids (categorical) and the numeric features."""

    model: Any

    @classmethod
    def fit(cls, train: dict[str, np.ndarray], valid: dict[str, np.ndarray], seed: int = 0,
            max_rows: int = GBT_MAX_ROWS) -> "GradientBoosted":
        from sklearn.ensemble import HistGradientBoostingClassifier

        rows = len(train["label"])
        keep = np.sort(np.random.default_rng(seed).permutation(rows)[:max_rows]) if rows > max_rows else slice(None)
        x = _gbt_features(train)[keep]
        # Ids below the tree's bin count are categories; anything larger is left numeric.
        categorical = [bool(x[:, i].max() < 255) for i in range(len(CATEGORICAL_FEATURES))] \
            + [False] * len(NUMERIC_FEATURES)
        model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, max_leaf_nodes=63,
                                               categorical_features=categorical, early_stopping=True,
                                               n_iter_no_change=10, random_state=seed)
        model.fit(x, np.asarray(train["label"])[keep], X_val=_gbt_features(valid), y_val=np.asarray(valid["label"]))
        return cls(model)

    def score(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        return self.model.predict_proba(_gbt_features(columns))[:, 1]


# -- the evaluation -----------------------------------------------------------------------------------------------

@dataclass
class EvaluationResult:
    examples_uri: str
    examples_version: int
    test_rows: int
    test_users_with_positives: int
    train_rows: int
    config: dict[str, Any]
    scores: dict[str, dict[str, float]]  # model -> metric -> value
    thresholds: dict[str, float] = field(default_factory=dict)  # model -> basket threshold chosen on valid
    seconds: dict[str, float] = field(default_factory=dict)  # training time of each model trained here
    files: dict[str, str] = field(default_factory=dict)
    # The trained model's ROC curve on the test split, and its confusion matrix at its basket threshold.
    roc: dict[str, list[float]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat metric names as tracked: the trained model's unprefixed, each baseline's as `<baseline>_<metric>`."""
        return flat_metrics(self.scores)

    def table(self) -> str:
        lines = [f"test split of {self.examples_uri}@v{self.examples_version}: {self.test_rows} rows, "
                 f"{self.test_users_with_positives} users with a positive",
                 f"{'model':<12}" + "".join(f"{k:>14}" for k in METRICS)]
        for name, values in self.scores.items():
            lines.append(f"{name:<12}" + "".join(f"{values[k]:>14.4f}" for k in METRICS))
        return "\n".join(lines)


def flat_metrics(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """model -> metric -> value as tracked metric names (see `EvaluationResult.metrics`)."""
    return {(metric if model == TRAINED else f"{model}_{metric}"): value
            for model, values in scores.items() for metric, value in values.items()}


def load_test_split(examples_uri: str, version: int) -> dict[str, np.ndarray]:
    from kuberec.lake import feed

    return feed.load_table_arrays(examples_uri, FEED_COLUMNS, version=version, split="test").columns


def score_model(model, test: dict[str, np.ndarray]) -> dict[str, float]:
    """One model's metrics on the test split (`load_test_split`; no baselines, no basket threshold): what the
    champion gate compares."""
    from kuberec.widedeep import model as wd

    return metrics(test["user_id"], test["label"], wd.predict(model, test))


def evaluate_widedeep(examples_uri: str, out_dir: str | Path, *, model_dir: str | Path | None = None,
                      config=None, version: int | None = None, world_size: int = 1) -> EvaluationResult:
    """Score every model of the module docstring on the test split.

    `model_dir`: a `kuberec train widedeep` output directory (its config, worker count, steps per epoch and table
    version are used unless given); without it the wide & deep model is trained here too, as if by `world_size`
    workers.
    """
    from kuberec.lake import feed
    from kuberec.widedeep import model as wd
    from kuberec.widedeep.train import TrainResult, steps_per_epoch, train_widedeep_model

    out_dir = Path(out_dir)
    trained = None
    if model_dir is not None:
        trained = TrainResult.load(model_dir)
        config = config or trained.config
        version = trained.tables.get(examples_uri, version) if version is None else version
        world_size = trained.world_size
    config = config or WideDeepConfig()
    test = feed.load_table_arrays(examples_uri, FEED_COLUMNS, version=version, split="test")
    version = test.version
    valid = feed.load_table_arrays(examples_uri, FEED_COLUMNS, version=version, split="valid").columns
    # The train split is read whole only for popularity's two columns; the trees get a sample of about
    # GBT_MAX_ROWS rows, taken as the rows stream by (at full Instacart scale all columns would not fit in memory).
    train = feed.load_table_arrays(examples_uri, ("product_id", "label"), version=version, split="train").columns
    train_rows = len(train["label"])
    gbt_train = feed.load_table_arrays(examples_uri, FEED_COLUMNS, version=version, split="train",
                                       fraction=min(1.0, GBT_MAX_ROWS / train_rows), seed=config.seed).columns
    columns, users, labels = test.columns, test.columns["user_id"], test.columns["label"]
    # The same global batch and steps as the trained model (one process standing in for its workers).
    budget = config.replace(batch_size=config.batch_size * world_size,
                            steps_per_epoch=trained.steps_per_epoch if trained else config.steps_per_epoch)
    scorers: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    scratch = out_dir / "scratch"
    for kind in ("wide_deep", "wide", "deep"):
        if kind == "wide_deep" and trained is not None:
            model = wd.load_model(trained.model_dir)
        else:
            log.info("training the %s model here (%d steps per epoch of %d rows, at most %d epochs)", kind,
                     steps_per_epoch(budget, train_rows, 1), budget.batch_size, budget.epochs)
            started = time.perf_counter()
            _, model = train_widedeep_model(budget.replace(kind=kind), examples_uri, scratch, version=version,
                                            save=False)
            seconds[kind] = round(time.perf_counter() - started, 2)
        scorers[kind] = lambda rows, model=model: wd.predict(model, rows)
    popularity = Popularity.fit(train["product_id"], train["label"])
    scorers["popularity"] = lambda rows: popularity.score(rows["product_id"])
    log.info("fitting gradient-boosted trees on %d of the %d train rows (a uniform sample of about GBT_MAX_ROWS "
             "%d)", min(len(gbt_train["label"]), GBT_MAX_ROWS), train_rows, GBT_MAX_ROWS)
    started = time.perf_counter()
    gbt = GradientBoosted.fit(gbt_train, valid, seed=config.seed)
    seconds["gbt"] = round(time.perf_counter() - started, 2)
    scorers["gbt"] = gbt.score
    results, thresholds, test_scores = {}, {}, {}
    for name in SCORED_MODELS:
        started = time.perf_counter()
        thresholds[name] = best_threshold(valid["user_id"], valid["label"], scorers[name](valid))
        test_scores[name] = scorers[name](columns)
        results[name] = metrics(users, labels, test_scores[name], thresholds[name])
        log.info("%s: per-user AUC %.4f, MAP@10 %.4f (%d valid + %d test rows scored in %.0f s)", name,
                 results[name]["user_auc"], results[name]["map_at_10"], len(valid["label"]), len(labels),
                 time.perf_counter() - started)
    result = EvaluationResult(
        examples_uri=examples_uri, examples_version=version, test_rows=len(test),
        test_users_with_positives=int(pd.Series(labels).groupby(users).max().sum()), train_rows=train_rows,
        config=config.to_dict(), scores=results, thresholds=thresholds, seconds=seconds,
        roc=roc_curve(labels, test_scores[TRAINED]),
        confusion=confusion_matrix(labels, test_scores[TRAINED], thresholds[TRAINED]))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULT_FILE
    result.files = {"json": str(path)}
    path.write_text(json.dumps(dataclasses.asdict(result), indent=2))
    log.info("evaluation written to %s", path)
    return result
