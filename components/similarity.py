"""Components of the similarity pipeline: train (Horovod job), evaluate, index + register."""

from typing import NamedTuple

from components import component


@component
def train_similarity(table_uri: str, table_version: int, workers: int, config_json: str, max_examples: int,
                     sweep_run_id: str) -> str:
    """Horovod training job on the table's train split; returns the MLflow run id. config_json: SimilarityConfig
    fields overriding the shipped defaults ("{}" = defaults); max_examples 0 = all images; sweep_run_id: the sweep
    that chose the config ("" = none)."""
    import json

    from kuberec.lake.delta import TableRef
    from kuberec.settings import load_settings
    from kuberec.similarity import steps
    from kuberec.similarity.config import SimilarityConfig

    return steps.train(load_settings(), TableRef(table_uri, table_version),
                       SimilarityConfig.from_dict(json.loads(config_json)), workers=workers,
                       max_examples=max_examples or None, sweep_run_id=sweep_run_id or None)


@component
def evaluate_similarity(run_id: str, table_uri: str, table_version: int, max_queries: int) -> dict:
    """Retrieval quality vs raw pixels, logged into the training run; max_queries 0 = the whole test split. Returns
    the metrics as tracked: the model's unprefixed, the raw-pixel baseline's as `raw_pixels_<metric>`."""
    from kuberec.lake.delta import TableRef
    from kuberec.settings import load_settings
    from kuberec.similarity import steps

    return steps.evaluate(load_settings(), run_id, TableRef(table_uri, table_version),
                          max_queries=max_queries or None).metrics()


@component
def register_similarity(run_id: str, table_uri: str, table_version: int, set_champion: bool,
                        model_name: str) -> NamedTuple("RegisteredModel", model_uri=str, version=int, champion=bool,
                                                       items=int):
    """Index the catalog with the run's model and register model + index as a version of `model_name`.
    `set_champion` true moves the `champion` alias to it; false sets it only when the model has no champion yet."""
    from collections import namedtuple

    from kuberec.lake.delta import TableRef
    from kuberec.settings import load_settings
    from kuberec.similarity import steps

    registered = steps.register(load_settings(), run_id, TableRef(table_uri, table_version),
                                set_champion=set_champion, name=model_name)
    return namedtuple("RegisteredModel", ["model_uri", "version", "champion", "items"])(
        registered.model_uri, registered.version, registered.champion, registered.items)
