"""The wide & deep pipeline: Instacart CSVs (given or generated) -> bronze -> gold -> Horovod training -> evaluation
against baselines -> registered pyfunc ranker, all in one MLflow run (experiment kuberec-widedeep).

Defaults (5,000 generated users, two Horovod workers, two epochs of batch 1,024) took 4.5 minutes on a busy 2-core
machine, most of it the two Spark jobs; a re-run on unchanged data skips them. `users=206209` is Instacart's size.
"""

from typing import NamedTuple

from kfp import dsl

from components import KFP_RUN, configure_for_cluster
from components.tuning import tune_config
from components.widedeep import (
    build_features,
    evaluate_widedeep,
    ingest_instacart,
    instacart_source,
    register_widedeep,
    train_widedeep,
)
from kuberec.champion import DEFAULT_POLICY, DEFAULT_TOLERANCE
from kuberec.models import WIDEDEEP

DEFAULT_CONFIG = '{"batch_size": 1024, "epochs": 2}'


@dsl.pipeline(name=f"kuberec-{WIDEDEEP.name}",
              description="Instacart -> bronze/gold Delta (Spark) -> wide & deep (Horovod) -> evaluate -> registry, "
                          "@champion behind a gate")
def widedeep_pipeline(users: int = 5000, seed: int = 0, source: str = "", workers: int = 2,
                      config_json: str = DEFAULT_CONFIG, champion: str = DEFAULT_POLICY,
                      champion_tolerance: float = DEFAULT_TOLERANCE, model_name: str = WIDEDEEP.registered_name,
                      tune_trials: int = 0, tune_time_budget: int = 0) -> NamedTuple(
        "Outputs", model_uri=str, champion=bool, decision=dict, run_id=str, examples_version=int, metrics=dict):
    """Ingest Instacart-format data, build features, train, evaluate and register the wide & deep ranker.

    Args:
        users: shoppers generated when no source is given (Instacart has 206,209).
        seed: the generator's seed.
        source: a directory (or s3:// prefix) holding Instacart's six CSV files; empty = generate `users` shoppers.
        workers: Horovod workers of the training job (MPIJob workers on Kubernetes).
        config_json: WideDeepConfig fields as a JSON object; missing fields keep their defaults.
        champion: whether the new version takes @champion (what serving follows): gate = only when its per-user
            AUC beats the champion re-scored on the same test split by more than champion_tolerance (a first
            version always does); always; never (not even a first version).
        champion_tolerance: the margin of per-user AUC the gate asks of a new version.
        model_name: the MLflow registered model.
        tune_trials: Ray Tune trials before training (0 = no sweep); config_json's fields stay fixed.
        tune_time_budget: seconds for the sweep; 0 = no limit.
    """
    data = configure_for_cluster(instacart_source(source=source, users=users, seed=seed))
    bronze = configure_for_cluster(ingest_instacart(source=data.output))
    gold = configure_for_cluster(build_features(bronze=bronze.output))
    examples = dict(table_uri=gold.outputs["table_uri"], table_version=gold.outputs["table_version"])
    tuned = configure_for_cluster(tune_config(model=WIDEDEEP.name, config_json=config_json, tune_trials=tune_trials,
                                              tune_time_budget=tune_time_budget, max_examples=0, **examples,
                                              **KFP_RUN))
    trained = configure_for_cluster(train_widedeep(config_json=tuned.outputs["config_json"], workers=workers,
                                                   sweep_run_id=tuned.outputs["sweep_run_id"], **examples,
                                                   **KFP_RUN))
    evaluated = configure_for_cluster(evaluate_widedeep(run_id=trained.output, **examples))
    registered = configure_for_cluster(register_widedeep(run_id=trained.output, champion=champion,
                                                         champion_tolerance=champion_tolerance,
                                                         model_name=model_name, **KFP_RUN))
    registered.after(evaluated)  # the registered model carries the evaluation
    return NamedTuple("Outputs", model_uri=str, champion=bool, decision=dict, run_id=str, examples_version=int,
                      metrics=dict)(
        registered.outputs["model_uri"], registered.outputs["champion"], registered.outputs["decision"],
        trained.output, gold.outputs["table_version"], evaluated.outputs["Output"])
