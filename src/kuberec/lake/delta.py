"""Delta table versions, snapshots and diffs.

Light reads (a version number, the files of a snapshot) use delta-rs, which needs no JVM; row-level diffs use
Spark's change data feed, which kuberec's tables record from their first version.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from kuberec.errors import KuberecError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


class TableNotFoundError(KuberecError):
    """The Delta table (or the requested version of it) does not exist."""


def _delta_rs_table(table_uri: str, version: int | None = None):
    from deltalake import DeltaTable

    uri = _delta_rs_uri(table_uri)
    if not DeltaTable.is_deltatable(uri, storage_options=_storage_options(uri)):
        raise TableNotFoundError(f"no Delta table at {table_uri}; run the ingestion step that creates it first")
    try:
        return DeltaTable(uri, version=version, storage_options=_storage_options(uri))
    except Exception as err:  # delta-rs raises its own error types per failure
        raise TableNotFoundError(f"{table_uri} has no version {version}: {err}") from err


def _delta_rs_uri(table_uri: str) -> str:
    # Spark writes s3a://, delta-rs speaks s3://; both name the same objects.
    return "s3://" + table_uri.removeprefix("s3a://") if table_uri.startswith("s3a://") else table_uri


def _storage_options(uri: str) -> dict[str, str] | None:
    if not uri.startswith("s3://"):
        return None
    import os

    options = {"AWS_ALLOW_HTTP": "true", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}
    if os.environ.get("KUBEREC_S3_ENDPOINT"):
        options["AWS_ENDPOINT_URL"] = os.environ["KUBEREC_S3_ENDPOINT"]
    return options


def table_version(table_uri: str) -> int:
    """Current (latest committed) version of a Delta table."""
    return _delta_rs_table(table_uri).version()


def table_exists(table_uri: str) -> bool:
    from deltalake import DeltaTable

    uri = _delta_rs_uri(table_uri)
    return DeltaTable.is_deltatable(uri, storage_options=_storage_options(uri))


def snapshot_files(table_uri: str, version: int | None = None) -> tuple[int, list[str]]:
    """(version, data file URIs) of one snapshot: exactly the files that hold that version's rows.

    A table directory also holds files of older versions; readers that must see one version (Petastorm) read
    these files only. kuberec's tables have deletion vectors off, so whole files are live rows.
    """
    table = _delta_rs_table(table_uri, version)
    if table.metadata().configuration.get("delta.enableDeletionVectors") == "true":
        raise KuberecError(f"{table_uri} v{table.version()} uses deletion vectors; whole-file readers would see "
                           "deleted rows. Rewrite it with deletion vectors off (kuberec's writers never enable them).")
    # delta-rs gives local files as bare paths; readers such as Petastorm want a scheme on every URI.
    files = [uri if "://" in uri else "file://" + uri for uri in table.file_uris()]
    return table.version(), sorted(files)


def history(table_uri: str, limit: int | None = None) -> list[dict]:
    """Commit history, newest first: version, timestamp, operation and its metrics."""
    return _delta_rs_table(table_uri).history(limit)


def rows_added_since(spark: "SparkSession", table_uri: str, version: int,
                     until: int | None = None, key: str = "item_id") -> "DataFrame":
    """Rows inserted after `version` up to `until` (default: latest), from the table's change data feed.

    Each row carries `_commit_version`, so callers record exactly which version they caught up to. Rows inserted
    and later deleted in the range are dropped; an item whose content changed appears as an update, not here.
    """
    from pyspark.sql import functions as F

    latest = table_version(table_uri)
    until = latest if until is None else until
    if version < 0 or version > latest or until > latest or until < version:
        raise TableNotFoundError(f"{table_uri}: cannot diff v{version}..v{until}; versions run 0..{latest}")
    empty_schema = spark.read.format("delta").load(table_uri).schema
    if until == version:
        return spark.createDataFrame([], empty_schema).withColumn("_commit_version", F.lit(None).cast("long"))
    changes = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", version + 1)
        .option("endingVersion", until)
        .load(table_uri)
    )
    inserted = changes.where(F.col("_change_type") == "insert")
    deleted = changes.where(F.col("_change_type") == "delete").select(key).distinct()
    return inserted.join(deleted, on=key, how="left_anti").drop("_change_type", "_commit_timestamp")
