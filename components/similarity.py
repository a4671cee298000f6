"""Components of the similarity pipeline: train (Horovod job), evaluate, index + register."""

from typing import NamedTuple

from kfp.dsl import HTML, Markdown, Metrics, Model, Output

from components import component


@component
def train_similarity(table_uri: str, table_version: int, workers: int, config_json: str, max_examples: int,
                     sweep_run_id: str, kfp_run_id: str = "", kfp_run_name: str = "") -> str:
    """Horovod training job on the table's train split; returns the MLflow run id. config_json: SimilarityConfig
    fields overriding the shipped defaults ("{}" = defaults); max_examples 0 = all images; sweep_run_id: the sweep
    that chose the config ("" = none); kfp_run_id/kfp_run_name: the pipeline run, as tags of the MLflow run."""
    import json

    from kuberec.lake.delta import TableRef
    from kuberec.settings import load_settings
    from kuberec.similarity import steps
    from kuberec.similarity.config import SimilarityConfig

    return steps.train(load_settings(kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name),
                       TableRef(table_uri, table_version), SimilarityConfig.from_dict(json.loads(config_json)),
                       workers=workers, max_examples=max_examples or None, sweep_run_id=sweep_run_id or None)


@component
def evaluate_similarity(run_id: str, table_uri: str, table_version: int, max_queries: int,
                        metrics: Output[Metrics], report: Output[HTML]) -> dict:
    """Retrieval quality vs raw pixels, logged into the training run; max_queries 0 = the whole test split. Returns
    the metrics as tracked: the model's unprefixed, the raw-pixel baseline's as `raw_pixels_<metric>`; `metrics`
    holds them for KFP's run comparison, `report` the quality table and the neighbour grid."""
    from pathlib import Path

    from kuberec.lake.delta import TableRef
    from kuberec.settings import load_settings
    from kuberec.similarity import steps

    settings = load_settings()
    result = steps.evaluate(settings, run_id, TableRef(table_uri, table_version), max_queries=max_queries or None)
    for name, value in result.metrics().items():
        metrics.log_metric(name, value)
    Path(report.path).write_text(steps.evaluation_report(settings, run_id, result))
    return result.metrics()


@component
def register_similarity(run_id: str, table_uri: str, table_version: int, champion: str, champion_tolerance: float,
                        max_queries: int, model_name: str, model: Output[Model], report: Output[Markdown],
                        kfp_run_id: str = "", kfp_run_name: str = "") -> NamedTuple(
        "RegisteredModel", model_uri=str, version=int, champion=bool, items=int, decision=dict):
    """Index the catalog with the run's model and register model + index as a version of `model_name`.
    `champion` (gate, always, never) decides whether it takes the `champion` alias: gate scores it and the
    champion by precision@5 on the table's test queries (max_queries of them, 0 = all). `model` and `report` show
    the version, the decision and their MLflow links."""
    from collections import namedtuple

    from kuberec.lake.delta import TableRef
    from kuberec.reports import write_registration
    from kuberec.settings import load_settings
    from kuberec.similarity import steps

    settings = load_settings(kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name)
    registered = steps.register(settings, run_id, TableRef(table_uri, table_version), policy=champion,
                                tolerance=champion_tolerance, max_queries=max_queries or None, name=model_name)
    model.metadata.update(write_registration(settings, registered, model.path, report.path))
    return namedtuple("RegisteredModel", ["model_uri", "version", "champion", "items", "decision"])(
        registered.model_uri, registered.version, registered.champion, registered.items,
        registered.decision.to_dict())
