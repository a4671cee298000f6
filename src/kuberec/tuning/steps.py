"""The tuning step: `tune(settings, model, table, ...) -> TuneResult`, and `resume(settings, name)`.

The step validates the search space (a bad one fails here, before anything starts), creates the sweep's MLflow
parent run (its options as params, the Delta versions read as lineage tags) and launches `kuberec.tuning.sweep` as
a RayJob through the configured backend. The driver logs the trials as child runs and the best config on the
parent, where the step reads the result back, so nothing depends on a file system shared with the driver.
The parent run ends FINISHED, FAILED, or KILLED when the sweep was interrupted (then `resume` continues it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from kuberec import tracking
from kuberec.backends import RayJob, get_backend
from kuberec.errors import KuberecError
from kuberec.lake.delta import TableRef
from kuberec.models import model_record
from kuberec.settings import Settings
from kuberec.tuning.space import parse_space
from kuberec.tuning.sweep import check_name

log = logging.getLogger(__name__)

SWEEP_MODULE = "kuberec.tuning.sweep"
# Parent-run params that are also the driver's arguments: a resumed sweep is launched from them.
SWEEP_ARGS = ("model", "table", "version", "name", "trials", "concurrent", "cpus_per_trial", "memory_per_trial",
              "time_budget", "seed", "max_examples", "space", "metric", "max_failures")


class SweepNotFound(KuberecError):
    """There is no sweep of that name to resume or read."""


@dataclass(frozen=True)
class TuneResult:
    model: str
    name: str
    parent_run_id: str
    metric: str
    mode: str  # "max" or "min"
    best_config: dict[str, Any]  # a complete config of the model: `kuberec train <model> --config <it as JSON>`
    best_metric: float
    best_run_id: str  # the best trial's MLflow child run
    trials_finished: int  # reported at least one epoch and did not fail
    trials_failed: int
    trials_stopped_early: int  # of the finished: stopped before their last epoch (by ASHA or the time budget)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def config(self):
        """The best config as the model's config dataclass."""
        return model_record(self.model).config_class.from_dict(self.best_config)


