"""A sweep in MLflow: one parent run, one child run per trial, written from the Ray driver as Tune reports.

Parent (experiment `kuberec-tuning`, created by kuberec.tuning.steps): the sweep's options as params, the Delta
versions it reads as lineage tags, `kuberec.tuning.sweep=<name>`; when the sweep ends the best trial's values as
params `best.<field>`, `best_<metric>` and the trial counts as metrics, and `best_config.json` (the complete
config: `kuberec train <model> --config best_config.json` trains it).

Children: tag `mlflow.parentRunId`, the trial's config as params, every epoch's validation metrics (step = epoch),
status FINISHED (tag `kuberec.tuning.stopped_early=true` when ASHA or the time budget stopped it before its last
epoch), FAILED (with the error's last line)
or KILLED (the sweep was interrupted while it ran). The best trial's child has `kuberec.best_trial=true`.
A resumed sweep finds its children again by trial id, so a trial never gets two runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ray import tune

from kuberec import tracking
from kuberec.settings import Settings

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

EXPERIMENT = "kuberec-tuning"
SWEEP_TAG = "kuberec.tuning.sweep"
MODEL_TAG = "kuberec.tuning.model"
STATE_TAG = "kuberec.tuning.state"  # running | interrupted | finished | failed
TRIAL_TAG = "kuberec.tuning.trial_id"
STOPPED_EARLY_TAG = "kuberec.tuning.stopped_early"
ERROR_TAG = "kuberec.tuning.error"
BEST_TAG = "kuberec.best_trial"
BEST_RUN_TAG = "kuberec.tuning.best_run_id"
PARENT_TAG = "mlflow.parentRunId"
BEST_CONFIG_FILE = "best_config.json"


def _search(mlflow_client: "MlflowClient", filters: Mapping[str, str]) -> list["Run"]:
    from mlflow.entities import ViewType

    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in filters.items())
    return list(mlflow_client.search_runs([experiment.experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY,
                                          max_results=10_000, order_by=["attributes.start_time DESC"]))


def find_sweep(settings: Settings, name: str) -> "Run | None":
    """The parent run of the sweep called `name` (the newest, should there be several)."""
    runs = _search(tracking.client(settings), {SWEEP_TAG: name})  # only parents carry it; children the parent id
    return runs[0] if runs else None


def child_runs(settings: Settings, parent_run_id: str) -> list["Run"]:
    """Every trial's run of a sweep, newest first."""
    return _search(tracking.client(settings), {PARENT_TAG: parent_run_id})


def child_run(settings: Settings, parent_run_id: str, trial_id: str) -> "Run | None":
    runs = _search(tracking.client(settings), {PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id})
    return runs[0] if runs else None


def _error_line(error_file: str | None) -> str:
    """The last line of a trial's traceback (the exception and its message)."""
    try:
        lines = [line for line in Path(error_file).read_text(errors="replace").splitlines() if line.strip()]
    except (OSError, TypeError):
        return "the trial failed (no error file)"
    return lines[-1][:500] if lines else "the trial failed"


class TrialRuns(tune.Callback):
    """Ray Tune callback on the driver: keeps each trial's MLflow child run in step with the trial."""

    def __init__(self, settings: Settings, parent_run_id: str, sweep: str, epochs: int,
                 metrics: Iterable[str]) -> None:
        self.settings, self.parent_run_id, self.sweep, self.epochs = settings, parent_run_id, sweep, epochs
        self.metrics = tuple(metrics)
        self._runs: dict[str, str] = {}  # trial id -> child run id

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with the experiment; after a restore, runs are found again by their tags.
        return {**self.__dict__, "_runs": {}}

    def _run_id(self, trial) -> str:
        if trial.trial_id not in self._runs:
            found = child_run(self.settings, self.parent_run_id, trial.trial_id)
            if found is not None:  # a trial of an interrupted sweep, started again
                tracking.client(self.settings).update_run(found.info.run_id, status="RUNNING")
                self._runs[trial.trial_id] = found.info.run_id
            else:
                self._runs[trial.trial_id] = tracking.create_run(
                    self.settings, EXPERIMENT, run_name=f"{self.sweep}-{trial.trial_id}", params=trial.config,
                    tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id})
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        log.info("trial %s: MLflow run %s", trial.trial_id, self._run_id(trial))

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric

        step = int(result.get("training_iteration", 0))
        now = int(time.time() * 1000)
        values = {key: result[key] for key in self.metrics if isinstance(result.get(key), (int, float))}
        values["epoch_seconds"] = result.get("time_this_iter_s", 0.0)
        tracking.client(self.settings).log_batch(
            self._run_id(trial), metrics=[Metric(key, float(value), now, step) for key, value in values.items()])

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        run_id = self._run_id(trial)
        mlflow_client = tracking.client(self.settings)
        epochs = int((trial.last_result or {}).get("training_iteration", 0))
        mlflow_client.set_tag(run_id, STOPPED_EARLY_TAG, str(epochs < self.epochs).lower())
        mlflow_client.set_terminated(run_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        run_id = self._run_id(trial)
        mlflow_client = tracking.client(self.settings)
        mlflow_client.set_tag(run_id, ERROR_TAG, _error_line(trial.error_file))
        mlflow_client.set_terminated(run_id, "FAILED")


def kill_running_children(settings: Settings, parent_run_id: str) -> int:
    """Mark the trials that were running when the sweep was interrupted KILLED; returns how many."""
    mlflow_client = tracking.client(settings)
    running = [run for run in child_runs(settings, parent_run_id) if run.info.status == "RUNNING"]
    for run in running:
        mlflow_client.set_terminated(run.info.run_id, "KILLED")
    return len(running)
