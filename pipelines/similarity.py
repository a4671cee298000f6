"""The similarity pipeline: Fashion-MNIST -> Delta -> Horovod training -> evaluation -> ANN index -> registry."""

from typing import NamedTuple

from kfp import dsl

from components import KFP_RUN, configure_for_cluster
from components.catalog import ingest_fashion_mnist
from components.similarity import evaluate_similarity, register_similarity, train_similarity
from components.tuning import tune_config
from kuberec.champion import DEFAULT_POLICY, DEFAULT_TOLERANCE
from kuberec.models import SIMILARITY


@dsl.pipeline(name=f"kuberec-{SIMILARITY.name}",
              description="Fashion-MNIST catalog (Spark, Delta) -> similarity model (Horovod) -> evaluation -> "
                          "HNSW index -> MLflow registry, @champion behind a gate")
def similarity_pipeline(max_per_split: int = 0, workers: int = 2, config_json: str = "{}", max_examples: int = 0,
                        eval_queries: int = 0, champion: str = DEFAULT_POLICY,
                        champion_tolerance: float = DEFAULT_TOLERANCE, model_name: str = SIMILARITY.registered_name,
                        tune_trials: int = 0, tune_time_budget: int = 0) -> NamedTuple(
        "Outputs", model_uri=str, version=int, champion=bool, decision=dict, metrics=dict, training_run_id=str):
    """Train, evaluate, index and register the image-similarity recommender.

    Args:
        max_per_split: Fashion-MNIST images ingested per split; 0 = all (a small number makes a quick run).
        workers: Horovod workers of the training job (MPIJob workers on Kubernetes).
        config_json: SimilarityConfig fields as a JSON object, e.g. {"epochs": 2}; {} = the shipped defaults.
        max_examples: training images used; 0 = all.
        eval_queries: test images used as queries by the evaluation and the champion gate; 0 = all 10,000.
        champion: whether the new version takes @champion (what serving follows): gate = only when its
            precision@5 beats the champion re-scored on the same queries by more than champion_tolerance (a first
            version always does); always; never (not even a first version).
        champion_tolerance: the margin of precision@5 the gate asks of a new version.
        model_name: the MLflow registered model.
        tune_trials: Ray Tune trials before training (0 = no sweep); config_json's fields stay fixed.
        tune_time_budget: seconds for the sweep; 0 = no limit.
    """
    catalog = configure_for_cluster(ingest_fashion_mnist(max_per_split=max_per_split))
    table = dict(table_uri=catalog.outputs["table_uri"], table_version=catalog.outputs["table_version"])
    tuned = configure_for_cluster(tune_config(model=SIMILARITY.name, config_json=config_json, tune_trials=tune_trials,
                                              tune_time_budget=tune_time_budget, max_examples=max_examples,
                                              **table, **KFP_RUN))
    trained = configure_for_cluster(train_similarity(workers=workers, config_json=tuned.outputs["config_json"],
                                                     max_examples=max_examples,
                                                     sweep_run_id=tuned.outputs["sweep_run_id"], **table, **KFP_RUN))
    evaluated = configure_for_cluster(evaluate_similarity(run_id=trained.output, max_queries=eval_queries, **table))
    registered = configure_for_cluster(register_similarity(
        run_id=trained.output, champion=champion, champion_tolerance=champion_tolerance, max_queries=eval_queries,
        model_name=model_name, **table, **KFP_RUN))
    registered.after(evaluated)  # register only a model whose evaluation succeeded
    outputs = NamedTuple("Outputs", model_uri=str, version=int, champion=bool, decision=dict, metrics=dict,
                         training_run_id=str)
    return outputs(registered.outputs["model_uri"], registered.outputs["version"], registered.outputs["champion"],
                   registered.outputs["decision"], evaluated.outputs["Output"], trained.output)
