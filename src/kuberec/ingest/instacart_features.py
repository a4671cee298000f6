"""Spark job: bronze Instacart tables -> gold feature, label and split tables (`kuberec features instacart`).

Time-shifted examples, as the Instacart competition's winners built them: a user's orders with known contents are
1..m (m = the `train` order; for a `test` user, whose final order's contents are withheld, their last prior order).
A *snapshot* cuts a user's history just before a target order t: the history is orders 1..t-1, the label of a
candidate is whether the target order holds it, and every feature is computed from the history alone.

    snapshot s = 0, 1, ..., TRAIN_SHIFTS: target order t = m - s (examples; needs t >= 2)
    snapshot s = SERVING_SNAPSHOT (-1):  no target, history = all of 1..m (the feature tables serving reads)

So the pairs a model is trained on (targets m-1, m-2, ...) are the same pairs it is evaluated on (target m) and the
same pairs serving scores (history up to m): memorising a user x product pair pays, and no label leaks into a
feature. Features follow the wide & deep seed's feature notebook: user, product and global metrics over the 30, 180
and 360 days before the snapshot's cut-off, where an order's `days_prior` is the sum of days_since_prior_order over
the user's later history orders (0 for the last history order itself: the gap to the next order is unknown when
serving, so no feature uses it). Product and global metrics of a snapshot are over every user's history in that
snapshot.

Gold tables (`settings.table_uri(name)`); every numeric feature is FLOAT (float32), 0 where undefined (x/0):

instacart_gold_examples: one row per (snapshot >= 0, user, candidate product), the model's input. Partitioned by
  `split`.
    user_id INT, product_id INT            wide part: ids and their cross
    aisle_id INT, department_id INT        deep part: embeddings (CATEGORICAL_FEATURES)
    <NUMERIC_FEATURES> FLOAT               deep part: USER_FEATURES + PRODUCT_FEATURES + UP_FEATURES, in that order
    label INT                              1 if the snapshot's target order holds the product, else 0
    split STRING                           train | valid | test
    snapshot INT                           0 = the target is the user's last known order, 1 the one before, ...
  Candidates are the products in the snapshot's history (a product first bought in the target order is not a
  candidate, as in the seed). Split: a target that is a `prior` order -> train; the `train` order (snapshot 0 of a
  train user) -> valid when pmod(xxhash64(user_id, SPLIT_SALT), 10,000) < 5,000, else test. Valid and test are
  thus different users' final orders, scored with features of everything before them, and every user's earlier
  orders are training data; a user keeps their split when other data changes.

The serving snapshot's tables (whole known history, what `kuberec register widedeep` copies into the model):
instacart_gold_user_features: one row per user with order lines: user_id INT, USER_FEATURES FLOAT.
    user_cnt_distinct_{orders,products,aisles,departments}_last_{30,180,360}_days
    user_shr_reordered_last_{W}_days        reordered lines / lines, in the window
    user_med_lines_per_order, user_med_days_since_prior_order   over history orders (percentile_approx 0.5:
                                            the lower median, an actual value)
instacart_gold_product_features: one row per product in products.csv (0 for never-ordered ones):
    product_id INT, aisle_id INT, department_id INT, PRODUCT_FEATURES FLOAT:
    product_shr_distinct_users_last_{W}_days    users who bought it in the window / users with orders in it
    product_shr_distinct_orders_last_{W}_days   orders containing it / orders, in the window
    product_shr_reordered_last_{W}_days         its reordered lines / its lines, in the window
instacart_gold_global_metrics: one row: global_cnt_distinct_{orders,users,products,aisles,departments}_last_{W}_days
    BIGINT (the denominators of the product shares).
instacart_gold_user_products: one row per (user, product in their history): user_id INT, product_id INT,
    UP_FEATURES FLOAT.
UP_FEATURES, per (user, product):
    up_cnt_orders                   history orders of the user that contain the product
    up_shr_orders_last_{W}_days     ... within the window / the user's history orders within the window
    up_days_since_last_purchase     days_prior of the latest history order containing it
    up_orders_since_last_purchase   history orders after the latest one containing it

Lineage and idempotence: each gold commit's userMetadata holds {"step", "features_version", "bronze": {table:
version}, "params"}; the job reads the bronze tables at exactly those versions, the ones of the latest complete
ingestion (`instacart_bronze_ingestions`), so an ingestion running at the same time is not half seen. When all gold
tables' latest commits already carry the metadata the current bronze versions would produce, nothing is written.
Each table is replaced by one overwrite commit; after a run that failed half-way, the next run writes the tables
whose metadata does not match yet. Two runs at once on the same bronze versions both finish with the same build in
every table: a run keeps a table that already holds its build, also when it lost the commit race to it; a run that
loses to a build from other bronze versions stops with ConcurrentWriteError.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from kuberec.errors import DataError
from kuberec.ingest.instacart import BRONZE_TABLES, INGESTIONS_TABLE, last_commit_metadata, latest_ingestion
from kuberec.lake.delta import history, overwrite_table, table_exists, table_version
from kuberec.settings import Settings, load_settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

STEP = "features-instacart"
FEATURES_VERSION = 2  # 2: time-shifted snapshots, per-user valid/test split, the user-products table
WINDOWS = (30, 180, 360)
TRAIN_SHIFTS = 3  # snapshots 1..3: targets m-1, m-2, m-3 are training labels
SERVING_SNAPSHOT = -1
SPLITS = ("train", "valid", "test")
SPLIT_BUCKETS = 10_000
VALID_BUCKETS = 5_000  # final orders of users whose bucket is below this: valid; the others: test
SPLIT_SALT = "kuberec-instacart-split-v2"

EXAMPLES_TABLE = "instacart_gold_examples"
USER_TABLE = "instacart_gold_user_features"
PRODUCT_TABLE = "instacart_gold_product_features"
GLOBAL_TABLE = "instacart_gold_global_metrics"
USER_PRODUCT_TABLE = "instacart_gold_user_products"
GOLD_TABLES = (EXAMPLES_TABLE, USER_TABLE, PRODUCT_TABLE, GLOBAL_TABLE, USER_PRODUCT_TABLE)
EXAMPLE_FILES = 8  # files per split: Petastorm shards by row group, so each Horovod rank needs some
# Rows per examples file, so per row group: Petastorm gives row group i to rank i % workers, and at full Instacart
# scale a file of 4.2M rows held two row groups of 2.85M and 1.37M rows, so rank 0 got every large one (22.8M rows
# against 10.96M) and each epoch showed rank 1's rows twice as often.
EXAMPLE_ROWS_PER_FILE = 500_000

ID_COLUMNS = ("user_id", "product_id")
CATEGORICAL_FEATURES = ("aisle_id", "department_id")
USER_FEATURES: tuple[str, ...] = (
    *(f"user_cnt_distinct_{what}_last_{w}_days" for what in ("orders", "products", "aisles", "departments")
      for w in WINDOWS),
    *(f"user_shr_reordered_last_{w}_days" for w in WINDOWS),
    "user_med_lines_per_order", "user_med_days_since_prior_order",
)
PRODUCT_FEATURES: tuple[str, ...] = tuple(
    f"product_shr_{what}_last_{w}_days" for what in ("distinct_users", "distinct_orders", "reordered")
    for w in WINDOWS)
UP_FEATURES: tuple[str, ...] = (
    "up_cnt_orders", *(f"up_shr_orders_last_{w}_days" for w in WINDOWS), "up_days_since_last_purchase",
    "up_orders_since_last_purchase")
NUMERIC_FEATURES: tuple[str, ...] = USER_FEATURES + PRODUCT_FEATURES + UP_FEATURES
GLOBAL_METRICS: tuple[str, ...] = tuple(
    f"global_cnt_distinct_{what}_last_{w}_days" for what in ("orders", "users", "products", "aisles", "departments")
    for w in WINDOWS)


def params() -> dict[str, Any]:
    return {"windows": list(WINDOWS), "train_shifts": TRAIN_SHIFTS, "splits": list(SPLITS),
            "split_buckets": SPLIT_BUCKETS, "valid_buckets": VALID_BUCKETS, "split_salt": SPLIT_SALT}


def gold_tables(examples_uri: str, version: int | None) -> dict[str, int]:
    """{uri: version} of the examples table and the user/product feature tables next to it (same lake): what a
    training run reads, recorded as its lineage."""
    if not table_exists(examples_uri):
        raise DataError(f"no Delta table at {examples_uri}; run `kuberec features instacart` first")
    tables = {examples_uri: table_version(examples_uri) if version is None else int(version)}
    base = examples_uri.rstrip("/").rsplit("/", 1)[0]
    for name in (USER_TABLE, PRODUCT_TABLE):
        uri = f"{base}/{name}"
        if table_exists(uri):
            tables[uri] = table_version(uri)
    return tables


@dataclass
class FeaturesResult:
    versions: dict[str, int] = field(default_factory=dict)  # gold table -> version after the run
    bronze: dict[str, int] = field(default_factory=dict)  # bronze table -> version read
    rows: dict[str, int] = field(default_factory=dict)  # gold table -> rows written (from the Delta commit)
    written: bool = False
    seconds: float = 0.0


def bronze_versions(settings: Settings) -> dict[str, int]:
    """{bronze table: version} of the latest complete ingestion (never the tables of one still running)."""
    ingestion = latest_ingestion(settings)
    if ingestion is None:
        missing = [name for name in BRONZE_TABLES.values() if not table_exists(settings.table_uri(name))]
        raise DataError(f"bronze tables {', '.join(missing)} do not exist; run `kuberec ingest instacart` first"
                        if missing else f"no complete ingestion is recorded in {INGESTIONS_TABLE} (the bronze "
                        "tables were written by an older kuberec); run `kuberec ingest instacart` again: it records "
                        "the tables without rewriting them")
    versions = {name: int(version) for name, version in ingestion["bronze"].items()}
    if set(versions) != set(BRONZE_TABLES.values()):
        raise DataError(f"the latest row of {INGESTIONS_TABLE} lists {sorted(versions)}, not the six bronze tables "
                        f"{sorted(BRONZE_TABLES.values())}; run `kuberec ingest instacart` again")
    return versions


def _ratio(numerator, denominator):
    """numerator / denominator, 0 when the denominator is 0 (ANSI mode would raise on x/0)."""
    from pyspark.sql import functions as F

    return F.when(denominator > 0, numerator / denominator).otherwise(F.lit(0.0))


def _in_window(days_col: str, window: int):
    from pyspark.sql import functions as F

    return F.col(days_col) <= F.lit(window)


def _count_within(days_col: str, window: int):
    """Rows whose `days_col` (days before the user's last order) is within `window` days."""
    from pyspark.sql import functions as F

    return F.sum(F.when(_in_window(days_col, window), 1).otherwise(0))


def _distinct_within(days_col: str, window: int, column: str):
    """Distinct values of `column` among rows within `window` days (collect_set skips the NULLs of other rows)."""
    from pyspark.sql import functions as F

    return F.size(F.collect_set(F.when(_in_window(days_col, window), F.col(column))))


@dataclass
class GoldFrames:
    tables: dict[str, "DataFrame"]  # gold table name -> its content
    persisted: list["DataFrame"]  # intermediate aggregates every table reuses; unpersist when written


@dataclass
class _Snapshots:
    known: "DataFrame"  # orders with known contents, with `elapsed`: days from the user's first order
    targets: "DataFrame"  # (snapshot, user_id, target_number) for every snapshot with a target order >= 2
    history_orders: "DataFrame"  # each snapshot's history orders, with `days_prior` to its cut-off


def _snapshots(orders: "DataFrame") -> _Snapshots:
    """Cut every user's history once per snapshot (see the module docstring): the orders before its target."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_number = Window.partitionBy("user_id").orderBy("order_number") \
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    known = orders.where(F.col("eval_set") != "test").select(
        "order_id", "user_id", "order_number", "eval_set", "days_since_prior_order",
        F.sum(F.coalesce(F.col("days_since_prior_order"), F.lit(0.0))).over(by_number).alias("elapsed"),
    ).persist()
    snapshots = known.sparkSession.range(SERVING_SNAPSHOT, TRAIN_SHIFTS + 1).select(
        F.col("id").cast("int").alias("snapshot"))
    # Per (snapshot, user): the target order number (the serving snapshot's is the unknown next order).
    targets = (known.groupBy("user_id").agg(F.max("order_number").alias("last_known"))
               .crossJoin(F.broadcast(snapshots))
               .select("snapshot", "user_id", (F.col("last_known") - F.col("snapshot")).alias("target_number"))
               .where(F.col("target_number") >= 2))
    cutoff = targets.join(known.select("user_id", (F.col("order_number") + 1).alias("target_number"),
                                       F.col("elapsed").alias("cutoff_elapsed")), ["user_id", "target_number"])
    history_orders = known.join(cutoff, "user_id").where(F.col("order_number") < F.col("target_number")).select(
        "snapshot", "order_id", "user_id", "order_number", "days_since_prior_order", "target_number",
        (F.col("cutoff_elapsed") - F.col("elapsed")).alias("days_prior"))
    return _Snapshots(known, targets, history_orders)


def _history_aggregates(all_lines: "DataFrame", history_orders: "DataFrame",
                        products: "DataFrame") -> tuple["DataFrame", "DataFrame"]:
    """(order_stats, up), both persisted: each snapshot's history orders that have lines, with their size (the
    seed's metrics count orders through their lines), and per (snapshot, user, product) the counts every user,
    product and global metric derives from, so the order lines are aggregated in one pass."""
    from pyspark.sql import functions as F

    order_stats = (all_lines.groupBy("order_id").agg(F.count(F.lit(1)).alias("lines"))
                   .join(history_orders, "order_id")).persist()
    lines = all_lines.join(history_orders.select("snapshot", "order_id", "user_id", "order_number", "target_number",
                                                 "days_prior"), "order_id")
    # A product appears once per order (validated), so line counts are order counts.
    up = (lines.groupBy("snapshot", "user_id", "product_id").agg(
        F.count(F.lit(1)).alias("n_orders"),
        F.min("days_prior").alias("min_days"),
        (F.first("target_number") - 1 - F.max("order_number")).alias("orders_since"),
        *[_count_within("days_prior", w).alias(f"n_{w}") for w in WINDOWS],
        *[F.sum(F.when(_in_window("days_prior", w), F.col("reordered")).otherwise(0)).alias(f"r_{w}")
          for w in WINDOWS],
    ).join(F.broadcast(products), "product_id")).persist()
    return order_stats, up


def _user_features(order_stats: "DataFrame", up: "DataFrame") -> "DataFrame":
    """Per (snapshot, user): USER_FEATURES as FLOAT, persisted."""
    from pyspark.sql import functions as F

    user_orders = order_stats.groupBy("snapshot", "user_id").agg(
        *[_count_within("days_prior", w).alias(f"user_cnt_distinct_orders_last_{w}_days") for w in WINDOWS],
        F.percentile_approx("lines", 0.5).alias("user_med_lines_per_order"),
        F.percentile_approx("days_since_prior_order", 0.5).alias("user_med_days_since_prior_order"),
    )
    user_products = up.groupBy("snapshot", "user_id").agg(
        *[_count_within("min_days", w).alias(f"user_cnt_distinct_products_last_{w}_days") for w in WINDOWS],
        # A user touches at most 134 aisles / 21 departments: small sets, and no Expand as countDistinct would do.
        *[_distinct_within("min_days", w, "aisle_id").alias(f"user_cnt_distinct_aisles_last_{w}_days")
          for w in WINDOWS],
        *[_distinct_within("min_days", w, "department_id").alias(f"user_cnt_distinct_departments_last_{w}_days")
          for w in WINDOWS],
        *[_ratio(F.sum(f"r_{w}"), F.sum(f"n_{w}")).alias(f"user_shr_reordered_last_{w}_days") for w in WINDOWS],
    )
    return user_orders.join(user_products, ["snapshot", "user_id"]).select(
        "snapshot", "user_id",
        *[F.coalesce(F.col(c).cast("float"), F.lit(0.0).cast("float")).alias(c) for c in USER_FEATURES]
    ).persist()


def _product_and_global_metrics(order_stats: "DataFrame",
                                up: "DataFrame") -> tuple["DataFrame", "DataFrame", "DataFrame"]:
    """(product_metrics, global_metrics, shares), each persisted: per (snapshot, product) its users, orders and
    reorders in each window; per snapshot GLOBAL_METRICS; per (snapshot, product) PRODUCT_FEATURES as FLOAT, the
    product's counts over the snapshot's global ones."""
    from pyspark.sql import functions as F

    product_metrics = up.groupBy("snapshot", "product_id").agg(
        *[_count_within("min_days", w).alias(f"users_{w}") for w in WINDOWS],
        *[F.sum(f"n_{w}").alias(f"orders_{w}") for w in WINDOWS],
        *[F.sum(f"r_{w}").alias(f"reordered_{w}") for w in WINDOWS],
    ).persist()
    global_metrics = order_stats.groupBy("snapshot").agg(
        *[_count_within("days_prior", w).alias(f"orders_{w}") for w in WINDOWS],
        *[_distinct_within("days_prior", w, "user_id").alias(f"users_{w}") for w in WINDOWS],
    ).join(up.groupBy("snapshot", "product_id", "aisle_id", "department_id").agg(
        F.min("min_days").alias("min_days")).groupBy("snapshot").agg(
        *[_count_within("min_days", w).alias(f"products_{w}") for w in WINDOWS],
        *[_distinct_within("min_days", w, "aisle_id").alias(f"aisles_{w}") for w in WINDOWS],
        *[_distinct_within("min_days", w, "department_id").alias(f"departments_{w}") for w in WINDOWS],
    ), "snapshot").select("snapshot", *[
        F.coalesce(F.col(f"{what}_{w}"), F.lit(0)).cast("long").alias(f"global_cnt_distinct_{what}_last_{w}_days")
        for what in ("orders", "users", "products", "aisles", "departments") for w in WINDOWS]).persist()

    shares = product_metrics.join(F.broadcast(global_metrics), "snapshot").select("snapshot", "product_id", *[
        F.coalesce(expr, F.lit(0.0)).cast("float").alias(f"product_shr_{what}_last_{w}_days")
        for w in WINDOWS
        for what, expr in (
            ("distinct_users", _ratio(F.col(f"users_{w}"), F.col(f"global_cnt_distinct_users_last_{w}_days"))),
            ("distinct_orders", _ratio(F.col(f"orders_{w}"), F.col(f"global_cnt_distinct_orders_last_{w}_days"))),
            ("reordered", _ratio(F.col(f"reordered_{w}"), F.col(f"orders_{w}"))),
        )]).persist()
    return product_metrics, global_metrics, shares


def _user_product_features(up: "DataFrame", users: "DataFrame") -> "DataFrame":
    """Per (snapshot, user, candidate product): ids, categories, USER_FEATURES and UP_FEATURES (the user's window
    counts are the denominators of the up shares)."""
    from pyspark.sql import functions as F

    user_product = {
        "up_cnt_orders": F.col("n_orders"),
        **{f"up_shr_orders_last_{w}_days": _ratio(F.col(f"n_{w}"), F.col(f"user_cnt_distinct_orders_last_{w}_days"))
           for w in WINDOWS},
        "up_days_since_last_purchase": F.col("min_days"),
        "up_orders_since_last_purchase": F.col("orders_since"),
    }
    return up.join(users, ["snapshot", "user_id"]).select(
        "snapshot", *ID_COLUMNS, *CATEGORICAL_FEATURES, *USER_FEATURES,
        *[user_product[name].cast("float").alias(name) for name in UP_FEATURES])


def _examples(cut: _Snapshots, all_lines: "DataFrame", up_features: "DataFrame", shares: "DataFrame") -> "DataFrame":
    """The examples table: each example snapshot's candidates with their features, the label (does the target order
    hold the product) and the split its target order belongs to."""
    from pyspark.sql import functions as F

    target_orders = cut.known.join(cut.targets.where(F.col("snapshot") >= 0), "user_id") \
        .where(F.col("order_number") == F.col("target_number")).select("order_id", "snapshot", "user_id", "eval_set")
    positives = all_lines.join(target_orders, "order_id").select("snapshot", "user_id", "product_id",
                                                                 F.lit(1).alias("label"))
    user_bucket = F.pmod(F.xxhash64(F.col("user_id"), F.lit(SPLIT_SALT)), F.lit(SPLIT_BUCKETS))
    split = (F.when(F.col("eval_set") == "prior", F.lit(SPLITS[0]))
             .when(user_bucket < VALID_BUCKETS, F.lit(SPLITS[1])).otherwise(F.lit(SPLITS[2])))
    return (
        up_features.where(F.col("snapshot") >= 0)
        .join(target_orders.select("snapshot", "user_id", "eval_set"), ["snapshot", "user_id"])
        .join(positives, ["snapshot", "user_id", "product_id"], "left")
        .join(shares, ["snapshot", "product_id"])
        .select(
            *ID_COLUMNS, *CATEGORICAL_FEATURES, *NUMERIC_FEATURES,
            F.coalesce(F.col("label"), F.lit(0)).cast("int").alias("label"),
            split.alias("split"), "snapshot",
        )
    )


def build_gold(bronze: dict[str, "DataFrame"]) -> GoldFrames:
    """The gold DataFrames from the six bronze ones (keys: bronze table names); a pure function of them.

    Every aggregate is grouped by `snapshot` first (see the module docstring): each history order line is copied
    once per snapshot whose history holds it, and the seed's metrics are computed per snapshot from those copies.
    The example snapshots (>= 0) make the examples table; the serving snapshot makes the other four.
    """
    from pyspark.sql import functions as F

    orders = bronze[BRONZE_TABLES["orders.csv"]]
    products = bronze[BRONZE_TABLES["products.csv"]].select("product_id", "aisle_id", "department_id")
    # Order lines with known contents: prior orders and the train orders (test orders' lines are withheld).
    all_lines = bronze[BRONZE_TABLES["order_products__prior.csv"]].unionByName(
        bronze[BRONZE_TABLES["order_products__train.csv"]]).select("order_id", "product_id", "reordered")

    cut = _snapshots(orders)
    order_stats, up = _history_aggregates(all_lines, cut.history_orders, products)
    users = _user_features(order_stats, up)
    product_metrics, global_metrics, shares = _product_and_global_metrics(order_stats, up)
    up_features = _user_product_features(up, users)
    examples = _examples(cut, all_lines, up_features, shares)

    serving = F.col("snapshot") == SERVING_SNAPSHOT
    product_features = products.join(shares.where(serving).drop("snapshot"), "product_id", "left").select(
        "product_id", "aisle_id", "department_id",
        *[F.coalesce(F.col(c), F.lit(0.0)).cast("float").alias(c) for c in PRODUCT_FEATURES])
    return GoldFrames({EXAMPLES_TABLE: examples,
                       USER_TABLE: users.where(serving).drop("snapshot"),
                       PRODUCT_TABLE: product_features,
                       GLOBAL_TABLE: global_metrics.where(serving).drop("snapshot"),
                       USER_PRODUCT_TABLE: up_features.where(serving).select(*ID_COLUMNS, *UP_FEATURES)},
                      [cut.known, up, order_stats, users, product_metrics, global_metrics, shares])


def _rows_written(table_uri: str) -> int:
    return int(history(table_uri, 1)[0].get("operationMetrics", {}).get("numOutputRows", -1))


def wanted_metadata(settings: Settings) -> dict[str, Any]:
    """The userMetadata a gold build from the current bronze versions carries."""
    return {"step": STEP, "features_version": FEATURES_VERSION, "bronze": bronze_versions(settings),
            "params": params()}


def gold_up_to_date(settings: Settings, wanted: dict[str, Any]) -> bool:
    return all(last_commit_metadata(settings.table_uri(name)) == wanted for name in GOLD_TABLES)


def build_features(settings: Settings, spark: "SparkSession | None" = None, force: bool = False) -> FeaturesResult:
    """Build the gold tables from the current bronze versions, unless they were already built from them.

    Spark (`spark`, else a session for `settings`) is only started when the tables have to be built.
    """
    began = time.monotonic()
    wanted = wanted_metadata(settings)
    result = FeaturesResult(bronze=wanted["bronze"])
    uris = {name: settings.table_uri(name) for name in GOLD_TABLES}
    if not force and gold_up_to_date(settings, wanted):
        result.versions = {name: table_version(uri) for name, uri in uris.items()}
        log.info("gold tables unchanged: already built from bronze versions %s", result.bronze)
        return result
    if spark is None:
        from kuberec.lake.spark import spark_session

        spark = spark_session(settings, app_name="kuberec-features-instacart")
    bronze = {name: spark.read.format("delta").option("versionAsOf", version).load(settings.table_uri(name))
              for name, version in result.bronze.items()}
    gold = build_gold(bronze)
    metadata = json.dumps(wanted, sort_keys=True)
    try:
        # Small tables first: each write reuses the persisted aggregates; the examples table comes last.
        for name in (GLOBAL_TABLE, USER_TABLE, PRODUCT_TABLE, USER_PRODUCT_TABLE, EXAMPLES_TABLE):
            frame = gold.tables[name]
            if name == GLOBAL_TABLE:
                frame = frame.coalesce(1)
            elif name == EXAMPLES_TABLE:
                frame = frame.repartition(EXAMPLE_FILES)
            writer = frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true") \
                .option("userMetadata", metadata)
            if name == EXAMPLES_TABLE:
                # File statistics only for the id columns (lookups by user/product); the other feature columns
                # are never filtered on, and collecting their min/max cost a third of the write.
                writer = writer.partitionBy("split").option("delta.dataSkippingNumIndexedCols", "4") \
                    .option("maxRecordsPerFile", EXAMPLE_ROWS_PER_FILE)
            # A table that already holds this build (a concurrent run of this step, or a run that stopped between
            # tables) is kept, unless forced.
            overwrite_table(lambda: writer.save(uris[name]), what=f"writing {name}", force=force,  # called at once
                            holds_it=lambda: last_commit_metadata(uris[name]) == wanted)
            result.versions[name] = table_version(uris[name])
            result.rows[name] = _rows_written(uris[name])
            log.info("%s: v%d, %s rows", name, result.versions[name], f"{result.rows[name]:,}")
    finally:
        for frame in gold.persisted:
            frame.unpersist()
    result.written = True
    result.seconds = round(time.monotonic() - began, 2)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuberec.ingest.instacart_features",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if the bronze versions did not change")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = build_features(load_settings(), force=args.force)
    print(json.dumps({"step": STEP, **result.__dict__}, sort_keys=True))
    return 0


if __name__ == "__main__":
    from kuberec.entrypoint import run_program

    run_program("kuberec.ingest.instacart_features", main)
