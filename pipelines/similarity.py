"""The similarity pipeline: Fashion-MNIST -> Delta -> Horovod training -> evaluation -> ANN index -> registry."""

from typing import NamedTuple

from kfp import dsl

from components import configure_for_cluster
from components.catalog import ingest_fashion_mnist
from components.similarity import evaluate_similarity, register_similarity, train_similarity
from components.tuning import tune_config
from kuberec.models import SIMILARITY


@dsl.pipeline(name=f"kuberec-{SIMILARITY.name}",
              description="Fashion-MNIST catalog (Spark, Delta) -> similarity model (Horovod) -> evaluation -> "
                          "HNSW index -> MLflow registry @champion")
def similarity_pipeline(max_per_split: int = 0, workers: int = 2, config_json: str = "{}", max_examples: int = 0,
                        eval_queries: int = 0, set_champion: bool = True,
                        model_name: str = SIMILARITY.registered_name, tune_trials: int = 0,
                        tune_time_budget: int = 0) -> NamedTuple(
        "Outputs", model_uri=str, version=int, champion=bool, metrics=dict, training_run_id=str):
    """max_per_split/max_examples/eval_queries: 0 = all data (smaller values make quick runs). tune_trials > 0 adds
    a Ray Tune sweep before training (config_json's fields stay fixed) whose best config is trained. set_champion
    false registers without moving `champion`, except for a model that has none yet."""
    catalog = configure_for_cluster(ingest_fashion_mnist(max_per_split=max_per_split))
    table = dict(table_uri=catalog.outputs["table_uri"], table_version=catalog.outputs["table_version"])
    tuned = configure_for_cluster(tune_config(model=SIMILARITY.name, config_json=config_json, tune_trials=tune_trials,
                                              tune_time_budget=tune_time_budget, max_examples=max_examples,
                                              **table))
    trained = configure_for_cluster(train_similarity(workers=workers, config_json=tuned.outputs["config_json"],
                                                     max_examples=max_examples,
                                                     sweep_run_id=tuned.outputs["sweep_run_id"], **table))
    evaluated = configure_for_cluster(evaluate_similarity(run_id=trained.output, max_queries=eval_queries, **table))
    registered = configure_for_cluster(register_similarity(run_id=trained.output, set_champion=set_champion,
                                                           model_name=model_name, **table))
    registered.after(evaluated)  # register only a model whose evaluation succeeded
    outputs = NamedTuple("Outputs", model_uri=str, version=int, champion=bool, metrics=dict, training_run_id=str)
    return outputs(registered.outputs["model_uri"], registered.outputs["version"], registered.outputs["champion"],
                   evaluated.output, trained.output)
