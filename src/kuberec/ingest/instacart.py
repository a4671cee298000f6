"""Spark job: the six Instacart CSV files -> bronze Delta tables, one per file (`kuberec ingest instacart`).

Tables (`settings.table_uri(name)`): instacart_bronze_orders, instacart_bronze_order_products_prior,
instacart_bronze_order_products_train, instacart_bronze_products, instacart_bronze_aisles,
instacart_bronze_departments. Columns are the file's columns with the types of kuberec.datasets.instacart (INT ids
and counts, DOUBLE days_since_prior_order (NULL for a first order), STRING eval_set and names); nothing is added.

- Validation first: the whole directory is checked (`validate_instacart`) before any table is written; a bad file
  raises InstacartDataError naming file, row and column, and no table changes.
- Idempotent: each commit's userMetadata records the SHA-256 of the file it was built from. A file whose hash equals
  the one in its table's latest commit is skipped, so re-running with the same files commits nothing.
- Atomic per table: a changed file replaces its table's content in a single overwrite commit, so readers see the old
  or the new content, never a mix, and older versions stay readable (time travel).
- Complete ingestions: the six tables are not one transaction, so a run ends by appending one row to
  `instacart_bronze_ingestions` with the version of each of the six tables and the files' hashes. The gold step
  (`kuberec features instacart`) reads the bronze tables at the versions of the latest such row, so it never
  mixes the tables of an ingestion that is still running (or died half-way) with older ones.
- Concurrent runs: when two runs write one table at once, the loser of Delta's commit race keeps the winner's commit
  if it came from the same file (same hash); from a different file, the loser stops with ConcurrentWriteError naming
  the table and records no ingestion (the last complete ingestion stays the one the gold step reads).

Runs the same locally (`kuberec ingest instacart`) and as a SparkApplication driver
(`python -m kuberec.ingest.instacart --source s3a://...`). The source is a local directory, or a prefix in object
storage (where `kuberec.lake.raw.stage` puts a local directory for pods): the driver then checks a downloaded copy
and Spark's executors read the objects themselves.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kuberec.datasets.instacart import (
    FILES,
    CsvFile,
    InstacartSummary,
    missing_files,
    read_header,
    validate_instacart,
)
from kuberec.lake.delta import append_rows, history, overwrite_table, table_exists, table_version
from kuberec.lake.raw import fetch, file_sha256, is_remote
from kuberec.settings import Settings, load_settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

STEP = "ingest-instacart"
BRONZE_SCHEMA_VERSION = 1


def bronze_table(spec: CsvFile) -> str:
    """Table name of one file: orders.csv -> instacart_bronze_orders, order_products__prior.csv -> ..._prior."""
    return "instacart_bronze_" + spec.name.removesuffix(".csv").replace("__", "_")


BRONZE_TABLES: dict[str, str] = {spec.name: bronze_table(spec) for spec in FILES}
INGESTIONS_TABLE = "instacart_bronze_ingestions"  # one row per complete ingestion (see the module docstring)


def last_commit_metadata(table_uri: str) -> dict[str, Any] | None:
    """The JSON userMetadata kuberec wrote with the table's latest commit (None: no table, or none recorded)."""
    if not table_exists(table_uri):
        return None
    entries = history(table_uri, 1)
    raw = entries[0].get("userMetadata") if entries else None
    try:
        return json.loads(raw) if raw else None
    except json.JSONDecodeError:  # written by something else
        return None


@dataclass
class IngestResult:
    versions: dict[str, int] = field(default_factory=dict)  # table name -> version after the run
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall time


@dataclass
class IngestPlan:
    """What a run will do, decided without Spark: which files changed, and the validated directory's summary."""

    location: str  # where Spark reads the files: the local directory, or the object-storage prefix
    source: Path  # the files as checked here: `location` itself, or a downloaded copy of it
    hashes: dict[str, str]  # file name -> SHA-256
    todo: list[CsvFile]  # files whose table must be (re)written
    summary: InstacartSummary | None  # None when nothing is to be written (not validated again)
    result: IngestResult


def plan_ingest(settings: Settings, source: str | Path, scratch: Path | None = None) -> IngestPlan:
    """Hash the files, compare with what each bronze table recorded, and validate the directory if anything changed.

    A source in object storage is first copied into `scratch` (a local directory) and checked there.
    Raises InstacartDataError for a bad directory; nothing has been written at that point.
    """
    if is_remote(source):
        if scratch is None:
            raise ValueError("a source in object storage needs a local scratch directory to be checked in")
        location, source = str(source).rstrip("/"), fetch(str(source), scratch, settings.s3_endpoint)
    else:
        source = Path(source)
        location = str(source.absolute())
    result = IngestResult()
    if not source.is_dir() or missing_files(source):
        validate_instacart(source)  # raises the precise error (not a directory / which files are missing)
    began = time.monotonic()
    hashes = {spec.name: file_sha256(source / spec.name) for spec in FILES}
    result.seconds["hash"] = round(time.monotonic() - began, 2)
    todo = []
    for spec in FILES:
        uri = settings.table_uri(BRONZE_TABLES[spec.name])
        recorded = last_commit_metadata(uri) or {}
        if recorded.get("sha256") == hashes[spec.name] and recorded.get("schema") == BRONZE_SCHEMA_VERSION:
            result.unchanged.append(BRONZE_TABLES[spec.name])
            result.versions[BRONZE_TABLES[spec.name]] = table_version(uri)
        else:
            todo.append(spec)
    summary = None
    if todo:
        began = time.monotonic()
        summary = validate_instacart(source)
        result.seconds["validate"] = round(time.monotonic() - began, 2)
    else:
        log.info("bronze tables unchanged: every file matches the hash recorded in its table")
    return IngestPlan(location, source, hashes, todo, summary, result)


