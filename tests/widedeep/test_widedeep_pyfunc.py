"""The wide & deep pyfunc through a real MLflow server: log -> register -> load models:/name@champion -> predict."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from kuberec import feed, tracking
from kuberec.ingest.instacart_features import EXAMPLES_TABLE, USER_PRODUCT_TABLE, USER_TABLE
from kuberec.model_input import ModelInputError
from kuberec.widedeep.pyfunc import POPULAR_CANDIDATES, load_ranker, log_widedeep_model

# Its own name: the session's MLflow server is shared with the serving tests, which register kuberec-widedeep.
NAME = "test-widedeep-pyfunc"


@pytest.fixture(scope="module")
def registered(gold, trained, mlflow_server):
    settings = dataclasses.replace(gold, mlflow_tracking_uri=mlflow_server.url)
    registered = log_widedeep_model(settings, trained, name=NAME)
    model, version = load_ranker(settings, NAME)  # models:/<NAME>@champion
    return settings, registered, model, version


def test_registered_as_champion_with_lineage(registered):
    settings, info, _, version = registered
    assert info.name == NAME and info.champion and int(version.version) == info.version
    lineage = tracking.parse_lineage(version.tags)
    assert {EXAMPLES_TABLE, USER_TABLE, "instacart_gold_product_features"} <= set(lineage)
    assert lineage[EXAMPLES_TABLE][1] == info.tables[settings.table_uri(EXAMPLES_TABLE)]


def _history(settings) -> pd.DataFrame:
    return pd.DataFrame(feed.load_table_arrays(settings.table_uri(USER_PRODUCT_TABLE),
                                               ("user_id", "product_id", "up_cnt_orders")).columns)


def test_known_user_gets_their_history_scored_then_popular_products(registered):
    settings, _, model, _ = registered
    history = _history(settings)
    sizes = history.groupby("user_id").size()
    user = int(sizes[sizes.between(5, 40)].index[0])
    bought = set(history.loc[history.user_id == user, "product_id"].tolist())
    out = model.predict(pd.DataFrame({"user_id": [user]}), params={"k": 5})
    assert list(out.columns) == ["user_id", "rank", "product_id", "score", "product_name", "fallback"]
    assert out["user_id"].tolist() == [user] * 5 and out["rank"].tolist() == [1, 2, 3, 4, 5]
    assert not out["fallback"].any() and out["score"].is_monotonic_decreasing
    assert out["product_name"].str.len().min() > 0
    # Every product of their history (latest order included), scored by the model, then never-bought popular
    # products ranked after them by popularity and flagged: the model never saw such rows.
    everything = model.predict(pd.DataFrame({"user_id": [user]}), params={"k": 100})
    scored = everything[~everything["fallback"]]
    assert set(scored["product_id"]) == bought and scored["rank"].max() == len(bought)
    rest = everything[everything["fallback"]]
    assert len(rest) > 0 and not set(rest["product_id"]) & bought and rest["score"].is_monotonic_decreasing
    # Given candidates are the only ones ranked, with the same scores.
    candidates = sorted(bought)[:3]
    chosen = model.predict(pd.DataFrame({"user_id": [user] * 3, "product_id": candidates}), params={"k": 10})
    assert sorted(chosen["product_id"]) == candidates
    row = everything.set_index("product_id").loc[candidates, "score"].to_numpy()
    np.testing.assert_allclose(chosen.set_index("product_id").loc[candidates, "score"].to_numpy(), row, rtol=1e-6)


def test_a_heavy_rebuyer_gets_their_usual_products(registered):
    """The user with the longest history: their top 10 are mostly the products they bought most often."""
    settings, _, model, _ = registered
    history = _history(settings)
    orders = pd.DataFrame(feed.load_table_arrays(settings.table_uri(USER_TABLE), (
        "user_id", "user_cnt_distinct_orders_last_360_days")).columns)
    user = int(orders.sort_values("user_cnt_distinct_orders_last_360_days").iloc[-1]["user_id"])
    mine = history[history.user_id == user].sort_values("up_cnt_orders", ascending=False)
    usual = set(mine["product_id"].head(20))
    top = model.predict(pd.DataFrame({"user_id": [user]}), params={"k": 10})
    assert len(set(top["product_id"]) & usual) >= 7, (top, mine.head(20))


def test_unknown_user_gets_flagged_popularity_fallback(registered):
    _, _, model, _ = registered
    out = model.predict(pd.DataFrame({"user_id": [987654321]}), params={"k": 4})
    assert len(out) == 4 and out["fallback"].all()
    assert out["score"].is_monotonic_decreasing and out["score"].iloc[0] > 0
    assert POPULAR_CANDIDATES >= 4


@pytest.mark.parametrize("frame, params, message", [
    ({"product_id": [1]}, {}, "send rows with a user_id column"),
    ({"user_id": ["abc"]}, {}, "row 0: user_id 'abc' is not an integer"),
    ({"user_id": [1, -3]}, {}, "row 1: user_id must be >= 0"),
    ({"user_id": [1], "product_id": [10 ** 9]}, {}, "unknown product_id"),
    ({"user_id": [1]}, {"k": 0}, "k must be between 1 and 100"),
])
def test_bad_requests_are_clear_errors(registered, frame, params, message):
    _, _, model, _ = registered
    with pytest.raises(ModelInputError, match=message):
        model.unwrap_python_model().predict(None, pd.DataFrame(frame), params=params)
