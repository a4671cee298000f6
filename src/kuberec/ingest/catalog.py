"""The catalog Delta table (`fashion_mnist`): schema, and the one MERGE every catalog writer goes through.

Columns: item_id BIGINT (stable id), split STRING (train | test | catalog; the partition column), label INT
(-1 = unlabelled: a null would change the column's type between Parquet files and break tf.data readers),
label_name STRING (null when unlabelled), image BINARY (28x28 uint8, row-major), image_sha256 STRING,
source STRING (where the row came from), ingested_at TIMESTAMP (when the row's content last changed).
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np

from kuberec.datasets.fashion_mnist import IMAGE_SIDE, LABEL_NAMES
from kuberec.errors import OutOfSpaceError, out_of_space
from kuberec.lake.delta import retry_on_conflict, table_exists, table_version

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

TABLE_NAME = "fashion_mnist"
UNLABELLED = -1
# Files per split when a table is created: enough row groups for Petastorm to shard across Horovod ranks.
FILES_PER_WRITE = 8
# And never more rows in one file (one row group): Petastorm gives each rank whole row groups, and a MERGE writes
# one file per partition value, so a catalog grown by 57,000 images gave one of two ranks 59,000 of 60,000 images.
MAX_ROWS_PER_FILE = 2048


def catalog_schema():
    from pyspark.sql import types as T

    return T.StructType([
        T.StructField("item_id", T.LongType(), False),
        T.StructField("split", T.StringType(), False),
        T.StructField("label", T.IntegerType(), False),
        T.StructField("label_name", T.StringType(), True),
        T.StructField("image", T.BinaryType(), False),
        T.StructField("image_sha256", T.StringType(), False),
        T.StructField("source", T.StringType(), False),
        T.StructField("ingested_at", T.TimestampType(), False),
    ])


def catalog_rows(item_ids: Iterable[int], split: str, labels: Iterable[int], images: np.ndarray,
                 sources: str | Sequence[str]) -> list[tuple]:
    """Rows in catalog_schema order for uint8 images [N,28,28]; `sources` is one value for all rows or one each."""
    if images.dtype != np.uint8 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise ValueError(f"images must be uint8 [N,{IMAGE_SIDE},{IMAGE_SIDE}], got {images.dtype} {images.shape}")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    if isinstance(sources, str):
        sources = [sources] * len(images)
    rows = []
    for item_id, label, image, source in zip(item_ids, labels, images, sources, strict=True):
        raw = image.tobytes()
        label = int(label)
        rows.append((int(item_id), split, label, LABEL_NAMES[label] if label != UNLABELLED else None, raw,
                     hashlib.sha256(raw).hexdigest(), source, now))
    return rows


def catalog_frame(spark: "SparkSession", rows: list[tuple]) -> "DataFrame":
    """A DataFrame of catalog rows, sliced so that no Spark task carries more than ~1 MB of images."""
    slices = max(1, len(rows) * (IMAGE_SIDE * IMAGE_SIDE + 200) // 1_000_000)
    return spark.createDataFrame(spark.sparkContext.parallelize(rows, slices), catalog_schema())


@contextmanager
def reporting_full_disk(table_uri: str, what: str) -> Iterator[None]:
    """A write to `table_uri` that finds the disk full (ENOSPC, as the JVM reports it) becomes OutOfSpaceError naming
    the table and the version it is at: a Delta commit lands whole or not at all, so that version is intact (the
    failed write's data files stay behind unreferenced until a VACUUM)."""
    before = table_version(table_uri) if table_exists(table_uri) else None
    try:
        yield
    except Exception as err:
        full = out_of_space(err)
        if full is None:
            raise
        now = table_version(table_uri) if table_exists(table_uri) else None
        state = ("no table was created" if now is None else f"the table is still at version {now}" if now == before
                 else f"the table is at version {now}")
        raise OutOfSpaceError(f"{what}: no space left on device under {table_uri} ({full}); {state}. Free space "
                              f"there and run it again (the write is idempotent).") from None


def upsert(spark: "SparkSession", table_uri: str, updates: "DataFrame", key: str = "item_id") -> int:
    """MERGE `updates` into the table on `key`; returns the table version afterwards (a concurrent writer may have
    committed after this write: the version holds this write's rows, and maybe others').

    Only rows that are new, or whose image/label differ, are written, so a re-run with the same input commits no
    new version. The whole batch is one Delta commit: it lands completely or not at all. A commit that loses a race
    with another writer is computed again from that writer's version (`retry_on_conflict`); one that finds the
    disk full is OutOfSpaceError (`reporting_full_disk`).
    """
    with reporting_full_disk(table_uri, f"merging into {table_uri}"):
        return retry_on_conflict(lambda: _upsert_once(spark, table_uri, updates, key), f"merging into {table_uri}")


def _upsert_once(spark: "SparkSession", table_uri: str, updates: "DataFrame", key: str) -> int:
    from delta.tables import DeltaTable

    if not table_exists(table_uri):
        count = updates.count()
        (updates.repartition(FILES_PER_WRITE).write.format("delta").partitionBy("split")
         .option("delta.enableChangeDataFeed", "true").option("delta.enableDeletionVectors", "false")
         .option("maxRecordsPerFile", MAX_ROWS_PER_FILE).mode("errorifexists").save(table_uri))
        version = table_version(table_uri)
        log.info("created %s with %d rows (v%d)", table_uri, count, version)
        return version
    current = spark.read.format("delta").load(table_uri).select(key, "image_sha256", "label")
    changed = (
        updates.alias("s").join(current.alias("t"), on=key, how="left")
        .where("t.image_sha256 IS NULL OR t.image_sha256 <> s.image_sha256 OR t.label <> s.label")
        .select("s.*")
    ).cache()
    try:
        count = changed.count()
        if count == 0:
            version = table_version(table_uri)
            log.info("%s unchanged: every row is already there (v%d)", table_uri, version)
            return version
        # MERGE takes no write options: the session's limit applies to it, for this write only.
        limit = "spark.sql.files.maxRecordsPerFile"
        before = spark.conf.get(limit)
        spark.conf.set(limit, str(MAX_ROWS_PER_FILE))
        try:
            (DeltaTable.forPath(spark, table_uri).alias("t")
             .merge(changed.alias("s"), f"t.{key} = s.{key}")
             .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
        finally:
            spark.conf.set(limit, before)
    finally:
        changed.unpersist()
    version = table_version(table_uri)
    log.info("merged %d new or changed rows into %s (v%d)", count, table_uri, version)
    return version
