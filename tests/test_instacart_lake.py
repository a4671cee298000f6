"""Instacart through real Spark + Delta: bronze ingestion, gold features with hand-computed answers, labels,
splits, lineage and idempotence."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from kuberec.datasets.instacart import InstacartDataError
from kuberec.datasets.instacart_synth import generate
from kuberec.errors import DataError
from kuberec.ingest import instacart_features as gold
from kuberec.ingest.instacart import BRONZE_TABLES, ingest_instacart, last_commit_metadata
from kuberec.lake.delta import table_exists, table_version
from kuberec.settings import Settings

# A hand-built dataset whose features are worked out below. Orders with known contents: user 1 101..108 (108 the
# train order), user 2 201..204 (204 train), user 3 301, 302 (303 is a test order: contents withheld).
# days_prior = days from an order to the snapshot's last history order. In the serving snapshot (whole history):
#   user 1: 108: 0, 107: 5, 106: 35, 105: 65, 104: 95, 103: 125, 102: 155, 101: 185
#   user 2: 204: 0, 203: 3, 202: 17, 201: 31
#   user 3: 302: 0, 301: 20
# Products: 10 Banana, 20 Apple (aisle 1 fruit, dept 1 produce), 30 Milk (aisle 2, dept 2), 40 Brie (aisle 3,
# dept 2), 50 Kiwi (aisle 1, never ordered).
HAND = {
    "departments.csv": "department_id,department\n1,produce\n2,dairy\n",
    "aisles.csv": "aisle_id,aisle\n1,fruit\n2,milk\n3,cheese\n",
    "products.csv": ("product_id,product_name,aisle_id,department_id\n10,Banana,1,1\n20,Apple,1,1\n"
                     "30,Milk,2,2\n40,\"Brie, double cream\",3,2\n50,Kiwi,1,1\n"),
    "orders.csv": (
        "order_id,user_id,eval_set,order_number,order_dow,order_hour_of_day,days_since_prior_order\n"
        "101,1,prior,1,0,10,\n102,1,prior,2,1,10,30.0\n103,1,prior,3,2,10,30.0\n104,1,prior,4,3,10,30.0\n"
        "105,1,prior,5,4,10,30.0\n106,1,prior,6,5,10,30.0\n107,1,prior,7,6,10,30.0\n108,1,train,8,0,10,5.0\n"
        "201,2,prior,1,1,9,\n202,2,prior,2,1,9,14.0\n203,2,prior,3,1,9,14.0\n204,2,train,4,1,9,3.0\n"
        "301,3,prior,1,2,18,\n302,3,prior,2,2,18,20.0\n303,3,test,3,2,18,12.0\n"
    ),
    "order_products__prior.csv": (
        "order_id,product_id,add_to_cart_order,reordered\n"
        "101,10,1,0\n101,40,2,0\n102,10,1,1\n103,10,1,1\n103,30,2,0\n104,30,1,1\n105,10,1,1\n106,20,1,0\n"
        "107,10,1,1\n107,30,2,1\n107,20,3,1\n"
        "201,30,1,0\n201,20,2,0\n202,30,1,1\n203,30,1,1\n203,20,2,1\n"
        "301,10,1,0\n302,10,1,1\n302,30,2,0\n"
    ),
    # User 2 buys Banana (10) for the first time in the final order: a positive that is not a candidate.
    "order_products__train.csv": "order_id,product_id,add_to_cart_order,reordered\n"
                                 "108,10,1,1\n108,40,2,1\n204,30,1,1\n204,10,2,0\n",
}
SYNTH_USERS = 300
# As tests/conftest.py's SHARED_CACHE (a `conftest` import could resolve to another directory's conftest).
SHARED_CACHE = Path(os.environ.get("KUBEREC_CACHE",
                                   Path(__file__).resolve().parents[1] / ".kuberec" / "cache")).absolute()


def _settings(root: Path) -> Settings:
    return Settings(home=root / "home", cache_dir=SHARED_CACHE, spark_master="local[2]")


def _rows(spark, settings: Settings, table: str) -> list[dict]:
    return [r.asDict() for r in spark.read.format("delta").load(settings.table_uri(table)).collect()]


def _versions(settings: Settings, tables) -> dict[str, int]:
    return {t: table_version(settings.table_uri(t)) for t in tables}


def _hand_source(root: Path) -> Path:
    source = root / "instacart"
    source.mkdir(parents=True)
    for name, text in HAND.items():
        (source / name).write_text(text)
    return source


@pytest.fixture(scope="module")
def hand(spark, tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("hand")
    settings = _settings(root)
    ingest_instacart(settings, _hand_source(root), spark)
    gold.build_features(settings, spark)
    return settings


@pytest.fixture(scope="module")
def synth(spark, tmp_path_factory) -> tuple[Settings, Path]:
    root = tmp_path_factory.mktemp("synth")
    source = root / "instacart"
    generate(source, SYNTH_USERS, seed=11)
    settings = _settings(root)
    ingest_instacart(settings, source, spark)
    gold.build_features(settings, spark)
    return settings, source


def test_bronze_tables_keep_the_files_columns_and_types(spark, hand):
    orders = spark.read.format("delta").load(hand.table_uri(BRONZE_TABLES["orders.csv"]))
    assert [(f.name, f.dataType.simpleString()) for f in orders.schema.fields] == [
        ("order_id", "int"), ("user_id", "int"), ("eval_set", "string"), ("order_number", "int"),
        ("order_dow", "int"), ("order_hour_of_day", "int"), ("days_since_prior_order", "double")]
    assert orders.count() == 15
    assert orders.where("order_number = 1 AND days_since_prior_order IS NULL").count() == 3
    names = {r["product_id"]: r["product_name"] for r in _rows(spark, hand, BRONZE_TABLES["products.csv"])}
    assert names[40] == "Brie, double cream"  # a quoted field with a comma
    metadata = last_commit_metadata(hand.table_uri(BRONZE_TABLES["order_products__prior.csv"]))
    assert metadata["source_file"] == "order_products__prior.csv" and metadata["rows"] == 19
    assert len(metadata["sha256"]) == 64


def test_user_features_by_hand(spark, hand):
    """The serving snapshot: every order with known contents is history."""
    users = {r["user_id"]: r for r in _rows(spark, hand, gold.USER_TABLE)}
    assert set(users) == {1, 2, 3}
    expected = {
        # user 1: windows hold orders {107, 108}, {102..108}, {101..108}
        1: dict(orders=(2, 7, 8), products=(4, 4, 4), aisles=(3, 3, 3), departments=(2, 2, 2),
                reordered=(5 / 5, 9 / 11, 9 / 13), med_lines=1, med_days=30),
        # user 2: {202..204}, {201..204}, {201..204}; lines per order 2, 1, 2, 2; gaps 14, 14, 3
        2: dict(orders=(3, 4, 4), products=(3, 3, 3), aisles=(2, 2, 2), departments=(2, 2, 2),
                reordered=(4 / 5, 4 / 7, 4 / 7), med_lines=2, med_days=14),
        # user 3 (a test user: their last known order is 302): {301, 302} in every window
        3: dict(orders=(2, 2, 2), products=(2, 2, 2), aisles=(2, 2, 2), departments=(2, 2, 2),
                reordered=(1 / 3, 1 / 3, 1 / 3), med_lines=1, med_days=20),
    }
    for user, want in expected.items():
        row = users[user]
        for what in ("orders", "products", "aisles", "departments"):
            got = tuple(row[f"user_cnt_distinct_{what}_last_{w}_days"] for w in gold.WINDOWS)
            assert got == want[what], (user, what)
        got = [row[f"user_shr_reordered_last_{w}_days"] for w in gold.WINDOWS]
        assert got == pytest.approx(want["reordered"], rel=1e-6), user
        assert row["user_med_lines_per_order"] == want["med_lines"]
        assert row["user_med_days_since_prior_order"] == want["med_days"]
    assert list(users[1]) == ["user_id", *gold.USER_FEATURES]


def test_global_and_product_features_by_hand(spark, hand):
    (metrics,) = _rows(spark, hand, gold.GLOBAL_TABLE)
    assert list(metrics) == list(gold.GLOBAL_METRICS)
    expected_global = {
        "orders": (7, 13, 14),  # within 30 days: 107, 108, 202..204, 301, 302
        "users": (3, 3, 3),
        "products": (4, 4, 4),  # Brie again in 108; Kiwi never
        "aisles": (3, 3, 3),
        "departments": (2, 2, 2),
    }
    for what, values in expected_global.items():
        assert tuple(metrics[f"global_cnt_distinct_{what}_last_{w}_days"] for w in gold.WINDOWS) == values, what

    products = {r["product_id"]: r for r in _rows(spark, hand, gold.PRODUCT_TABLE)}
    assert set(products) == {10, 20, 30, 40, 50}
    assert (products[40]["aisle_id"], products[40]["department_id"]) == (3, 2)

    def shares(product: int, what: str) -> list[float]:
        return [products[product][f"product_shr_{what}_last_{w}_days"] for w in gold.WINDOWS]

    # Banana: all three users in every window; orders {107, 108, 204, 301, 302}, +{102, 103, 105}, +{101};
    # reordered lines 3 of 5, 6 of 8, 6 of 9.
    assert shares(10, "distinct_users") == pytest.approx([1.0] * 3)
    assert shares(10, "distinct_orders") == pytest.approx([5 / 7, 8 / 13, 9 / 14])
    assert shares(10, "reordered") == pytest.approx([3 / 5, 6 / 8, 6 / 9])
    # Milk: all three users; orders {107, 202, 203, 204, 302}, +{103, 104, 201}; reordered 4/5, 5/8, 5/8.
    assert shares(30, "distinct_users") == pytest.approx([1.0] * 3)
    assert shares(30, "distinct_orders") == pytest.approx([5 / 7, 8 / 13, 8 / 14])
    assert shares(30, "reordered") == pytest.approx([4 / 5, 5 / 8, 5 / 8])
    # Brie: user 1's 101 (185 days) and 108 (0 days, a reorder).
    assert shares(40, "distinct_users") == pytest.approx([1 / 3] * 3)
    assert shares(40, "distinct_orders") == pytest.approx([1 / 7, 1 / 13, 2 / 14])
    assert shares(40, "reordered") == pytest.approx([1, 1, 1 / 2])
    # Kiwi was never ordered: a row of zeros, not a missing row.
    assert all(products[50][c] == 0 for c in gold.PRODUCT_FEATURES)


def test_examples_are_time_shifted_snapshots_by_hand(spark, hand):
    examples = spark.read.format("delta").load(hand.table_uri(gold.EXAMPLES_TABLE))
    assert examples.columns == [*gold.ID_COLUMNS, *gold.CATEGORICAL_FEATURES, *gold.NUMERIC_FEATURES, "label",
                                "split", "snapshot"]
    types = {f.name: f.dataType.simpleString() for f in examples.schema.fields}
    assert all(types[c] == "float" for c in gold.NUMERIC_FEATURES)
    assert types["label"] == "int" and types["user_id"] == "int" and types["split"] == "string"
    rows = {(r["snapshot"], r["user_id"], r["product_id"]): r for r in (r.asDict() for r in examples.collect())}
    # Snapshot s predicts the (s+1)-th last known order from the orders before it; candidates are the products in
    # that history (a product first bought in the target order is not one: Apple in 106, Banana in 204).
    labels = {
        (0, 1, 10): 1, (0, 1, 20): 0, (0, 1, 30): 0, (0, 1, 40): 1,  # target 108
        (1, 1, 10): 1, (1, 1, 20): 1, (1, 1, 30): 1, (1, 1, 40): 0,  # target 107
        (2, 1, 10): 0, (2, 1, 30): 0, (2, 1, 40): 0,  # target 106 (Apple only, a first purchase)
        (3, 1, 10): 1, (3, 1, 30): 0, (3, 1, 40): 0,  # target 105
        (0, 2, 20): 0, (0, 2, 30): 1,  # target 204
        (1, 2, 20): 1, (1, 2, 30): 1,  # target 203
        (2, 2, 20): 0, (2, 2, 30): 1,  # target 202; no snapshot 3: order 201 has no history
        (0, 3, 10): 1,  # user 3's last known order is 302 (303 is withheld)
    }
    assert {k: r["label"] for k, r in rows.items()} == labels
    # Prior-order targets are training rows; the train orders are valid or test, a whole user at a time.
    assert {k: r["split"] for k, r in rows.items() if r["split"] == "train"}.keys() == {
        k for k in labels if k[0] > 0 or k[1] == 3}
    assert {rows[(0, 1, p)]["split"] for p in (10, 20, 30, 40)} in ({"valid"}, {"test"})
    # Snapshot 0 of user 1: history 101..107, days_prior 107: 0, 106: 30, ..., 101: 180; their orders in the
    # windows: 2, 7, 7.
    up = {  # (orders with it, shares of the user's orders in each window, days since, orders since its last purchase)
        (0, 1, 10): (5, (1 / 2, 5 / 7, 5 / 7), 0, 0),
        (0, 1, 20): (2, (2 / 2, 2 / 7, 2 / 7), 0, 0),
        (0, 1, 30): (3, (1 / 2, 3 / 7, 3 / 7), 0, 0),
        (0, 1, 40): (1, (0, 1 / 7, 1 / 7), 180, 6),
        # snapshot 2 of user 1: history 101..105 (days 120, 90, 60, 30, 0)
        (2, 1, 30): (2, (1 / 2, 2 / 5, 2 / 5), 30, 1),
        (2, 2, 20): (1, (1, 1, 1), 0, 0),
    }
    for key, (count, shares, days, orders_since) in up.items():
        row = rows[key]
        assert row["up_cnt_orders"] == count, key
        assert [row[f"up_shr_orders_last_{w}_days"] for w in gold.WINDOWS] == pytest.approx(shares), key
        assert row["up_days_since_last_purchase"] == days, key
        assert row["up_orders_since_last_purchase"] == orders_since, key
    # User and product features are the snapshot's own: 7 orders of user 1 within 180 days of 107, 5 before 106.
    assert rows[(0, 1, 40)]["user_cnt_distinct_orders_last_180_days"] == 7
    assert rows[(2, 1, 10)]["user_cnt_distinct_orders_last_360_days"] == 5
    # Milk in snapshot 0: lines within 30 days of each user's cut-off: 107 (u1) and 201..203 (u2); user 3's history
    # (301) has none; reordered 3 of 4.
    assert rows[(0, 2, 30)]["product_shr_reordered_last_30_days"] == pytest.approx(3 / 4)
    assert (rows[(0, 1, 40)]["aisle_id"], rows[(0, 1, 40)]["department_id"]) == (3, 2)


def test_user_products_are_the_serving_history_by_hand(spark, hand):
    rows = {(r["user_id"], r["product_id"]): r for r in _rows(spark, hand, gold.USER_PRODUCT_TABLE)}
    assert set(rows) == {(1, 10), (1, 20), (1, 30), (1, 40), (2, 10), (2, 20), (2, 30), (3, 10), (3, 30)}
    assert list(rows[(1, 10)]) == [*gold.ID_COLUMNS, *gold.UP_FEATURES]
    # Brie: bought in 101 and 108 (the latest known order); Apple last in 107, one order before 108.
    assert (rows[(1, 40)]["up_cnt_orders"], rows[(1, 40)]["up_days_since_last_purchase"]) == (2, 0)
    assert [rows[(1, 40)][f"up_shr_orders_last_{w}_days"] for w in gold.WINDOWS] == pytest.approx([1 / 2, 1 / 7,
                                                                                                  2 / 8])
    assert (rows[(1, 20)]["up_days_since_last_purchase"], rows[(1, 20)]["up_orders_since_last_purchase"]) == (5, 1)
    assert rows[(2, 10)]["up_cnt_orders"] == 1  # first bought in the train order: history for serving


def test_gold_commits_record_their_bronze_versions(hand):
    bronze = _versions(hand, BRONZE_TABLES.values())
    for table in gold.GOLD_TABLES:
        metadata = last_commit_metadata(hand.table_uri(table))
        assert metadata["bronze"] == bronze and metadata["features_version"] == gold.FEATURES_VERSION
        assert metadata["params"]["split_salt"] == gold.SPLIT_SALT


def _truth(source: Path) -> pd.DataFrame:
    """Snapshots, candidates, labels and splits computed directly from the CSV files (pandas, not Spark)."""
    orders = pd.read_csv(source / "orders.csv")
    lines = pd.concat([pd.read_csv(source / name) for name in ("order_products__prior.csv",
                                                               "order_products__train.csv")])
    known = orders[orders.eval_set != "test"]
    lines = lines.merge(known[["order_id", "user_id", "order_number"]], on="order_id")
    last = known.groupby("user_id")["order_number"].max()
    frames = []
    for shift in range(gold.TRAIN_SHIFTS + 1):
        target = (last - shift).rename("target").reset_index()
        target = target[target.target >= 2]
        history = lines.merge(target, on="user_id")
        candidates = history.loc[history.order_number < history.target, ["user_id", "product_id"]].drop_duplicates()
        bought = history.loc[history.order_number == history.target, ["user_id", "product_id"]].assign(label=1)
        eval_set = target.merge(known, left_on=["user_id", "target"], right_on=["user_id", "order_number"])
        frames.append(candidates.merge(bought, on=["user_id", "product_id"], how="left").fillna({"label": 0})
                      .merge(eval_set[["user_id", "eval_set"]], on="user_id").assign(snapshot=shift))
    return pd.concat(frames).astype({"label": int})


def _examples(spark, settings: Settings) -> pd.DataFrame:
    return spark.read.format("delta").load(settings.table_uri(gold.EXAMPLES_TABLE)) \
        .select("snapshot", "user_id", "product_id", "label", "split").toPandas()


KEY = ["snapshot", "user_id", "product_id"]


def test_labels_match_the_files(spark, synth):
    settings, source = synth
    got = _examples(spark, settings).sort_values(KEY).reset_index(drop=True)
    want = _truth(source).sort_values(KEY).reset_index(drop=True)
    assert len(got) == len(want) and got.user_id.nunique() == SYNTH_USERS
    assert (got[[*KEY, "label"]].to_numpy() == want[[*KEY, "label"]].to_numpy()).all()
    assert ((got.split == "train") == (want.eval_set == "prior")).all()
    assert sorted(got.snapshot.unique()) == list(range(gold.TRAIN_SHIFTS + 1))
    assert 0.03 < got.label.mean() < 0.3


def test_split_holds_out_whole_users_final_orders(spark, synth):
    examples = _examples(spark, synth[0])
    assert not examples.duplicated(KEY).any()
    assert set(examples.split) == set(gold.SPLITS)
    final = examples[examples.snapshot == 0]
    per_user = final.groupby("user_id")["split"].agg(["nunique", "first"])
    assert (per_user["nunique"] == 1).all(), "a user's final order is in one split"
    assert set(per_user["first"]) == {"valid", "test"}
    share = (per_user["first"] == "valid").mean()
    assert abs(share - 0.5) < 4 * math.sqrt(0.25 / len(per_user)), share  # four binomial standard deviations
    assert (examples.loc[examples.snapshot > 0, "split"] == "train").all()


def test_rerun_commits_nothing(spark, synth):
    settings, source = synth
    tables = [*BRONZE_TABLES.values(), *gold.GOLD_TABLES]
    before = _versions(settings, tables)
    result = ingest_instacart(settings, source, spark)
    assert result.written == [] and len(result.unchanged) == 6
    assert gold.build_features(settings, spark).written is False
    assert _versions(settings, tables) == before


def test_bad_input_writes_nothing(spark, synth, tmp_path):
    settings, source = synth
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    lines = (bad / "order_products__prior.csv").read_text().splitlines()
    lines[3] = lines[3].split(",", 1)[0] + ",99999999,1,0"  # a product that does not exist
    (bad / "order_products__prior.csv").write_text("\n".join(lines) + "\n")
    before = _versions(settings, BRONZE_TABLES.values())
    with pytest.raises(InstacartDataError) as caught:
        ingest_instacart(settings, bad, spark)
    assert (caught.value.file, caught.value.row, caught.value.column) == ("order_products__prior.csv", 3,
                                                                         "product_id")
    assert _versions(settings, BRONZE_TABLES.values()) == before
    # Into an empty lake: no table at all.
    empty = _settings(tmp_path / "empty")
    with pytest.raises(InstacartDataError):
        ingest_instacart(empty, bad, spark)
    assert not any(table_exists(empty.table_uri(t)) for t in BRONZE_TABLES.values())
    with pytest.raises(DataError, match="run `kuberec ingest instacart` first"):
        gold.build_features(empty, spark)


def test_changed_input_replaces_tables_and_keeps_splits(spark, synth):
    """Drop the last user: three files change, their tables get one new version each, the gold tables are rebuilt
    from the new versions, and every remaining pair keeps its split."""
    settings, source = synth
    before_examples = _examples(spark, settings)
    before = _versions(settings, [*BRONZE_TABLES.values(), *gold.GOLD_TABLES])
    orders = pd.read_csv(source / "orders.csv")
    gone = orders.user_id.max()
    gone_orders = set(orders.loc[orders.user_id == gone, "order_id"])
    orders[orders.user_id != gone].to_csv(source / "orders.csv", index=False)
    for name in ("order_products__prior.csv", "order_products__train.csv"):
        lines = pd.read_csv(source / name)
        lines[~lines.order_id.isin(gone_orders)].to_csv(source / name, index=False)

    result = ingest_instacart(settings, source, spark)
    changed = {BRONZE_TABLES[n] for n in ("orders.csv", "order_products__prior.csv", "order_products__train.csv")}
    assert set(result.written) == changed
    after = _versions(settings, [*BRONZE_TABLES.values(), *gold.GOLD_TABLES])
    for table in BRONZE_TABLES.values():
        assert after[table] == before[table] + (1 if table in changed else 0), table

    assert gold.build_features(settings, spark).written is True
    after = _versions(settings, [*BRONZE_TABLES.values(), *gold.GOLD_TABLES])
    for table in gold.GOLD_TABLES:
        assert after[table] == before[table] + 1
        assert last_commit_metadata(settings.table_uri(table))["bronze"] == {
            t: after[t] for t in BRONZE_TABLES.values()}
    examples = _examples(spark, settings)
    assert gone not in set(examples.user_id)
    kept = before_examples[before_examples.user_id != gone]
    merged = kept.merge(examples, on=KEY, suffixes=("_before", "_after"))
    assert len(merged) == len(kept) == len(examples)
    assert (merged.split_before == merged.split_after).all() and (merged.label_before == merged.label_after).all()


def _in_threads(work, count: int = 2) -> list:
    """Run `work()` in `count` threads at once; returns what each returned, raising the first error."""
    results, errors = [], []

    def run():
        try:
            results.append(work())
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    if errors:
        raise errors[0]
    return results


def test_features_during_an_ingestion_read_the_last_complete_one(spark, tmp_path, monkeypatch):
    """What a features run sees when it starts while an ingestion of changed files has written one table and not
    yet the other: it builds from the previous complete ingestion, not a mix; the next run builds from the new one.
    (The features run is called from inside the ingestion, which makes this interleaving certain.)"""
    from kuberec.ingest import instacart as bronze

    settings, source = _settings(tmp_path), _hand_source(tmp_path)
    ingest_instacart(settings, source, spark)
    first = bronze.latest_ingestion(settings)["bronze"]
    user_3_orders = ("301,", "302,", "303,")  # user 3 leaves: orders.csv and order_products__prior.csv change
    for name in ("orders.csv", "order_products__prior.csv"):
        (source / name).write_text("".join(line for line in HAND[name].splitlines(keepends=True)
                                           if not line.startswith(user_3_orders)))
    midway = []
    real_overwrite = bronze._overwrite_bronze

    def overwrite_then_build_features(*args):
        wrote = real_overwrite(*args)
        if not midway:
            midway.append(gold.build_features(settings, spark))
        return wrote

    monkeypatch.setattr(bronze, "_overwrite_bronze", overwrite_then_build_features)
    second = ingest_instacart(settings, source, spark)
    monkeypatch.undo()
    assert len(second.written) == 2 and second.versions[second.written[0]] == first[second.written[0]] + 1
    assert midway[0].written and midway[0].bronze == first  # the table already rewritten was not read
    assert 3 in set(_examples(spark, settings).user_id)

    after = gold.build_features(settings, spark)
    assert after.written and after.bronze == second.versions == bronze.latest_ingestion(settings)["bronze"]
    assert 3 not in set(_examples(spark, settings).user_id)


def _commit_metadata(settings: Settings, table: str) -> list[dict]:
    """The userMetadata of every commit of `table`, newest first."""
    from kuberec.lake.delta import history

    return [json.loads(entry["userMetadata"]) for entry in history(settings.table_uri(table))]


def test_two_ingestions_of_the_same_files_at_once_both_finish(spark, tmp_path, monkeypatch):
    """Both planned before either wrote (so both mean to write all six tables): both finish, each table holds its
    file's rows once, and the recorded ingestion points at commits of those files. (A run that checks a table just
    before the other's commit lands and starts its write just after may write the same file again: a second commit
    of the same rows, which the benchmark saw for 1 table in 2 runs; here both hold the same file.)"""
    from kuberec.ingest import instacart as bronze

    settings, source = _settings(tmp_path), _hand_source(tmp_path)
    both_planned = threading.Barrier(2, timeout=120)
    real_write = bronze.write_bronze

    def write_once_both_planned(*args):
        both_planned.wait()
        return real_write(*args)

    monkeypatch.setattr(bronze, "write_bronze", write_once_both_planned)
    results = _in_threads(lambda: ingest_instacart(settings, source, spark))
    assert sorted(len(r.written) + len(r.unchanged) for r in results) == [6, 6]
    recorded = bronze.latest_ingestion(settings)
    for file, table in BRONZE_TABLES.items():
        assert len(_rows(spark, settings, table)) == len(HAND[file].splitlines()) - 1, table
        assert {m["sha256"] for m in _commit_metadata(settings, table)} == {recorded["sha256"][file]}, table
        assert recorded["bronze"][table] == table_version(settings.table_uri(table))


def test_two_feature_builds_at_once_both_finish(spark, hand, tmp_path, monkeypatch):
    """Two features runs on the same bronze versions, both past the up-to-date check and with their frames
    computed before either writes: both finish, and each gold table holds this build only, equal to a single
    build (a table may get the same build twice; see the ingestion test above)."""
    settings = _settings(tmp_path)
    ingest_instacart(settings, _hand_source(tmp_path), spark)
    both_computed = threading.Barrier(2, timeout=300)
    real_build = gold.build_gold

    def build_then_wait(bronze_frames):
        frames = real_build(bronze_frames)
        both_computed.wait()
        return frames

    monkeypatch.setattr(gold, "build_gold", build_then_wait)
    results = _in_threads(lambda: gold.build_features(settings, spark))
    assert [r.written for r in results] == [True, True]
    wanted = gold.wanted_metadata(settings)
    for table in gold.GOLD_TABLES:
        assert all(m == wanted for m in _commit_metadata(settings, table)), table
    key = KEY + ["label", "split"]
    assert _examples(spark, settings).sort_values(key).reset_index(drop=True).equals(
        _examples(spark, hand).sort_values(key).reset_index(drop=True))
    for table in gold.GOLD_TABLES:
        assert len(_rows(spark, settings, table)) == len(_rows(spark, hand, table)), table


def test_cli_reports_bad_input_in_one_line(settings, tmp_path):
    source = tmp_path / "instacart"
    source.mkdir()
    for name, text in HAND.items():
        (source / name).write_text(text)
    text = HAND["orders.csv"].replace("105,1,prior,5,4,10,30.0", "105,1,prior,5,4,25,30.0")
    (source / "orders.csv").write_text(text)
    completed = subprocess.run([sys.executable, "-m", "kuberec.cli", "ingest", "instacart", "--source",
                                str(source)], capture_output=True, text=True, check=False)
    assert completed.returncode == 2
    assert "error: orders.csv row 5 (line 6), column order_hour_of_day: 25 is out of range [0, 23]" \
        in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (settings.home / "lake").exists()
