"""Pipeline steps as typed functions: what the CLI verbs and the KFP components call.

Each step resolves settings, launches its job through the configured backend (local processes or Kubernetes
custom resources) and returns plain, typed results (table URIs and versions, run ids) that the next step takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kuberec.backends import SparkJob, get_backend
from kuberec.settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableRef:
    """One version of one Delta table: what a step read or wrote (MLflow lineage records these)."""

    uri: str
    version: int

    def __str__(self) -> str:
        return f"{self.uri}@v{self.version}"


def acquire_fashion_mnist(settings: Settings | None = None, source: str | None = None) -> Path:
    from kuberec.datasets.fashion_mnist import acquire

    return acquire(settings or load_settings(), Path(source) if source else None)


def stage_in_lake(settings: Settings, directory: Path, name: str) -> str:
    """Copy the files of a local directory to `<lake>/raw/<name>/` in object storage, where pods can read them;
    returns that prefix as Spark names it (s3a://). A file already there with the same size is not copied again."""
    import os

    from pyarrow import fs

    if settings.lake_is_local:
        raise SettingsError(f"pods cannot read the local lake {settings.lake_uri!r}; set KUBEREC_LAKE to an s3:// "
                            f"location (and KUBEREC_S3_ENDPOINT for MinIO)")
    prefix = settings.table_uri(f"raw/{name}")
    options: dict[str, str] = {}
    if settings.s3_endpoint:
        options = {"endpoint_override": settings.s3_endpoint,
                   "scheme": "http" if settings.s3_endpoint.startswith("http://") else "https",
                   "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    store = fs.S3FileSystem(**options)
    key_prefix = prefix.split("://", 1)[1]
    existing = {info.base_name: info.size for info in store.get_file_info(fs.FileSelector(key_prefix,
                                                                                          allow_not_found=True))}
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        if existing.get(path.name) == path.stat().st_size:
            continue
        log.info("staging %s in %s", path.name, prefix)
        fs.copy_files(str(path), f"{key_prefix}/{path.name}", source_filesystem=fs.LocalFileSystem(),
                      destination_filesystem=store)
    return prefix


def ingest_fashion_mnist(settings: Settings | None = None, source: str | None = None,
                         max_per_split: int | None = None) -> TableRef:
    """Acquire (verify) Fashion-MNIST and MERGE it into the catalog table; returns the table version."""
    from kuberec.ingest.catalog import TABLE_NAME
    from kuberec.lake.delta import table_version

    settings = settings or load_settings()
    source = source or str(acquire_fashion_mnist(settings))
    if settings.backend == "kubernetes" and "://" not in source:
        # The Spark driver runs in a pod of its own: it reads the files from the lake, not from this machine.
        source = stage_in_lake(settings, Path(source), "fashion-mnist")
    table = settings.table_uri(TABLE_NAME)
    args = ["--source", source, "--table", table]
    args += ["--max-per-split", str(max_per_split)] if max_per_split else []
    get_backend(settings).run_spark(SparkJob("ingest-fashion-mnist", "kuberec.ingest.fashion_mnist", tuple(args)))
    return TableRef(table, table_version(table))


def ingest_images(settings: Settings | None, paths: list[str], label: int | None = None) -> TableRef:
    """Append catalog images (PNG/JPEG); returns the catalog table's new version."""
    from kuberec.ingest.catalog import TABLE_NAME
    from kuberec.lake.delta import table_version

    settings = settings or load_settings()
    table = settings.table_uri(TABLE_NAME)
    args = [*paths, "--table", table] + ([] if label is None else ["--label", str(label)])
    get_backend(settings).run_spark(SparkJob("ingest-images", "kuberec.ingest.images", tuple(args)))
    return TableRef(table, table_version(table))
