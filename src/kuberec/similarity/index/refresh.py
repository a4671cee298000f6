"""Step: re-index without retraining (`kuberec index refresh`).

Loads a registered similarity model (default: `champion`), finds the catalog rows inserted into its Delta table
since the version its index was built from, embeds only those with the model's own weights, adds them to the index
and registers the result as a new model version (same embedding model, grown index, new table version recorded).
The `champion` alias moves to it only with `--set-champion`; by default it stays where it is, so a refresh can be
checked (or served by version number) before it is promoted. Earlier versions are untouched and stay loadable.

New rows come from `kuberec.lake.delta.rows_added_since` (the change data feed, read without a JVM): inserts in
(indexed version, latest], minus rows deleted again in that range, restricted to the index's splits. Items already
indexed are skipped, so no item is ever indexed twice; a run that finds nothing new registers nothing, and re-
running a refresh of the same source version up to the same table version returns the version registered the first
time instead of a twin. Rows deleted or changed in the table are not removed from the index (HNSW cannot drop
vectors): rebuild with `kuberec index build` for that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kuberec import tracking
from kuberec.errors import KuberecError
from kuberec.settings import Settings
from kuberec.similarity.config import REGISTERED_NAME
from kuberec.similarity.index.catalog import CatalogRows, catalog_rows_added_since, embed_in_batches
from kuberec.similarity.pyfunc import (
    INDEX_VERSION_TAG,
    SOURCE_VERSION_TAG,
    TRAINING_RUN_TAG,
    load_recommender,
    log_similarity_model,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshResult:
    name: str
    source_version: int
    new_version: int | None  # None: nothing new in the table, nothing registered
    added_item_ids: list[int]
    indexed_table_version: int  # the table version the source index was built from
    table_version: int  # the table version the new index is current with
    items: int  # items in the new index (or the source index when nothing changed)
    champion: bool  # the new version is now champion
    reused: bool = False  # an earlier refresh of the same source to the same table version was returned


def _earlier_refresh(settings: Settings, name: str, source_version: int | str, table_version: int):
    """A version already registered from `source_version` and current with `table_version`, if any."""
    versions = tracking.client(settings).search_model_versions(f"name = '{name}'")
    matches = [v for v in versions if v.tags.get(SOURCE_VERSION_TAG) == str(source_version)
               and v.tags.get(INDEX_VERSION_TAG) == str(table_version)]
    return max(matches, key=lambda v: int(v.version)) if matches else None


def refresh(settings: Settings, *, name: str = REGISTERED_NAME, version: int | None = None, alias: str | None = None,
            set_champion: bool = False, table_uri: str | None = None) -> RefreshResult:
    """Add catalog rows that arrived since the model's index was built; register the grown model. See module doc."""
    pyfunc_model, source = load_recommender(settings, name, version=version, alias=alias)
    recommender = pyfunc_model.unwrap_python_model()
    index = recommender.index
    table_uri = table_uri or index.table_uri
    if not table_uri or index.table_version is None:
        raise KuberecError(f"{name} version {source.version} does not record which table version its index was "
                           "built from; rebuild it with `kuberec index build`")
    from kuberec.lake.delta import table_version

    latest = table_version(table_uri)
    rows = catalog_rows_added_since(table_uri, index.table_version, latest, splits=index.splits)
    new = ~index.contains(rows.item_ids)
    if (~new).any():
        log.info("%d added rows are already indexed (skipped): %s", int((~new).sum()),
                 rows.item_ids[~new][:10].tolist())
    if not new.any():
        log.info("%s v%s is up to date: no new catalog rows in %s v%d..v%d", name, source.version, table_uri,
                 index.table_version, latest)
        return RefreshResult(name, int(source.version), None, [], index.table_version, index.table_version,
                             len(index), False)
    done = _earlier_refresh(settings, name, source.version, latest)
    if done is not None:
        # The same source already caught up to this table version: hand that version back instead of a twin.
        log.info("%s version %s already holds %s v%s refreshed to table v%d", name, done.version, name,
                 source.version, latest)
        if set_champion:
            tracking.set_alias(settings, name, done.version)
        champion = tracking.alias_version(settings, name)
        return RefreshResult(name, int(source.version), int(done.version), rows.item_ids[new].tolist(),
                             index.table_version, latest, len(index) + int(new.sum()),
                             champion is not None and champion.version == done.version, reused=True)
    fresh = CatalogRows(rows.item_ids[new], rows.labels[new], rows.images[new], rows.version, rows.splits)
    log.info("embedding %d new catalog items (%s v%d..v%d)", len(fresh.item_ids), table_uri, index.table_version,
             latest)
    vectors = embed_in_batches(recommender.embed, fresh.images)
    indexed_version = index.table_version
    index.add(vectors, fresh.frame(), table_version=latest)
    registered = log_similarity_model(
        settings, recommender.embedding_model_path, index, name=name,
        training_run_id=source.tags.get(TRAINING_RUN_TAG), set_champion=set_champion, run_name="index-refresh",
        tags={SOURCE_VERSION_TAG: str(source.version)})
    return RefreshResult(name, int(source.version), registered.version, fresh.item_ids.tolist(), indexed_version,
                         latest, len(index), registered.champion)
