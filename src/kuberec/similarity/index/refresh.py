"""Step: re-index without retraining (`kuberec index refresh`).

Loads a registered similarity model (default: `champion`), finds the catalog rows inserted into its Delta table
since the version its index was built from, embeds only those with the model's own weights, adds them to the index
and registers the result as a new model version (same embedding model, grown index, new table version recorded).
Whether `champion` moves to it is a policy (kuberec.champion; `--champion`): never (the CLI's default: a refresh
can be checked, or served by version number, before it is promoted), always, or gate (the catalog refresh
pipeline's): the grown index must hold the champion's precision@5 within the tolerance, both measured here with the
labelled test-split rows of the indexed table version as queries against each index, as served (HNSW, the query
item itself left out; unlabelled neighbours are neither right nor wrong, so they are skipped). Earlier versions are
untouched and stay loadable.

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

import numpy as np

from kuberec import tracking
from kuberec.champion import DEFAULT_TOLERANCE, ChampionDecision, check_policy, decide, record_decision
from kuberec.errors import KuberecError
from kuberec.settings import Settings
from kuberec.similarity.config import EXPERIMENT, HEADLINE_METRIC, REGISTERED_NAME
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
    decision: ChampionDecision | None = None  # None: nothing new, nothing decided
    run_id: str = ""  # the MLflow run that logged the new version ("" when none was logged)

    @property
    def version(self) -> int | None:
        return self.new_version

    @property
    def model_uri(self) -> str:
        return tracking.model_uri(self.name, version=self.new_version) if self.new_version else ""


def _earlier_refresh(settings: Settings, name: str, source_version: int | str, table_version: int):
    """A version already registered from `source_version` and current with `table_version`, if any."""
    versions = tracking.client(settings).search_model_versions(f"name = '{name}'")
    matches = [v for v in versions if v.tags.get(SOURCE_VERSION_TAG) == str(source_version)
               and v.tags.get(INDEX_VERSION_TAG) == str(table_version)]
    return max(matches, key=lambda v: int(v.version)) if matches else None


QUERY_SPLIT = "test"
PRECISION_K = 5  # the headline metric's k
NEIGHBOURS_FETCHED = 4 * PRECISION_K  # room for unlabelled neighbours before the first 5 labelled ones


def index_precision(index, embed, table_uri: str, version: int, max_queries: int | None = None) -> float:
    """precision@5 of the labelled `test` rows of one table version as queries against `index` (module doc): of
    each query's nearest neighbours (itself left out), the first 5 labelled ones."""
    from kuberec.lake import feed

    queries = feed.load_arrays(table_uri, version=version, split=QUERY_SPLIT)
    labelled = np.flatnonzero(queries.labels >= 0)
    if max_queries is not None and max_queries < len(labelled):
        labelled = np.sort(np.random.default_rng(0).choice(labelled, size=max_queries, replace=False))
    if not len(labelled):
        raise KuberecError(f"{table_uri} v{version} has no labelled {QUERY_SPLIT} rows to score an index with")
    found, _ = index.search(embed(queries.images[labelled]), NEIGHBOURS_FETCHED, exclude=queries.item_ids[labelled])
    neighbour_labels = np.full(found.shape, -1, np.int64)
    neighbour_labels[found >= 0] = index.labels(found[found >= 0])[0]
    judged = (neighbour_labels >= 0) & (np.cumsum(neighbour_labels >= 0, axis=1) <= PRECISION_K)
    hits = (neighbour_labels == queries.labels[labelled][:, None]) & judged
    scored = judged.any(axis=1)
    return float(np.mean(hits[scored].sum(axis=1) / judged[scored].sum(axis=1)))


def refresh(settings: Settings, *, name: str = REGISTERED_NAME, version: int | None = None, alias: str | None = None,
            policy: str = "never", tolerance: float = DEFAULT_TOLERANCE, table_uri: str | None = None,
            max_queries: int | None = None) -> RefreshResult:
    """Add catalog rows that arrived since the model's index was built; register the grown model; `policy` decides
    whether it becomes champion (module doc; `max_queries`: a seeded sample of the gate's queries)."""
    check_policy(policy, tolerance)
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
    indexed_version = index.table_version
    current = tracking.alias_version(settings, name)

    def score(scored_index, embed) -> float:
        return index_precision(scored_index, embed, table_uri, indexed_version, max_queries)

    champion_score = None
    if policy == "gate" and current is not None:  # scored before the source's index grows in place
        champion = recommender if current.version == source.version else \
            load_recommender(settings, name, version=current.version)[0].unwrap_python_model()
        champion_score = score(champion.index, champion.embed)
    fresh = CatalogRows(rows.item_ids[new], rows.labels[new], rows.images[new], rows.version, rows.splits)
    log.info("embedding %d new catalog items (%s v%d..v%d)", len(fresh.item_ids), table_uri, indexed_version,
             latest)
    index.add(embed_in_batches(recommender.embed, fresh.images), fresh.frame(), table_version=latest)
    decision = decide(policy, metric=f"index_{HEADLINE_METRIC}",
                      champion_version=int(current.version) if current else None,
                      score_challenger=lambda: score(index, recommender.embed),
                      score_champion=lambda: champion_score, tolerance=tolerance, hold=True)
    log.info("refresh of %s v%s: %s", name, source.version, decision.summary())
    done = _earlier_refresh(settings, name, source.version, latest)
    if done is not None:
        # The same source already caught up to this table version: hand that version back instead of a twin.
        log.info("%s version %s already holds %s v%s refreshed to table v%d", name, done.version, name,
                 source.version, latest)
        if decision.promote:
            tracking.set_alias(settings, name, done.version)
        champion_now = tracking.alias_version(settings, name)
        return RefreshResult(name, int(source.version), int(done.version), fresh.item_ids.tolist(), indexed_version,
                             latest, len(index), champion_now is not None and champion_now.version == done.version,
                             reused=True, decision=decision, run_id=done.run_id)
    with tracking.start_run(settings, EXPERIMENT, run_name="index-refresh",
                            lineage={table_uri: latest}):
        record_decision(decision)
        registered = log_similarity_model(
            settings, recommender.embedding_model_path, index, name=name,
            training_run_id=source.tags.get(TRAINING_RUN_TAG), set_champion=decision.promote,
            tags={SOURCE_VERSION_TAG: str(source.version), **decision.tags()})
    return RefreshResult(name, int(source.version), registered.version, fresh.item_ids.tolist(), indexed_version,
                         latest, len(index), registered.champion, decision=decision, run_id=registered.run_id)
