"""Pipeline steps as typed functions: what the CLI verbs and the KFP components call.

Each step resolves settings, launches its job through the configured backend (local processes or Kubernetes
custom resources) and returns plain, typed results (table URIs and versions, run ids) that the next step takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kuberec.backends import SparkJob, get_backend
from kuberec.settings import Settings, load_settings

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


def ingest_fashion_mnist(settings: Settings | None = None, source: str | None = None,
                         max_per_split: int | None = None) -> TableRef:
    """Acquire (verify) Fashion-MNIST and MERGE it into the catalog table; returns the table version."""
    from kuberec.ingest.catalog import TABLE_NAME
    from kuberec.lake.delta import table_version

    settings = settings or load_settings()
    source = source or str(acquire_fashion_mnist(settings))
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
