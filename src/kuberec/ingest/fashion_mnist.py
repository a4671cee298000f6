"""Spark job: Fashion-MNIST IDX files -> the catalog Delta table (idempotent MERGE on item_id).

Runs the same locally (`kuberec ingest fashion-mnist`) and as a SparkApplication driver
(`python -m kuberec.ingest.fashion_mnist --source s3a://... --table s3a://...`). Spark reads the files, so local
paths and object storage work alike. Each IDX file is one gzip stream, which cannot be split, so the driver
verifies and parses the four files (30 MB) and Spark does the distributed part: the join against the table and the
MERGE.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Sequence

from kuberec.datasets.fashion_mnist import SPLIT_ID_OFFSET, SPLITS, decompress, idx_file, parse_idx
from kuberec.errors import DataError
from kuberec.ingest.catalog import TABLE_NAME, catalog_frame, catalog_rows, upsert
from kuberec.settings import load_settings

log = logging.getLogger(__name__)


def read_source(spark, source: str) -> dict[str, bytes]:
    """Raw bytes of the four IDX files (gz or plain) under `source`, keyed by file name without extension."""
    wanted = {spec.name for spec in (idx_file(s, k) for s in SPLITS for k in ("images", "labels"))}
    found: dict[str, bytes] = {}
    try:
        files = spark.sparkContext.binaryFiles(source.rstrip("/") + "/*").collect()
    except Exception as err:  # Py4J wraps Hadoop's exception (FileNotFoundException, AccessDeniedException...)
        cause = getattr(err, "java_exception", None)  # the Java exception itself says what went wrong
        detail = str(cause) if cause is not None else str(err).splitlines()[0]
        raise DataError(f"cannot read Fashion-MNIST files under {source}: {detail}") from err
    for path, content in files:
        name = os.path.basename(path).removesuffix(".gz")
        if name in wanted:
            found[name] = decompress(path, bytes(content))
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{source}: missing {', '.join(missing)}; run `kuberec data fashion-mnist` first")
    return found


def ingest_fashion_mnist(spark, source: str, table_uri: str, max_per_split: int | None = None) -> int:
    """Verify, parse and MERGE Fashion-MNIST into `table_uri`; returns the table version.

    `max_per_split` keeps only the first N images of each split (small tables for tests); ids stay the same.
    Every file is verified before anything is written.
    """
    raw = read_source(spark, source)
    rows = []
    for split in SPLITS:
        images = parse_idx(idx_file(split, "images"), raw[idx_file(split, "images").name])
        labels = parse_idx(idx_file(split, "labels"), raw[idx_file(split, "labels").name])
        n = len(labels) if max_per_split is None else min(max_per_split, len(labels))
        ids = range(SPLIT_ID_OFFSET[split], SPLIT_ID_OFFSET[split] + n)
        rows += catalog_rows(ids, split, labels[:n], images[:n], sources="fashion-mnist")
    log.info("parsed %d images; merging into %s", len(rows), table_uri)
    updates = catalog_frame(spark, rows)
    return upsert(spark, table_uri, updates)


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m kuberec.ingest.fashion_mnist", description=__doc__)
    parser.add_argument("--source", default=str(settings.data_dir / "fashion-mnist"),
                        help="directory (or s3a:// prefix) with the four IDX files")
    parser.add_argument("--table", default=settings.table_uri(TABLE_NAME))
    parser.add_argument("--max-per-split", type=int, default=None, help="only the first N images of each split")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kuberec.lake.spark import spark_session

    spark = spark_session(settings, app_name="kuberec-ingest-fashion-mnist")
    version = ingest_fashion_mnist(spark, args.source, args.table, args.max_per_split)
    print(f"{args.table} is at version {version}")
    return 0


if __name__ == "__main__":
    from kuberec.entrypoint import run_program

    run_program("kuberec.ingest.fashion_mnist", main)
