"""The registered wide & deep ranker: an MLflow pyfunc of the trained model + the gold features it needs.

Request: one row per (user, candidate): `user_id` (long, required) and optionally `product_id` (long). A user whose
rows carry no product ids (or -1: integer columns cannot hold missing values) gets the default candidates: the
products they bought before plus the POPULAR_CANDIDATES most popular products. Param `k` (1..100, default 10).

Response: one row per (user, rank): `user_id`, `rank` (1 = best), `product_id`, `score`, `product_name`,
`fallback`. The model scores what it was trained on: a known user's candidates that are in their history, with
features of their whole history (the gold tables' serving snapshot, latest order included); `score` is its purchase
probability. Candidates the user never bought are not fed to the model (it never saw such rows): they are ranked
after the scored ones, by popularity, with `fallback` true and `score` the share of users who bought the product.
A user the model has no features for gets only such rows (the most popular products, or their candidates by
popularity).

The features are copied into the model's artifacts when it is logged, from the gold tables at the versions training
used (recorded on the run and the model version as lineage tags), so serving needs no access to the lake:
users.parquet (user features), products.parquet (product features, name, popularity) and history.parquet (each
user's previously bought products with their user/product features). Bad requests raise `WideDeepInputError`, an
`MlflowException` with INVALID_PARAMETER_VALUE (HTTP 400 in MLflow's scoring server) naming the row and the problem.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import mlflow.pyfunc
import numpy as np
import pandas as pd

from kuberec import tracking
from kuberec.champion import ChampionDecision
from kuberec.ingest.instacart_features import (
    PRODUCT_FEATURES,
    PRODUCT_TABLE,
    UP_FEATURES,
    USER_FEATURES,
    USER_PRODUCT_TABLE,
    USER_TABLE,
)
from kuberec.model_input import MAX_K, ModelInputError, checked_params, parse_k
from kuberec.settings import Settings
from kuberec.widedeep.config import EXPERIMENT, REGISTERED_NAME

log = logging.getLogger(__name__)

ARTIFACT_NAME = "model"
DEFAULT_K = 10
MAX_ROWS = 10_000  # rows per request
POPULAR_CANDIDATES = 50
FEATURES_FILE = "features.json"
REQUIREMENTS = ("mlflow", "tensorflow", "tf-keras", "numpy", "pandas", "pyarrow")


class WideDeepInputError(ModelInputError):
    """A wide & deep request the model cannot answer."""


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("long", "user_id"), ColSpec("long", "product_id", required=False)])
    outputs = Schema([ColSpec("long", "user_id"), ColSpec("long", "rank"), ColSpec("long", "product_id"),
                      ColSpec("double", "score"), ColSpec("string", "product_name"), ColSpec("boolean", "fallback")])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("k", "long", DEFAULT_K)]))


# -- features captured from the lake ------------------------------------------------------------------------------

def capture_features(settings: Settings, tables: Mapping[str, int], out: Path) -> dict[str, int]:
    """Write users/products/history parquet files from the gold tables at the versions in `tables` ({uri: v});
    returns {uri: version} of everything read (the products table's names come from the bronze products table)."""
    from kuberec.ingest.instacart import BRONZE_TABLES
    from kuberec.lake import feed
    from kuberec.lake.delta import table_version

    def version_of(name: str) -> tuple[str, int | None]:
        uri = settings.table_uri(name)
        return uri, tables.get(uri)

    out.mkdir(parents=True, exist_ok=True)
    read: dict[str, int] = {}

    def load(name: str, columns, split=None) -> pd.DataFrame:
        uri, version = version_of(name)
        arrays = feed.load_table_arrays(uri, columns, version=version, split=split)
        read[uri] = arrays.version
        return pd.DataFrame(arrays.columns)

    users = load(USER_TABLE, ("user_id", *USER_FEATURES)).sort_values("user_id")
    products = load(PRODUCT_TABLE, ("product_id", "aisle_id", "department_id", *PRODUCT_FEATURES))
    history = load(USER_PRODUCT_TABLE, ("user_id", "product_id", *UP_FEATURES)).sort_values(["user_id", "product_id"])
    names_uri = settings.table_uri(BRONZE_TABLES["products.csv"])
    names = feed.load_table_arrays(names_uri, ("product_id", "product_name"), version=table_version(names_uri))
    read[names_uri] = names.version
    buyers = history.groupby("product_id")["user_id"].nunique()
    products = (products.merge(pd.DataFrame(names.columns), on="product_id", how="left")
                .assign(popularity=lambda f: f["product_id"].map(buyers).fillna(0) / max(len(users), 1),
                        product_name=lambda f: f["product_name"].fillna("").astype(str))
                .sort_values("product_id"))
    users.to_parquet(out / "users.parquet", index=False)
    products.to_parquet(out / "products.parquet", index=False)
    history.to_parquet(out / "history.parquet", index=False)
    (out / FEATURES_FILE).write_text(json.dumps({"tables": read, "users": len(users), "products": len(products),
                                                 "history_rows": len(history)}, indent=2))
    return read


# -- request parsing ----------------------------------------------------------------------------------------------

def _integer(value: Any, column: str, row: int, missing_ok: bool) -> int | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        if missing_ok:
            return None
        raise WideDeepInputError(f"row {row}: {column} is missing")
    try:
        number = float(value)
    except (TypeError, ValueError) as err:
        raise WideDeepInputError(f"row {row}: {column} {value!r} is not an integer") from err
    if not number.is_integer():
        raise WideDeepInputError(f"row {row}: {column} {value!r} is not an integer")
    if number < 0:
        if missing_ok and number == -1:
            return None
        raise WideDeepInputError(f"row {row}: {column} must be >= 0" + (" (-1: none)" if missing_ok else ""))
    return int(number)


def parse_requests(model_input: Any) -> list[tuple[int, list[int], list[int]]]:
    """[(user_id, candidate product ids (empty: defaults), their request rows)] in order of first appearance."""
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    if "user_id" not in frame.columns or frame.empty:
        raise WideDeepInputError("no requests: send rows with a user_id column (and optionally product_id)")
    if len(frame) > MAX_ROWS:
        raise WideDeepInputError(f"{len(frame)} rows in one request; at most {MAX_ROWS}")
    products = frame["product_id"].tolist() if "product_id" in frame.columns else [None] * len(frame)
    requests: dict[int, tuple[list[int], list[int]]] = {}
    for row, (user_cell, product_cell) in enumerate(zip(frame["user_id"].tolist(), products)):
        user = _integer(user_cell, "user_id", row, missing_ok=False)
        product = _integer(product_cell, "product_id", row, missing_ok=True)
        candidates, rows = requests.setdefault(user, ([], []))
        if product is not None and product not in candidates:
            candidates.append(product)
        rows.append(row)
    return [(user, candidates, rows) for user, (candidates, rows) in requests.items()]


def parse_params(params: Mapping[str, Any] | None) -> int:
    return parse_k(checked_params(params, ("k",)), DEFAULT_K, MAX_K)


# -- the model ------------------------------------------------------------------------------------------------------

class WideDeepRanker(mlflow.pyfunc.PythonModel):
    """pyfunc: user ids (+ optional candidates) -> top-k products. See the module docstring."""

    def load_context(self, context) -> None:
        from kuberec.widedeep.model import load_model

        self.model = load_model(context.artifacts["model"])
        self.load_features(Path(context.artifacts["features"]))

    def load_features(self, path: Path) -> None:
        users = pd.read_parquet(path / "users.parquet")
        products = pd.read_parquet(path / "products.parquet")
        history = pd.read_parquet(path / "history.parquet")
        self.user_ids = users["user_id"].to_numpy(np.int64)
        self.user_features = users[list(USER_FEATURES)].to_numpy(np.float32)
        self.product_ids = products["product_id"].to_numpy(np.int64)
        self.product_features = products[list(PRODUCT_FEATURES)].to_numpy(np.float32)
        self.product_aisle = products["aisle_id"].to_numpy(np.int32)
        self.product_department = products["department_id"].to_numpy(np.int32)
        self.product_names = products["product_name"].to_numpy(object)
        self.popularity = products["popularity"].to_numpy(np.float64)
        # Most popular first; ties by product id so the order is deterministic.
        self.popular = np.lexsort((self.product_ids, -self.popularity))[:POPULAR_CANDIDATES]
        self.history_users = history["user_id"].to_numpy(np.int64)
        self.history_products = history["product_id"].to_numpy(np.int64)
        self.history_features = history[list(UP_FEATURES)].to_numpy(np.float32)
        log.info("loaded wide & deep ranker: %d users, %d products, %d history rows", len(self.user_ids),
                 len(self.product_ids), len(self.history_users))

    def _product_positions(self, product_ids: list[int], rows: list[int]) -> np.ndarray:
        ids = np.asarray(product_ids, np.int64)
        pos = np.clip(np.searchsorted(self.product_ids, ids), 0, len(self.product_ids) - 1)
        unknown = self.product_ids[pos] != ids
        if unknown.any():
            bad = ids[unknown].tolist()
            raise WideDeepInputError(f"rows {rows}: unknown product_id(s) {bad[:10]}; the model knows "
                                     f"{len(self.product_ids)} products")
        return pos

    def rank_user(self, user: int, candidates: list[int], rows: list[int], k: int) -> pd.DataFrame:
        from kuberec.widedeep.model import predict

        u = int(np.searchsorted(self.user_ids, user))
        known = u < len(self.user_ids) and self.user_ids[u] == user
        start, stop = np.searchsorted(self.history_users, [user, user + 1]) if known else (0, 0)
        hist = self.history_products[start:stop]  # sorted: history.parquet is sorted by (user, product)
        if candidates:
            positions = self._product_positions(candidates, rows)
        else:
            bought = self._product_positions(hist.tolist(), rows) if len(hist) else np.empty(0, np.int64)
            positions = np.concatenate([bought, self.popular[~np.isin(self.popular, bought)]])
        pids = self.product_ids[positions]
        at = np.searchsorted(hist, pids)
        bought = (at < len(hist)) & (hist[np.minimum(at, max(len(hist) - 1, 0))] == pids) if len(hist) else \
            np.zeros(len(pids), bool)
        scores = self.popularity[positions].copy()
        if bought.any():
            scored = positions[bought]
            columns = {"user_id": np.full(len(scored), user, np.int64), "product_id": pids[bought],
                       "aisle_id": self.product_aisle[scored], "department_id": self.product_department[scored]}
            numeric = np.concatenate([np.repeat(self.user_features[u][None], len(scored), 0),
                                      self.product_features[scored],
                                      self.history_features[start:stop][at[bought]]], axis=1)
            for i, name in enumerate((*USER_FEATURES, *PRODUCT_FEATURES, *UP_FEATURES)):
                columns[name] = numeric[:, i]
            scores[bought] = predict(self.model, columns)
        # Model-scored history products first, then the rest by popularity; ties by product id.
        order = np.lexsort((pids, -scores, ~bought))[:k]
        return pd.DataFrame({"user_id": np.full(len(order), user, np.int64),
                             "rank": np.arange(1, len(order) + 1, dtype=np.int64),
                             "product_id": pids[order],
                             "score": scores[order].astype(np.float64),
                             "product_name": self.product_names[positions][order],
                             "fallback": ~bought[order]})

    def predict(self, context, model_input, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
        k = parse_params(params)
        frames = [self.rank_user(user, candidates, rows, k) for user, candidates, rows in parse_requests(model_input)]
        return pd.concat(frames, ignore_index=True)


# -- logging and registering ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegisteredWideDeepModel:
    name: str
    version: int
    run_id: str
    tables: dict[str, int]  # every Delta table the model's artifacts were read from
    champion: bool
    decision: ChampionDecision | None = None  # the champion gate's, when a pipeline step registered it

    @property
    def model_uri(self) -> str:
        return tracking.model_uri(self.name, version=self.version)


def log_widedeep_model(settings: Settings, train_dir: str | Path, *, name: str = REGISTERED_NAME,
                       set_champion: bool | None = None, experiment: str = EXPERIMENT,
                       evaluation: Mapping[str, float] | None = None, run_name: str | None = None,
                       tables: Mapping[str, int] | None = None,
                       tags: Mapping[str, str] | None = None) -> RegisteredWideDeepModel:
    """Log a `kuberec train widedeep` output as a pyfunc with its features, register it, maybe make it champion.

    Runs inside the active MLflow run if there is one (`kuberec.widedeep.steps.register`: the training run), else in
    a new run of `experiment`. `evaluation` (`EvaluationResult.metrics()`) is logged as metrics of
    the logged model. `set_champion`: True moves `champion` to the new version, False
    leaves it, None sets it only when there is no champion yet. `tables` ({uri: version}): the gold build whose
    features the ranker serves with (default: the one it trained on). `tags`: more tags of the model version.
    """
    import mlflow

    from kuberec.widedeep.train import TrainResult, run_params

    trained = TrainResult.load(train_dir)
    tracking.configure(settings)
    with tempfile.TemporaryDirectory(prefix="kuberec-widedeep-") as tmp:
        features_dir = Path(tmp) / "features"
        read = capture_features(settings, tables or trained.tables, features_dir)
        lineage = {**trained.tables, **read}
        runs = (contextlib.nullcontext() if mlflow.active_run() else
                tracking.start_run(settings, experiment, run_name=run_name or "register-widedeep", lineage=lineage))
        with runs:
            run = mlflow.active_run()
            tracking.record_lineage(lineage)
            tracking.log_params(run_params(trained.config, trained.world_size))
            tracking.log_metrics({"train_examples": trained.train_examples,
                                  "final_train_loss": trained.history[-1]["loss"] if trained.history else 0.0})
            info = mlflow.pyfunc.log_model(
                name=ARTIFACT_NAME, python_model=WideDeepRanker(),
                artifacts={"model": str(trained.model_dir), "features": str(features_dir)},
                signature=signature(), pip_requirements=tracking.pinned_requirements(REQUIREMENTS))
            if evaluation:  # linked to the logged model, so the registered version shows how it scored
                mlflow.log_metrics(dict(evaluation), model_id=info.model_id)
            run_id = run.info.run_id
    version, champion = tracking.register_and_promote(
        settings, info.model_uri, name, set_champion=set_champion,
        tags={**tracking.lineage_tags(lineage), **(tags or {})},
        description=f"wide & deep ({trained.config.kind}) trained on {trained.examples_uri}"
                    f"@v{trained.tables.get(trained.examples_uri)}")
    log.info("registered %s version %s%s", name, version.version, " as champion" if champion else "")
    return RegisteredWideDeepModel(name=name, version=int(version.version), run_id=run_id, tables=lineage,
                                   champion=champion)


def load_ranker(settings: Settings, name: str = REGISTERED_NAME, *, version: int | str | None = None,
                alias: str | None = None) -> tuple["mlflow.pyfunc.PyFuncModel", Any]:
    """(pyfunc model, its ModelVersion) for a registered version or alias (default: champion)."""
    model_version = tracking.get_version(settings, name, version=version, alias=alias)
    tracking.configure(settings)
    return mlflow.pyfunc.load_model(tracking.model_uri(name, version=model_version.version)), model_version
