"""Delta table versions, snapshots and diffs, and the retry every catalog writer commits through.

All reads here (a version number, the files of a snapshot, the rows added since a version) use delta-rs, which needs
no JVM; diffs read the change data feed, which kuberec's tables record from their first version.
`retry_on_conflict` reruns a write whose commit lost a race with another writer (Delta's optimistic concurrency);
the catalog's writers use it. Whole-table overwrites (the Instacart tables) go through `overwrite_table`: a lost race
is fine when the winner wrote the same thing, and an error otherwise (rewriting would make the last writer win).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from kuberec.errors import KuberecError

log = logging.getLogger(__name__)

T = TypeVar("T")
CONFLICT_ATTEMPTS = 6  # with the backoff below: up to ~20 s of waiting in all
CONFLICT_BASE_DELAY_S = 0.5


@dataclass(frozen=True)
class TableRef:
    """One version of one Delta table: what a step read or wrote (MLflow lineage records these)."""

    uri: str
    version: int

    def __str__(self) -> str:
        return f"{self.uri}@v{self.version}"


class ConcurrentWriteError(KuberecError):
    """Other writers kept committing to the table first; nothing of this write was committed."""


def retry_on_conflict(write: Callable[[], T], what: str, *, attempts: int = CONFLICT_ATTEMPTS,
                      base_delay_s: float = CONFLICT_BASE_DELAY_S) -> T:
    """`write()`, run again when its commit conflicts with one another writer made since it read the table.

    `write` must read what it depends on (the snapshot, the next free id) each time it runs: a rerun then starts
    from the other writer's commit, so both writes land. Waits grow exponentially with jitter, so writers that
    collided do not collide again in step. After `attempts` lost races: ConcurrentWriteError naming the conflict.
    """
    conflicts = _conflict_types()
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except conflicts as err:
            conflict = type(err).__name__
            if attempt == attempts:
                raise ConcurrentWriteError(
                    f"{what}: another writer committed to the table first {attempts} times in a row ({conflict}); "
                    f"nothing of this write was committed. Run it again once the other writes are done (each "
                    f"kuberec write is idempotent).") from None
            delay = base_delay_s * 2 ** (attempt - 1) * (1 + random.random())
            log.warning("%s: %s (another writer committed first); retrying from the new version in %.1f s "
                        "(attempt %d of %d)", what, conflict, delay, attempt + 1, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")


def overwrite_table(write: Callable[[], None], *, holds_it: Callable[[], bool], what: str,
                    force: bool = False) -> bool:
    """Run `write()`, a whole-table overwrite, unless the table already holds what it would write; True when it
    committed.

    `holds_it()` says whether the table's latest commit already holds this write's content (the same step on the
    same inputs: run twice, run at once, or stopped between tables). It is asked first (skipped when `force`), and
    again when another writer committed first (a Delta conflict): then nothing more is needed and this returns
    False. A lost race to different content is ConcurrentWriteError: overwriting again would silently replace the
    other writer's data, so the caller has to decide.
    """
    if not force and holds_it():
        return False
    conflicts = _conflict_types()  # before the write: importing them is what makes PySpark raise them
    try:
        write()
        return True
    except conflicts as err:
        if holds_it():
            log.info("%s: another writer committed the same content first (%s); keeping its commit", what,
                     type(err).__name__)
            return False
        raise ConcurrentWriteError(
            f"{what}: another writer replaced the table with different content while this one was writing "
            f"({type(err).__name__}); nothing of this write was committed. Run it again once the other write is "
            "done (each kuberec write is idempotent).") from None


def _conflict_types() -> tuple[type[Exception], ...]:
    import delta.exceptions
    import delta.exceptions.captured  # noqa: F401  (from then on PySpark raises Delta's conflicts as these classes)

    # Every commit conflict Delta reports (its Python classes are siblings, not subclasses of one base).
    return tuple(getattr(delta.exceptions, name) for name in delta.exceptions.__all__)


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


def s3_filesystem(endpoint: str | None = None):
    """pyarrow's S3 filesystem for the lake's object store (`endpoint`, default KUBEREC_S3_ENDPOINT, for MinIO;
    credentials from the AWS_* variables), for readers that take a pyarrow filesystem (Petastorm, file copies)."""
    import os

    from pyarrow import fs

    endpoint = os.environ.get("KUBEREC_S3_ENDPOINT", "") if endpoint is None else endpoint
    options = {"region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    return fs.S3FileSystem(**options)


def table_version(table_uri: str) -> int:
    """Current (latest committed) version of a Delta table."""
    return _delta_rs_table(table_uri).version()


def table_exists(table_uri: str) -> bool:
    from deltalake import DeltaTable

    uri = _delta_rs_uri(table_uri)
    return DeltaTable.is_deltatable(uri, storage_options=_storage_options(uri))


def append_rows(table_uri: str, rows: Sequence[dict[str, Any]], user_metadata: str) -> int:
    """Append `rows` (one dict per row, same keys) in one commit whose userMetadata is `user_metadata`, with
    delta-rs (no JVM; the table is created on the first call); returns the new version. For small bookkeeping
    tables only: delta-rs retries an append that races another append."""
    import pyarrow as pa
    from deltalake import CommitProperties, write_deltalake

    uri = _delta_rs_uri(table_uri)
    write_deltalake(uri, pa.Table.from_pylist(list(rows)), mode="append", storage_options=_storage_options(uri),
                    commit_properties=CommitProperties(custom_metadata={"userMetadata": user_metadata}))
    return table_version(table_uri)


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


def rows_added_since(table_uri: str, version: int, until: int | None = None, key: str = "item_id",
                     columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows inserted after `version` up to `until` (default: latest), from the table's change data feed, by `key`.

    Each row carries `_commit_version`, so callers record exactly which version they caught up to. Rows inserted
    and later deleted in the range are dropped; an item whose content changed appears as an update, not here.
    Read with delta-rs: no JVM needed (the re-index step runs in a light process).
    """
    table = _delta_rs_table(table_uri)
    latest = table.version()
    until = latest if until is None else until
    if version < 0 or version > latest or not version <= until <= latest:
        raise TableNotFoundError(f"{table_uri}: cannot diff v{version}..v{until}; versions run 0..{latest}")
    if until == version:
        return []
    if table.metadata().configuration.get("delta.enableChangeDataFeed") != "true":
        raise KuberecError(f"{table_uri} does not record a change data feed (delta.enableChangeDataFeed), so rows "
                           "added since a version cannot be found")
    wanted = list(columns) if columns else [field.name for field in table.schema().fields]
    wanted = [key, *(c for c in wanted if c != key)]
    inserted: dict[Any, dict[str, Any]] = {}
    deleted: set[Any] = set()
    for batch in table.load_cdf(starting_version=version + 1, ending_version=until,
                                columns=[*wanted, "_change_type", "_commit_version"]):
        # arro3 arrays: delta-rs hands out view types that pyarrow 14 cannot import, so go through Python lists.
        values = {name: batch.column(name).to_pylist() for name in [*wanted, "_change_type", "_commit_version"]}
        for i, kind in enumerate(values["_change_type"]):
            item = values[key][i]
            if kind == "insert":
                inserted[item] = {name: values[name][i] for name in [*wanted, "_commit_version"]}
            elif kind == "delete":
                deleted.add(item)
    return [row for item, row in sorted(inserted.items()) if item not in deleted]
