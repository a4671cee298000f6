"""Spark job: bronze Instacart tables -> gold feature, label and split tables (`kuberec features instacart`).

Features follow the wide & deep seed's feature notebook: user, product and global metrics over the 30, 180 and 360
days before each user's last order, where an order's `days_prior_to_last_order` is the sum of
days_since_prior_order over the user's later orders (0 for the last order itself). Only prior orders feed metrics.

Gold tables (`settings.table_uri(name)`); every numeric feature is FLOAT (float32), 0 where undefined (x/0):

instacart_gold_examples: one row per candidate (user, product) pair, the model's input. Partitioned by `split`.
    user_id INT, product_id INT            wide part: ids (hash them) and their cross
    aisle_id INT, department_id INT        deep part: embeddings (CATEGORICAL_FEATURES)
    <NUMERIC_FEATURES> FLOAT               deep part: USER_FEATURES + PRODUCT_FEATURES + UP_FEATURES, in that order
    label INT                              1 if the product is in the user's final (train) order, else 0
    split STRING                           train | valid | test
  Candidates are the products each user bought in prior orders, for users that have a train order (users whose
  final order is `test` have no label). Products first bought in the final order are not candidates (as in the
  seed, whose labels cover only pairs seen before).
  Split: xxhash64(user_id, product_id, SPLIT_SALT) mod 10,000 below 8,000 -> train, below 9,000 -> valid, else
  test. The rule is the same within each label stratum, so both labels are split 80/10/10 (up to sampling noise,
  as with the seed's sampleBy), and a pair keeps its split when other data changes.

instacart_gold_user_features: one row per user with prior order lines: user_id INT, USER_FEATURES FLOAT.
    user_cnt_distinct_{orders,products,aisles,departments}_last_{30,180,360}_days
    user_shr_reordered_last_{W}_days        reordered lines / lines, in the window
    user_med_lines_per_order, user_med_days_since_prior_order   over prior orders (percentile_approx 0.5:
                                            the lower median, an actual value)
instacart_gold_product_features: one row per product in products.csv (0 for never-ordered ones):
    product_id INT, aisle_id INT, department_id INT, PRODUCT_FEATURES FLOAT:
    product_shr_distinct_users_last_{W}_days    users who bought it in the window / users with orders in it
    product_shr_distinct_orders_last_{W}_days   orders containing it / orders, in the window
    product_shr_reordered_last_{W}_days         its reordered lines / its lines, in the window
instacart_gold_global_metrics: one row: global_cnt_distinct_{orders,users,products,aisles,departments}_last_{W}_days
    BIGINT (the denominators of the product shares).
UP_FEATURES, per (user, product), on the examples only (the "user/product shares"):
    up_cnt_orders                   prior orders of the user that contain the product
    up_shr_orders_last_{W}_days     ... within the window / the user's prior orders within the window
    up_days_since_last_purchase     days_prior_to_last_order of the latest prior order containing it

Lineage and idempotence: each gold commit's userMetadata holds {"step", "features_version", "bronze": {table:
version}, "params"}; the job reads the bronze tables at exactly those versions. When all four gold tables' latest
commits already carry the metadata the current bronze versions would produce, nothing is written. Each table is
replaced by one overwrite commit; a run that fails half-way is redone completely by the next run.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from kuberec.datasets.instacart import FILES
from kuberec.errors import DataError
from kuberec.ingest.instacart import BRONZE_TABLES, last_commit_metadata
from kuberec.lake.delta import history, table_exists, table_version
from kuberec.settings import Settings, load_settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

STEP = "features-instacart"
FEATURES_VERSION = 1
WINDOWS = (30, 180, 360)
SPLITS = ("train", "valid", "test")
SPLIT_BUCKETS = 10_000
SPLIT_BOUNDS = (8_000, 9_000)  # bucket < 8000: train; < 9000: valid; else test
SPLIT_SALT = "kuberec-instacart-split-v1"

EXAMPLES_TABLE = "instacart_gold_examples"
USER_TABLE = "instacart_gold_user_features"
PRODUCT_TABLE = "instacart_gold_product_features"
GLOBAL_TABLE = "instacart_gold_global_metrics"
GOLD_TABLES = (EXAMPLES_TABLE, USER_TABLE, PRODUCT_TABLE, GLOBAL_TABLE)

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
    "up_cnt_orders", *(f"up_shr_orders_last_{w}_days" for w in WINDOWS), "up_days_since_last_purchase")
NUMERIC_FEATURES: tuple[str, ...] = USER_FEATURES + PRODUCT_FEATURES + UP_FEATURES
GLOBAL_METRICS: tuple[str, ...] = tuple(
    f"global_cnt_distinct_{what}_last_{w}_days" for what in ("orders", "users", "products", "aisles", "departments")
    for w in WINDOWS)


def params() -> dict[str, Any]:
    return {"windows": list(WINDOWS), "splits": list(SPLITS), "split_buckets": SPLIT_BUCKETS,
            "split_bounds": list(SPLIT_BOUNDS), "split_salt": SPLIT_SALT}


@dataclass
class FeaturesResult:
    versions: dict[str, int] = field(default_factory=dict)  # gold table -> version after the run
    bronze: dict[str, int] = field(default_factory=dict)  # bronze table -> version read
    rows: dict[str, int] = field(default_factory=dict)  # gold table -> rows written (from the Delta commit)
    written: bool = False
    seconds: float = 0.0


def bronze_versions(settings: Settings) -> dict[str, int]:
    versions = {}
    for spec in FILES:
        name = BRONZE_TABLES[spec.name]
        uri = settings.table_uri(name)
        if not table_exists(uri):
            raise DataError(f"bronze table {name} does not exist at {uri}; run `kuberec ingest instacart` first")
        versions[name] = table_version(uri)
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


def build_gold(bronze: dict[str, "DataFrame"]) -> GoldFrames:
    """The four gold DataFrames from the six bronze ones (keys: bronze table names); a pure function of them."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    orders = bronze[BRONZE_TABLES["orders.csv"]]
    products = bronze[BRONZE_TABLES["products.csv"]].select("product_id", "aisle_id", "department_id")
    prior_lines = bronze[BRONZE_TABLES["order_products__prior.csv"]]
    train_lines = bronze[BRONZE_TABLES["order_products__train.csv"]]

    later = Window.partitionBy("user_id").orderBy(F.col("order_number").desc()) \
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    orders = orders.select(
        "order_id", "user_id", "eval_set", "days_since_prior_order",
        (F.coalesce(F.sum("days_since_prior_order").over(later), F.lit(0.0))
         - F.coalesce(F.col("days_since_prior_order"), F.lit(0.0))).alias("days_prior"),
    ).persist()
    prior_orders = orders.where(F.col("eval_set") == "prior").select(
        "order_id", "user_id", "days_prior", "days_since_prior_order")

    # Prior orders that have lines, with their size (the seed's metrics count orders through their lines).
    order_stats = (prior_lines.groupBy("order_id").agg(F.count(F.lit(1)).alias("lines"))
                   .join(prior_orders, "order_id")).persist()
    lines = prior_lines.select("order_id", "product_id", "reordered").join(
        F.broadcast(prior_orders.select("order_id", "user_id", "days_prior")), "order_id")
    # One pass over the order lines: every metric below derives from these per-(user, product) aggregates.
    # A product appears once per order (validated), so line counts are order counts.
    up = (lines.groupBy("user_id", "product_id").agg(
        F.count(F.lit(1)).alias("n_orders"),
        F.min("days_prior").alias("min_days"),
        *[_count_within("days_prior", w).alias(f"n_{w}") for w in WINDOWS],
        *[F.sum(F.when(_in_window("days_prior", w), F.col("reordered")).otherwise(0)).alias(f"r_{w}")
          for w in WINDOWS],
    ).join(F.broadcast(products), "product_id")).persist()

    user_orders = order_stats.groupBy("user_id").agg(
        *[_count_within("days_prior", w).alias(f"user_cnt_distinct_orders_last_{w}_days") for w in WINDOWS],
        F.percentile_approx("lines", 0.5).alias("user_med_lines_per_order"),
        F.percentile_approx("days_since_prior_order", 0.5).alias("user_med_days_since_prior_order"),
    )
    user_products = up.groupBy("user_id").agg(
        *[_count_within("min_days", w).alias(f"user_cnt_distinct_products_last_{w}_days") for w in WINDOWS],
        # A user touches at most 134 aisles / 21 departments: small sets, and no Expand as countDistinct would do.
        *[_distinct_within("min_days", w, "aisle_id").alias(f"user_cnt_distinct_aisles_last_{w}_days")
          for w in WINDOWS],
        *[_distinct_within("min_days", w, "department_id").alias(f"user_cnt_distinct_departments_last_{w}_days")
          for w in WINDOWS],
        *[_ratio(F.sum(f"r_{w}"), F.sum(f"n_{w}")).alias(f"user_shr_reordered_last_{w}_days") for w in WINDOWS],
    )
    users = user_orders.join(user_products, "user_id").select(
        "user_id", *[F.coalesce(F.col(c).cast("float"), F.lit(0.0).cast("float")).alias(c) for c in USER_FEATURES]
    ).persist()

    product_metrics = up.groupBy("product_id", "aisle_id", "department_id").agg(
        F.min("min_days").alias("min_days"),
        *[_count_within("min_days", w).alias(f"users_{w}") for w in WINDOWS],
        *[F.sum(f"n_{w}").alias(f"orders_{w}") for w in WINDOWS],
        *[F.sum(f"r_{w}").alias(f"reordered_{w}") for w in WINDOWS],
    ).persist()
    global_metrics = order_stats.agg(
        *[_count_within("days_prior", w).alias(f"orders_{w}") for w in WINDOWS],
        *[_distinct_within("days_prior", w, "user_id").alias(f"users_{w}") for w in WINDOWS],
    ).crossJoin(product_metrics.agg(
        *[_count_within("min_days", w).alias(f"products_{w}") for w in WINDOWS],
        *[_distinct_within("min_days", w, "aisle_id").alias(f"aisles_{w}") for w in WINDOWS],
        *[_distinct_within("min_days", w, "department_id").alias(f"departments_{w}") for w in WINDOWS],
    )).select(*[
        F.coalesce(F.col(f"{what}_{w}"), F.lit(0)).cast("long").alias(f"global_cnt_distinct_{what}_last_{w}_days")
        for what in ("orders", "users", "products", "aisles", "departments") for w in WINDOWS]).persist()

    shares = product_metrics.crossJoin(F.broadcast(global_metrics)).select("product_id", *[
        expr.alias(f"product_shr_{what}_last_{w}_days")
        for w in WINDOWS
        for what, expr in (
            ("distinct_users", _ratio(F.col(f"users_{w}"), F.col(f"global_cnt_distinct_users_last_{w}_days"))),
            ("distinct_orders", _ratio(F.col(f"orders_{w}"), F.col(f"global_cnt_distinct_orders_last_{w}_days"))),
            ("reordered", _ratio(F.col(f"reordered_{w}"), F.col(f"orders_{w}"))),
        )])
    product_features = products.join(shares, "product_id", "left").select(
        "product_id", "aisle_id", "department_id",
        *[F.coalesce(F.col(c), F.lit(0.0)).cast("float").alias(c) for c in PRODUCT_FEATURES]).persist()

    final_orders = orders.where(F.col("eval_set") == "train").select("order_id", "user_id")
    positives = train_lines.select("order_id", "product_id").join(final_orders, "order_id") \
        .select("user_id", "product_id", F.lit(1).alias("label"))
    bucket = F.pmod(F.xxhash64(F.col("user_id"), F.col("product_id"), F.lit(SPLIT_SALT)), F.lit(SPLIT_BUCKETS))
    split = (F.when(bucket < SPLIT_BOUNDS[0], F.lit(SPLITS[0]))
             .when(bucket < SPLIT_BOUNDS[1], F.lit(SPLITS[1])).otherwise(F.lit(SPLITS[2])))
    user_product = {
        "up_cnt_orders": F.col("n_orders"),
        **{f"up_shr_orders_last_{w}_days": _ratio(F.col(f"n_{w}"), F.col(f"user_cnt_distinct_orders_last_{w}_days"))
           for w in WINDOWS},
        "up_days_since_last_purchase": F.col("min_days"),
    }
    examples = (
        up.join(F.broadcast(final_orders.select("user_id")), "user_id", "left_semi")
        .join(positives, ["user_id", "product_id"], "left")
        .join(F.broadcast(users), "user_id")
        .join(F.broadcast(product_features.drop("aisle_id", "department_id")), "product_id")
        .select(
            *ID_COLUMNS, *CATEGORICAL_FEATURES, *USER_FEATURES, *PRODUCT_FEATURES,
            *[user_product[name].cast("float").alias(name) for name in UP_FEATURES],
            F.coalesce(F.col("label"), F.lit(0)).cast("int").alias("label"),
            split.alias("split"),
        )
    )
    return GoldFrames({EXAMPLES_TABLE: examples, USER_TABLE: users, PRODUCT_TABLE: product_features,
                       GLOBAL_TABLE: global_metrics},
                      [orders, up, order_stats, users, product_metrics, global_metrics, product_features])


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
        from kuberec.lake import spark_session

        spark = spark_session(settings, app_name="kuberec-features-instacart")
    bronze = {name: spark.read.format("delta").option("versionAsOf", version).load(settings.table_uri(name))
              for name, version in result.bronze.items()}
    gold = build_gold(bronze)
    metadata = json.dumps(wanted, sort_keys=True)
    try:
        # Small tables first: each write reuses the persisted aggregates; the examples table comes last.
        for name in (GLOBAL_TABLE, USER_TABLE, PRODUCT_TABLE, EXAMPLES_TABLE):
            frame = gold.tables[name].coalesce(1) if name == GLOBAL_TABLE else gold.tables[name]
            writer = frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true") \
                .option("userMetadata", metadata)
            if name == EXAMPLES_TABLE:
                # File statistics only for the id columns (lookups by user/product); the other 31 feature columns
                # are never filtered on, and collecting their min/max cost a third of the write.
                writer = writer.partitionBy("split").option("delta.dataSkippingNumIndexedCols", "4")
            writer.save(uris[name])
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
    from kuberec.cli import run_step

    run_step(main)