def read_csv(spark: "SparkSession", plan: IngestPlan, spec: CsvFile) -> "DataFrame":
    """One validated file as a DataFrame with the spec's column names and types (columns found by header name)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    # The header as read here, all strings: Spark skips the header line and needs no job to infer names.
    header = T.StructType([T.StructField(name, T.StringType()) for name in read_header(plan.source / spec.name)])
    raw = (spark.read.schema(header).option("header", True).option("escape", '"').option("mode", "FAILFAST")
           .csv(f"{plan.location}/{spec.name}"))
    return raw.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in spec.spark_schema().fields])


def write_bronze(spark: "SparkSession", settings: Settings, plan: IngestPlan) -> IngestResult:
    """(Re)write the tables of the changed files, one overwrite commit each, recording the file's hash."""
    result = plan.result
    began = time.monotonic()
    for spec in plan.todo:
        name = BRONZE_TABLES[spec.name]
        uri = settings.table_uri(name)
        rows = plan.summary.rows[spec.name]
        metadata = {"step": STEP, "schema": BRONZE_SCHEMA_VERSION, "source_file": spec.name,
                    "source": plan.location, "sha256": plan.hashes[spec.name],
                    "bytes": (plan.source / spec.name).stat().st_size, "rows": rows}
        wrote = _overwrite_bronze(read_csv(spark, plan, spec), uri, metadata)
        result.versions[name] = table_version(uri)
        (result.written if wrote else result.unchanged).append(name)
        log.info("%s <- %s (%s rows): v%d%s", name, spec.name, f"{rows:,}", result.versions[name],
                 "" if wrote else ", written by another run of the same file")
    result.seconds["write"] = round(time.monotonic() - began, 2)
    return result


def _overwrite_bronze(frame: "DataFrame", uri: str, metadata: dict[str, Any]) -> bool:
    """Replace the table with `frame` unless a concurrent run of the same file already did; True when written."""
    return overwrite_table(lambda: frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
                           .option("userMetadata", json.dumps(metadata, sort_keys=True)).save(uri),
                           holds_it=lambda: (last_commit_metadata(uri) or {}).get("sha256") == metadata["sha256"],
                           what=f"writing {uri} from {metadata['source_file']}")


def latest_ingestion(settings: Settings) -> dict[str, Any] | None:
    """{"bronze": {table: version}, "sha256": {file: hash}, ...} of the latest complete ingestion, or None."""
    return last_commit_metadata(settings.table_uri(INGESTIONS_TABLE))


def record_ingestion(settings: Settings, plan: IngestPlan, versions: dict[str, int]) -> bool:
    """Append the row saying the six tables at `versions` are one complete ingestion of `plan`'s files, unless the
    latest row already says so (a re-run of the same files commits nothing). True when a row was appended."""
    entry = {"step": STEP, "bronze": dict(sorted(versions.items())), "sha256": dict(sorted(plan.hashes.items()))}
    if {k: v for k, v in (latest_ingestion(settings) or {}).items() if k in entry} == entry:
        return False
    from datetime import datetime, timezone

    append_rows(settings.table_uri(INGESTIONS_TABLE),
                [{"ingested_at": datetime.now(timezone.utc), "source": plan.location,
                  "bronze_versions": json.dumps(entry["bronze"]), "sha256": json.dumps(entry["sha256"])}],
                json.dumps({**entry, "source": plan.location}, sort_keys=True))
    return True


def ingest_instacart(settings: Settings, source: str | Path, spark: "SparkSession | None" = None) -> IngestResult:
    """Validate the six files under `source`, (re)write the bronze tables whose file changed and record the
    complete ingestion.

    Spark (`spark`, else a session for `settings`) is only started when a table has to be written.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kuberec-instacart-") as scratch:
        plan = plan_ingest(settings, source, Path(scratch))
        result = plan.result
        if plan.todo:
            if spark is None:
                from kuberec.lake.spark import spark_session

                spark = spark_session(settings, app_name="kuberec-ingest-instacart")
            result = write_bronze(spark, settings, plan)
        if record_ingestion(settings, plan, result.versions):
            log.info("%s: recorded the complete ingestion %s", INGESTIONS_TABLE, result.versions)
        return result


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m kuberec.ingest.instacart", description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(settings.data_dir / "instacart-synth"),
                        help="directory (or s3a:// prefix) with the six Instacart CSV files (default: "
                             "<home>/data/instacart-synth, where `kuberec data instacart-synth` writes)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = ingest_instacart(settings, args.source)
    print(json.dumps({"step": STEP, **result.__dict__}, sort_keys=True))
    return 0


if __name__ == "__main__":
    from kuberec.entrypoint import run_program

    run_program("kuberec.ingest.instacart", main)
