"""The catalog refresh pipeline: images staged in the lake -> catalog table -> the champion's index grown with the
champion's weights -> a new version, champion when it holds the champion's quality. Meant to run as a recurring run
(`python -m pipelines.run refresh --schedule CRON`)."""

from typing import NamedTuple

from kfp import dsl

from components import KFP_RUN, configure_for_cluster
from components.catalog import ingest_staged_images, refresh_index
from kuberec.champion import DEFAULT_POLICY, DEFAULT_TOLERANCE
from kuberec.models import SIMILARITY


@dsl.pipeline(name="kuberec-refresh",
              description="catalog refresh: images staged in the lake -> catalog table (Spark, Delta) -> "
                          "champion's index grown without retraining -> MLflow registry, @champion behind a gate")
def refresh_pipeline(staging: str = "", eval_queries: int = 0, champion: str = DEFAULT_POLICY,
                     champion_tolerance: float = DEFAULT_TOLERANCE,
                     model_name: str = SIMILARITY.registered_name) -> NamedTuple(
        "Outputs", ingested=int, version=int, champion=bool, added=int, decision=dict):
    """Take the catalog images staged since the last refresh into the catalog and the champion's index.

    Args:
        staging: where new PNG/JPEG images are dropped (a directory or s3:// prefix); empty = <lake>/staging/catalog.
            Ingested files move to <lake>/staging/catalog-ingested.
        eval_queries: test images the gate queries the grown index with; 0 = all.
        champion: whether the grown index takes @champion: gate = when it holds the champion's precision@5 within
            champion_tolerance; always; never.
        champion_tolerance: the loss of precision@5 the gate allows a grown index.
        model_name: the MLflow registered model whose champion is refreshed.
    """
    staged = configure_for_cluster(ingest_staged_images(staging=staging))
    refreshed = configure_for_cluster(refresh_index(model_name=model_name, champion=champion,
                                                    champion_tolerance=champion_tolerance,
                                                    eval_queries=eval_queries, **KFP_RUN))
    refreshed.after(staged)
    return NamedTuple("Outputs", ingested=int, version=int, champion=bool, added=int, decision=dict)(
        staged.outputs["ingested"], refreshed.outputs["version"], refreshed.outputs["champion"],
        refreshed.outputs["added"], refreshed.outputs["decision"])
