"""The data steps of both pipelines as typed functions: what the CLI verbs and the KFP components call.

    catalog:    ingest_fashion_mnist, ingest_images -> the catalog Delta table
    instacart:  synthesize -> ingest_instacart -> build_features -> the gold Delta tables

The ingestion and feature steps launch their Spark job through the configured backend (local processes or
SparkApplications); every step returns where the data is (a directory, Delta table versions), which the next step
takes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kuberec.backends import SparkJob, get_backend
from kuberec.ingest.catalog import TABLE_NAME as CATALOG_TABLE
from kuberec.lake.delta import TableRef, s3_filesystem, table_version
from kuberec.settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)

SYNTH_DIR = "instacart-synth"  # under <home>/data, where `kuberec data instacart-synth` writes too


def acquire_fashion_mnist(settings: Settings | None = None, source: str | None = None) -> Path:
    from kuberec.datasets.fashion_mnist import acquire

    return acquire(settings or load_settings(), Path(source) if source else None)


def stage_in_lake(settings: Settings, directory: Path, name: str) -> str:
    """Copy the files of a local directory to `<lake>/raw/<name>/` in object storage, where pods can read them;
    returns that prefix as Spark names it (s3a://). A file already there with the same size is not copied again."""
    from pyarrow import fs

    if settings.lake_is_local:
        raise SettingsError(f"pods cannot read the local lake {settings.lake_uri!r}; set KUBEREC_LAKE to an s3:// "
                            f"location (and KUBEREC_S3_ENDPOINT for MinIO)")
    prefix = settings.table_uri(f"raw/{name}")
    store = s3_filesystem(settings.s3_endpoint)
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
    """Acquire (verify) Fashion-MNIST and MERGE it into the catalog table; returns the table and its version."""
    settings = settings or load_settings()
    source = source or str(acquire_fashion_mnist(settings))
    if settings.backend == "kubernetes" and "://" not in source:
        # The Spark driver runs in a pod of its own: it reads the files from the lake, not from this machine.
        source = stage_in_lake(settings, Path(source), "fashion-mnist")
    table = settings.table_uri(CATALOG_TABLE)
    args = ["--source", source, "--table", table]
    args += ["--max-per-split", str(max_per_split)] if max_per_split else []
    get_backend(settings).run_spark(SparkJob("ingest-fashion-mnist", "kuberec.ingest.fashion_mnist", tuple(args)))
    return TableRef(table, table_version(table))


def ingest_images(settings: Settings | None, paths: list[str], label: int | None = None) -> TableRef:
    """Append catalog images (PNG/JPEG); returns the catalog table and its new version."""
    settings = settings or load_settings()
    table = settings.table_uri(CATALOG_TABLE)
    args = [*paths, "--table", table] + ([] if label is None else ["--label", str(label)])
    get_backend(settings).run_spark(SparkJob("ingest-images", "kuberec.ingest.images", tuple(args)))
    return TableRef(table, table_version(table))


def synthesize(settings: Settings, users: int, seed: int = 0) -> str:
    """Generated Instacart CSV files of `users` users under <home>/data/instacart-synth; returns the directory.

    Reused when its manifest says the same users, seed and generator version made it (the generator writes the
    directory atomically, so a manifest means complete files); otherwise generated again.
    """
    from kuberec.datasets.instacart import missing_files
    from kuberec.datasets.instacart_synth import GENERATOR_VERSION, MANIFEST, default_products, generate

    out = settings.data_dir / SYNTH_DIR
    wanted = {"users": users, "seed": seed, "products": default_products(users),
              "generator_version": GENERATOR_VERSION}
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = {}
    if isinstance(manifest, dict) and {key: manifest.get(key) for key in wanted} == wanted \
            and not missing_files(out):
        log.info("reusing generated Instacart data in %s (%d users, seed %d)", out, users, seed)
    else:
        generate(out, users, seed=seed)
    return str(out)


def ingest_instacart(settings: Settings, source: str) -> dict[str, int]:
    """Spark job: the six Instacart CSV files in `source` -> bronze Delta tables; returns {table name: version}."""
    from kuberec.ingest.instacart_features import bronze_versions

    job = SparkJob("ingest-instacart", "kuberec.ingest.instacart", ("--source", str(Path(source).absolute())))
    get_backend(settings).run_spark(job)
    return bronze_versions(settings)


def build_features(settings: Settings, force: bool = False) -> TableRef:
    """Spark job: bronze -> gold feature, label and split tables; returns the gold examples table's version."""
    from kuberec.ingest.instacart_features import EXAMPLES_TABLE

    job = SparkJob("features-instacart", "kuberec.ingest.instacart_features", ("--force",) if force else ())
    get_backend(settings).run_spark(job)
    uri = settings.table_uri(EXAMPLES_TABLE)
    return TableRef(uri, table_version(uri))
