"""The data steps of both pipelines as typed functions: what the CLI verbs and the KFP components call.

    catalog:    ingest_fashion_mnist, ingest_images -> the catalog Delta table
    instacart:  instacart_source (given or synthesized) -> ingest_instacart -> build_features -> the gold tables

The ingestion and feature steps launch their Spark job through the configured backend (local processes or
SparkApplications); every step returns where the data is (a directory, Delta table versions), which the next step
takes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from kuberec.backends import SparkJob, get_backend
from kuberec.datasets.instacart import FILES as INSTACART_SPECS
from kuberec.ingest.catalog import TABLE_NAME as CATALOG_TABLE
from kuberec.lake.delta import TableRef, table_version
from kuberec.lake.raw import archive, is_remote, list_staged, stage, stage_directory
from kuberec.settings import Settings, load_settings

log = logging.getLogger(__name__)

SYNTH_DIR = "instacart-synth"  # under <home>/data, where `kuberec data instacart-synth` writes too
INSTACART_FILES = tuple(spec.name for spec in INSTACART_SPECS)


def acquire_fashion_mnist(settings: Settings | None = None, source: str | None = None) -> Path:
    from kuberec.datasets.fashion_mnist import acquire

    return acquire(settings or load_settings(), Path(source) if source else None)


def readable_by_jobs(settings: Settings, source: str, name: str, files: Sequence[str] = ()) -> str:
    """`source` as the backend's Spark jobs can read it: as it is for the local backend or a URI; a local directory
    staged in the lake (`<lake>/raw/<name>/<digest>`) for the Kubernetes backend, whose drivers run in pods. `files`:
    only these of the directory's files (those present; the job reports any missing)."""
    if settings.backend != "kubernetes" or is_remote(source):
        return source
    if not files:
        return stage_directory(settings, Path(source), name)
    return stage(settings, [Path(source, f) for f in files if Path(source, f).is_file()], name)


def ingest_fashion_mnist(settings: Settings | None = None, source: str | None = None,
                         max_per_split: int | None = None) -> TableRef:
    """Acquire (verify) Fashion-MNIST and MERGE it into the catalog table; returns the table and its version."""
    settings = settings or load_settings()
    source = readable_by_jobs(settings, source or str(acquire_fashion_mnist(settings)), "fashion-mnist")
    table = settings.table_uri(CATALOG_TABLE)
    args = ["--source", source, "--table", table]
    args += ["--max-per-split", str(max_per_split)] if max_per_split else []
    get_backend(settings).run_spark(SparkJob("ingest-fashion-mnist", "kuberec.ingest.fashion_mnist", tuple(args)))
    return TableRef(table, table_version(table))


def ingest_images(settings: Settings | None, paths: list[str], label: int | None = None,
                  chunk_size: int | None = None) -> TableRef:
    """Append catalog images (PNG/JPEG), `chunk_size` per Delta commit (default: the job's); returns the catalog
    table and its new version."""
    settings = settings or load_settings()
    table = settings.table_uri(CATALOG_TABLE)
    if settings.backend == "kubernetes" and not all(is_remote(path) for path in paths):
        from kuberec.ingest.images import expand_paths

        # The driver pod reads the pictures from the lake; a URI among the paths is read where it is.
        local = [path for path in paths if not is_remote(path)]
        staged = stage(settings, [Path(path) for path in expand_paths(local)], "images")
        paths = [path for path in paths if is_remote(path)] + [staged]
    args = [*paths, "--table", table] + ([] if label is None else ["--label", str(label)])
    args += [] if chunk_size is None else ["--chunk-size", str(chunk_size)]
    get_backend(settings).run_spark(SparkJob("ingest-images", "kuberec.ingest.images", tuple(args)))
    return TableRef(table, table_version(table))


STAGING = "staging/catalog"  # under the lake: where new catalog images are dropped for the catalog refresh
ARCHIVE = "staging/catalog-ingested"  # where they go once ingested


def lake_location(settings: Settings, path: str) -> str:
    """A location under the lake root (a local directory or an s3:// prefix, as users and the lake name it)."""
    return f"{settings.lake_uri.removeprefix('file://').rstrip('/')}/{path}"


def ingest_staged_images(settings: Settings, staging: str = "", archived: str = "") -> tuple[TableRef, list[str]]:
    """Ingest every PNG/JPEG under `staging` (default: <lake>/staging/catalog) into the catalog table, then move
    them under `archived` (default: <lake>/staging/catalog-ingested), so the next call takes only newer ones;
    returns the catalog table (version after the ingestion) and the files ingested (none: no Spark job ran).
    Images already in the catalog are skipped by the ingestion, so files left by a call that died before
    archiving are harmless."""
    from kuberec.ingest.images import IMAGE_SUFFIXES

    staging = staging or lake_location(settings, STAGING)
    files = list_staged(staging, IMAGE_SUFFIXES)
    if not files:
        table = settings.table_uri(CATALOG_TABLE)
        log.info("no images staged under %s", staging)
        return TableRef(table, table_version(table)), []
    table = ingest_images(settings, files)
    archive(files, staging, archived or lake_location(settings, ARCHIVE))
    return table, files


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


def instacart_source(settings: Settings, source: str, users: int, seed: int = 0) -> str:
    """Where the Instacart files are for the next step: `source` if given, else `users` generated users; on the
    Kubernetes backend staged in the lake, since the next step may run on another machine or pod."""
    return readable_by_jobs(settings, source or synthesize(settings, users, seed), "instacart", INSTACART_FILES)


def ingest_instacart(settings: Settings, source: str) -> dict[str, int]:
    """Spark job: the six Instacart CSV files in `source` (a directory, or a prefix in the lake) -> bronze Delta
    tables; returns {table name: version}."""
    from kuberec.ingest.instacart_features import bronze_versions

    source = source if is_remote(source) else str(Path(source).absolute())
    job = SparkJob("ingest-instacart", "kuberec.ingest.instacart",
                   ("--source", readable_by_jobs(settings, source, "instacart", INSTACART_FILES)))
    get_backend(settings).run_spark(job)
    return bronze_versions(settings)


def build_features(settings: Settings, force: bool = False) -> TableRef:
    """Spark job: bronze -> gold feature, label and split tables; returns the gold examples table's version."""
    from kuberec.ingest.instacart_features import EXAMPLES_TABLE

    job = SparkJob("features-instacart", "kuberec.ingest.instacart_features", ("--force",) if force else ())
    get_backend(settings).run_spark(job)
    uri = settings.table_uri(EXAMPLES_TABLE)
    return TableRef(uri, table_version(uri))
