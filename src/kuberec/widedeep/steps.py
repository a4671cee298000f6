"""Wide & deep model steps as typed functions: what the `kuberec` verbs and the KFP components call.

    (kuberec.ingest.steps: synthesize -> ingest_instacart -> build_features) -> train -> evaluate -> register

The model steps pass one MLflow run id along. `train` creates the run (params, lineage tags of the Delta versions it
reads) and launches the Horovod job, whose rank 0 logs epochs and uploads its output directory into it; `evaluate`
and `register` download those artifacts by run id and log into the same run, so no step needs a file system shared
with another.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from kuberec import tracking
from kuberec.backends import HorovodJob, get_backend, job_home
from kuberec.lake.delta import TableRef
from kuberec.settings import Settings
from kuberec.widedeep.config import EXPERIMENT, REGISTERED_NAME, WideDeepConfig
from kuberec.widedeep.evaluate import EvaluationResult
from kuberec.widedeep.pyfunc import RegisteredWideDeepModel

log = logging.getLogger(__name__)

TRAIN_MODULE = "kuberec.widedeep.train"


def train_dir(settings: Settings, run_id: str) -> Path:
    """Where the training job of run `run_id` writes (on the machine or pod of its rank 0)."""
    return job_home(settings) / "runs" / f"widedeep-{run_id}"


def train(settings: Settings, examples: TableRef, config: WideDeepConfig, workers: int = 1,
          sweep_run_id: str | None = None) -> str:
    """Horovod job: train on `examples` with `workers` workers in a new MLflow run; returns the run id.

    The run records the config, the worker count, the Delta versions read (examples, user and product features) and
    the tuning sweep that chose the config (`sweep_run_id`) before the job starts; it ends FAILED when the job fails.
    A rerun with the same inputs after a failure (a killed worker, a lost MLflow server) continues that failed run
    from its last epoch checkpoint instead (`kuberec.distributed.training_run`).
    """
    from kuberec.config import config_to_args
    from kuberec.distributed import training_run
    from kuberec.ingest.instacart_features import gold_tables
    from kuberec.widedeep.train import run_params

    lineage = gold_tables(examples.uri, examples.version)
    with training_run(settings, EXPERIMENT, run_name="train-widedeep", lineage=lineage,
                      params=run_params(config, workers), tags=tracking.sweep_tags(sweep_run_id),
                      train_dir=lambda run_id: train_dir(settings, run_id)) as (run_id, out_dir, resumed):
        args = ("--examples", examples.uri, "--version", str(examples.version), "--out", str(out_dir),
                *config_to_args(config), "--mlflow-run-id", run_id, *(["--resume"] if resumed else []))
        get_backend(settings).run_horovod(HorovodJob("train-widedeep", TRAIN_MODULE, args, workers=workers))
    log.info("trained wide & deep in MLflow run %s", run_id)
    return run_id


def evaluate(settings: Settings, run_id: str, examples: TableRef | None = None) -> EvaluationResult:
    """Score run `run_id`'s model against wide-only, deep-only and popularity on the test split of `examples`
    (default: the table and version it trained on); logs its metrics (`EvaluationResult.metrics`) and evaluation.json
    into the run.

    Returns the EvaluationResult (its `files` point at the run's artifact).
    """
    import mlflow

    from kuberec.widedeep.evaluate import RESULT_FILE, evaluate_widedeep
    from kuberec.widedeep.train import TrainResult

    with tempfile.TemporaryDirectory(prefix="kuberec-widedeep-eval-") as tmp:
        model_dir = tracking.download_artifacts(settings, run_id, tracking.TRAIN_ARTIFACTS, tmp)
        trained = TrainResult.load(model_dir)
        examples = examples or TableRef(trained.examples_uri, trained.tables[trained.examples_uri])
        result = evaluate_widedeep(examples.uri, Path(tmp) / tracking.EVALUATION_ARTIFACTS, model_dir=model_dir,
                                   version=examples.version)
        with tracking.continue_run(settings, run_id):
            tracking.log_metrics(result.metrics())
            mlflow.log_artifact(result.files["json"], tracking.EVALUATION_ARTIFACTS)
    result.files = {"json": f"runs:/{run_id}/{tracking.EVALUATION_ARTIFACTS}/{RESULT_FILE}"}
    log.info("evaluation logged to run %s: wide & deep AUC %.4f, MAP@10 %.4f", run_id,
             result.metrics()["auc"], result.metrics()["map_at_10"])
    return result


def register(settings: Settings, run_id: str, *, set_champion: bool = False,
             name: str = REGISTERED_NAME) -> RegisteredWideDeepModel:
    """Log run `run_id`'s model with its features as a pyfunc in that run and register it as a version of `name`
    (default kuberec-widedeep), with the run's evaluation when it has one. Returns the RegisteredWideDeepModel.

    `set_champion` True moves the `champion` alias to it; False sets it only when the model has none yet.
    """
    from kuberec.widedeep.evaluate import RESULT_FILE, flat_metrics
    from kuberec.widedeep.pyfunc import log_widedeep_model

    with tempfile.TemporaryDirectory(prefix="kuberec-widedeep-register-") as tmp:
        model_dir = tracking.download_artifacts(settings, run_id, tracking.TRAIN_ARTIFACTS, tmp)
        evaluated = [item.path
                     for item in tracking.client(settings).list_artifacts(run_id, tracking.EVALUATION_ARTIFACTS)]
        evaluation = None
        if f"{tracking.EVALUATION_ARTIFACTS}/{RESULT_FILE}" in evaluated:
            path = tracking.download_artifacts(settings, run_id, f"{tracking.EVALUATION_ARTIFACTS}/{RESULT_FILE}", tmp)
            saved = json.loads(path.read_text())
            # "metrics": what evaluations logged before the per-model key was renamed call it.
            evaluation = flat_metrics(saved.get("scores") or saved["metrics"])
        with tracking.continue_run(settings, run_id):
            return log_widedeep_model(settings, model_dir, name=name, set_champion=True if set_champion else None,
                                      evaluation=evaluation)
