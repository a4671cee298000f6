"""Components for the catalog table (Fashion-MNIST + catalog growth) and its index refresh."""

from typing import NamedTuple

from kfp.dsl import Markdown, Model, Output

from components import component


@component
def ingest_fashion_mnist(max_per_split: int) -> NamedTuple("CatalogTable", table_uri=str, table_version=int):
    """Verify Fashion-MNIST and MERGE it into the Delta catalog table (Spark job); 0 = all images."""
    from collections import namedtuple

    from kuberec.ingest import steps

    table = steps.ingest_fashion_mnist(max_per_split=max_per_split or None)
    return namedtuple("CatalogTable", ["table_uri", "table_version"])(table.uri, table.version)


@component
def ingest_staged_images(staging: str) -> NamedTuple("CatalogTable", table_uri=str, table_version=int, ingested=int):
    """Spark job: append the PNG/JPEG files under `staging` ("" = <lake>/staging/catalog) to the catalog table and
    move them to <lake>/staging/catalog-ingested; no job when nothing is staged. Returns the catalog table and the
    number of files taken."""
    from collections import namedtuple

    from kuberec.ingest import steps
    from kuberec.settings import load_settings

    table, files = steps.ingest_staged_images(load_settings(), staging)
    return namedtuple("CatalogTable", ["table_uri", "table_version", "ingested"])(table.uri, table.version,
                                                                                   len(files))


@component
def refresh_index(model_name: str, champion: str, champion_tolerance: float, eval_queries: int,
                  model: Output[Model], report: Output[Markdown], kfp_run_id: str = "",
                  kfp_run_name: str = "") -> NamedTuple("RefreshedModel", version=int, champion=bool, added=int,
                                                        decision=dict):
    """Embed the catalog rows added since the champion's index was built with the champion's weights, add them to
    its index and register the grown index as a new version (version 0: nothing new, nothing registered).
    `champion` (gate, always, never) decides whether it takes the alias: gate asks the grown index to hold the
    champion's precision@5 (eval_queries test queries, 0 = all) within champion_tolerance."""
    from collections import namedtuple

    from kuberec.reports import write_nothing_registered, write_registration
    from kuberec.settings import load_settings
    from kuberec.similarity.index.refresh import refresh

    settings = load_settings(kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name)
    result = refresh(settings, name=model_name, policy=champion, tolerance=champion_tolerance,
                     max_queries=eval_queries or None)
    if result.new_version is None:
        model.metadata.update(write_nothing_registered(
            model_name, f"no catalog rows added since table version {result.table_version} (version "
                        f"{result.source_version})", model.path, report.path))
    else:
        model.metadata.update(write_registration(settings, result, model.path, report.path))
    return namedtuple("RefreshedModel", ["version", "champion", "added", "decision"])(
        result.new_version or 0, result.champion, len(result.added_item_ids),
        result.decision.to_dict() if result.decision else {})
