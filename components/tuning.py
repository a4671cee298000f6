"""The optional tuning step of both pipelines: a Ray Tune sweep that chooses the training config, or a pass-through."""

from typing import NamedTuple

from components import component


@component
def tune_config(model: str, table_uri: str, table_version: int, config_json: str, tune_trials: int,
                tune_time_budget: int, max_examples: int, kfp_run_id: str = "",
                kfp_run_name: str = "") -> NamedTuple("TunedConfig", config_json=str, sweep_run_id=str):
    """tune_trials 0: config_json unchanged and no sweep. Otherwise a Ray Tune sweep (Optuna TPE + ASHA) of
    `model` with the fields of config_json fixed; returns the best trial's config and the sweep's MLflow parent run
    id ("" without a sweep). tune_time_budget: seconds (0 = none); max_examples: similarity only (0 = all).
    kfp_run_id/kfp_run_name: the pipeline run, as tags of the sweep's MLflow runs."""
    import json
    from collections import namedtuple

    from kuberec.lake.delta import TableRef
    from kuberec.settings import load_settings
    from kuberec.tuning.steps import config_for_training

    config, sweep_run_id = config_for_training(
        load_settings(kfp_run_id=kfp_run_id, kfp_run_name=kfp_run_name), model, TableRef(table_uri, table_version),
        json.loads(config_json or "{}"), trials=tune_trials, time_budget_s=tune_time_budget or None,
        max_examples=max_examples or None)
    return namedtuple("TunedConfig", ["config_json", "sweep_run_id"])(json.dumps(config, sort_keys=True),
                                                                      sweep_run_id or "")