def tune(settings: Settings, model: str, table: TableRef, *, trials: int = 10, concurrent: int = 2,
         time_budget_s: float | None = None, seed: int = 0, max_examples: int | None = None,
         epochs: int | None = None, space: Mapping[str, Any] | None = None, metric: str | None = None,
         initial_points: Sequence[Mapping[str, Any]] = (), name: str | None = None, cpus_per_trial: int = 1,
         memory_per_trial_mib: int | None = None, max_failures: int = 0) -> TuneResult:
    """Sweep `model`'s hyperparameters on `table` (similarity: Fashion-MNIST table; widedeep: gold examples).

    `space` is merged over the model's default space (its record in kuberec.models); `epochs` and `seed` fix those
    config fields unless `space` does. `initial_points` are evaluated first (e.g. the current production config).
    `time_budget_s` stops the sweep after that long, finished or not. `memory_per_trial_mib` caps what each trial's
    process may allocate: a trial that needs more fails with TrialOutOfMemory and the sweep goes on. Returns the best
    trial's config and metric.
    """
    from kuberec.tuning import runs

    record = model_record(model)
    metric = metric or record.tuning.default_metric
    mode = record.metric_mode(metric)
    overrides = {"seed": seed, **({"epochs": epochs} if epochs else {}), **(space or {})}
    search_space = parse_space(model, overrides)
    points = [search_space.check_point(point) for point in initial_points]
    for option, value in (("trials", trials), ("concurrent", concurrent), ("cpus_per_trial", cpus_per_trial),
                          ("memory_per_trial_mib", memory_per_trial_mib)):
        if value is not None and value < 1:
            raise KuberecError(f"{option} must be at least 1, not {value}")
    if max_examples is not None and record.tuning.max_examples_hint:
        raise KuberecError(f"max_examples: {record.tuning.max_examples_hint}")
    name = check_name(name or f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
    if runs.find_sweep(settings, name) is not None:
        raise KuberecError(f"a sweep named {name!r} already exists; resume it (kuberec tune {model} --name {name} "
                           f"--resume) or choose another name")
    params = {"model": model, "table": table.uri, "version": table.version, "name": name, "trials": trials,
              "concurrent": concurrent, "cpus_per_trial": cpus_per_trial, "memory_per_trial": memory_per_trial_mib,
              "time_budget": time_budget_s,
              "seed": seed, "max_examples": max_examples, "space": json.dumps(search_space.to_spec(), sort_keys=True),
              "metric": metric, "max_failures": max_failures, "mode": mode,
              "initial_points": json.dumps(points) if points else None}
    parent = tracking.create_run(settings, runs.EXPERIMENT, run_name=f"tune-{name}", lineage=record.lineage(table),
                                 params={k: v for k, v in params.items() if v is not None},
                                 tags={runs.SWEEP_TAG: name, runs.MODEL_TAG: model, runs.STATE_TAG: "running"})
    log.info("sweep %s: %d trials of %s, %d at a time, MLflow parent run %s", name, trials, model, concurrent, parent)
    starts = [arg for point in points for arg in ("--initial-point", json.dumps(point))]
    return _launch(settings, parent, params, starts)


def resume(settings: Settings, name: str, *, model: str | None = None, retry_failed: bool = False) -> TuneResult:
    """Continue the interrupted sweep `name` with the options it was started with (they are its parent run's
    params). Finished trials are kept; failed ones run again only with `retry_failed`."""
    from kuberec.tuning import runs

    parent = runs.find_sweep(settings, name)
    if parent is None:
        raise SweepNotFound(f"no sweep named {name!r} in MLflow experiment {runs.EXPERIMENT} at "
                            f"{tracking.tracking_uri(settings)}")
    params = parent.data.params
    if model is not None and params.get("model") != model:
        raise SweepNotFound(f"sweep {name!r} tunes {params.get('model')}, not {model}")
    if parent.data.tags.get(runs.STATE_TAG) == "finished":
        log.info("sweep %s already finished", name)
        return read_result(settings, parent.info.run_id)
    tracking.client(settings).update_run(parent.info.run_id, status="RUNNING")
    tracking.client(settings).set_tag(parent.info.run_id, runs.STATE_TAG, "running")
    return _launch(settings, parent.info.run_id, params, ["--resume"] + (["--retry-failed"] if retry_failed else []))


def _driver_args(params: Mapping[str, Any]) -> list[str]:
    args: list[str] = []
    for key in SWEEP_ARGS:
        if params.get(key) not in (None, "None"):
            args += [f"--{key.replace('_', '-')}", str(params[key])]
    return args


def _launch(settings: Settings, parent_run_id: str, params: Mapping[str, Any], extra: list[str]) -> TuneResult:
    """Run the driver as a RayJob (one worker per concurrent trial in a cluster) and read the result back."""
    from kuberec.tuning import runs

    job = RayJob(name=f"tune-{params['model']}", module=SWEEP_MODULE,
                 args=(*_driver_args(params), *extra, "--parent-run-id", parent_run_id),
                 workers=int(params["concurrent"]), cpus_per_worker=int(params["cpus_per_trial"]))
    mlflow_client = tracking.client(settings)
    try:
        get_backend(settings).run_ray(job)
    except BaseException:
        # The driver tags an interrupted sweep (resumable) itself; anything else is a failure.
        if mlflow_client.get_run(parent_run_id).data.tags.get(runs.STATE_TAG) == "interrupted":
            mlflow_client.set_terminated(parent_run_id, "KILLED")
        else:
            mlflow_client.set_tag(parent_run_id, runs.STATE_TAG, "failed")
            mlflow_client.set_terminated(parent_run_id, "FAILED")
        raise
    mlflow_client.set_terminated(parent_run_id, "FINISHED")
    result = read_result(settings, parent_run_id)
    log.info("sweep %s: best %s %.4f in run %s (%d finished, %d failed)", result.name, result.metric,
             result.best_metric, result.best_run_id, result.trials_finished, result.trials_failed)
    return result


def read_result(settings: Settings, parent_run_id: str) -> TuneResult:
    """The TuneResult of a finished sweep, from its MLflow parent run."""
    import mlflow

    from kuberec.tuning import runs

    mlflow_client = tracking.client(settings)  # also points mlflow.artifacts at the server
    run = mlflow_client.get_run(parent_run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    metric = params["metric"]
    if runs.BEST_RUN_TAG not in tags or f"best_{metric}" not in metrics:
        raise SweepNotFound(f"MLflow run {parent_run_id} has no finished sweep result (state "
                            f"{tags.get(runs.STATE_TAG, 'unknown')})")
    best_config = mlflow.artifacts.load_dict(f"runs:/{parent_run_id}/{runs.BEST_CONFIG_FILE}")
    return TuneResult(model=params["model"], name=params["name"], parent_run_id=parent_run_id, metric=metric,
                      mode=params["mode"], best_config=best_config, best_metric=metrics[f"best_{metric}"],
                      best_run_id=tags[runs.BEST_RUN_TAG], trials_finished=int(metrics["trials_finished"]),
                      trials_failed=int(metrics["trials_failed"]),
                      trials_stopped_early=int(metrics["trials_stopped_early"]))


def config_for_training(settings: Settings, model: str, table: TableRef, config: Mapping[str, Any], *,
                        trials: int, time_budget_s: float | None = None, max_examples: int | None = None,
                        seed: int = 0) -> tuple[dict[str, Any], str | None]:
    """The config a pipeline's training step uses, and the sweep that chose it (its parent run id) if any.

    `trials` 0: `config` as given (fields over the model's defaults), no sweep. Otherwise a sweep of `trials`
    trials in which the fields of `config` stay fixed and the rest of the model's search space is explored; the best
    trial's complete config is returned.
    """
    if trials <= 0:
        return dict(config), None
    result = tune(settings, model, table, trials=trials, time_budget_s=time_budget_s, seed=seed,
                  max_examples=max_examples, space=config)
    return result.best_config, result.parent_run_id
