"""The wide & deep pipeline: Instacart CSVs (given or generated) -> bronze -> gold -> Horovod training -> evaluation
against baselines -> registered pyfunc ranker, all in one MLflow run (experiment kuberec-widedeep).

Defaults (5,000 generated users, two Horovod workers, two epochs of batch 1,024) took 4.5 minutes on a busy 2-core
machine, most of it the two Spark jobs; a re-run on unchanged data skips them. `users=206209` is Instacart's size.
"""

from typing import NamedTuple

from kfp import dsl

from components import configure_for_cluster
from components.tuning import tune_config
from components.widedeep import (
    build_features,
    evaluate_widedeep,
    ingest_instacart,
    instacart_source,
    register_widedeep,
    train_widedeep,
)
from kuberec.models import WIDEDEEP

DEFAULT_CONFIG = '{"batch_size": 1024, "epochs": 2}'


@dsl.pipeline(name=f"kuberec-{WIDEDEEP.name}",
              description="Instacart -> bronze/gold Delta (Spark) -> wide & deep (Horovod) -> evaluate -> registry")
def widedeep_pipeline(users: int = 5000, seed: int = 0, source: str = "", workers: int = 2,
                      config_json: str = DEFAULT_CONFIG, set_champion: bool = True,
                      model_name: str = WIDEDEEP.registered_name, tune_trials: int = 0,
                      tune_time_budget: int = 0) -> NamedTuple(
        "Outputs", model_uri=str, run_id=str, examples_version=int, metrics=dict):
    data = configure_for_cluster(instacart_source(source=source, users=users, seed=seed))
    bronze = configure_for_cluster(ingest_instacart(source=data.output))
    gold = configure_for_cluster(build_features(bronze=bronze.output))
    examples = dict(table_uri=gold.outputs["table_uri"], table_version=gold.outputs["table_version"])
    tuned = configure_for_cluster(tune_config(model=WIDEDEEP.name, config_json=config_json, tune_trials=tune_trials,
                                              tune_time_budget=tune_time_budget, max_examples=0, **examples))
    trained = configure_for_cluster(train_widedeep(config_json=tuned.outputs["config_json"], workers=workers,
                                                   sweep_run_id=tuned.outputs["sweep_run_id"], **examples))
    evaluated = configure_for_cluster(evaluate_widedeep(run_id=trained.output, **examples))
    registered = configure_for_cluster(register_widedeep(run_id=trained.output, set_champion=set_champion,
                                                         model_name=model_name))
    registered.after(evaluated)  # the registered model carries the evaluation
    return NamedTuple("Outputs", model_uri=str, run_id=str, examples_version=int, metrics=dict)(
        registered.outputs["model_uri"], trained.output, gold.outputs["table_version"], evaluated.output)
