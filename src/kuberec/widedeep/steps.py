"""Wide & deep model steps as typed functions: what the `kuberec` verbs and the KFP components call.

    (kuberec.ingest.steps: synthesize -> ingest_instacart -> build_features) -> train -> evaluate -> register

The model steps pass one MLflow run id along. `train` creates the run (params, lineage tags of the Delta versions it
reads) and launches the Horovod job, whose rank 0 logs epochs and uploads its output directory into it; `evaluate`
and `register` download those artifacts by run id and log into the same run, so no step needs a file system shared
with another.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import tempfile
from pathlib import Path

from kuberec import champion as gates
from kuberec import tracking
from kuberec.champion import ChampionDecision
from kuberec.lake.delta import TableRef
from kuberec.settings import Settings
from kuberec.widedeep.config import EXPERIMENT, HEADLINE_METRIC, REGISTERED_NAME, WideDeepConfig
from kuberec.widedeep.evaluate import EvaluationResult
from kuberec.widedeep.pyfunc import RegisteredWideDeepModel

log = logging.getLogger(__name__)

TRAIN_MODULE = "kuberec.widedeep.train"


def train(settings: Settings, table: TableRef, config: WideDeepConfig, *, workers: int = 1,
          sweep_run_id: str | None = None, out_dir: Path | None = None, resume: bool = False) -> str:
    """Horovod job: train on the gold examples `table` with `workers` workers in a new MLflow run; returns the run id.

    The run records the config, the worker count, the Delta versions read (examples, user and product features) and
    the tuning sweep that chose the config (`sweep_run_id`) before the job starts; it ends FAILED when the job fails.
    `out_dir`, `resume` and reruns after a failure: `kuberec.training.launch.launch_training`.
    """
    from kuberec.ingest.instacart_features import gold_tables
    from kuberec.training.launch import launch_training
    from kuberec.widedeep.train import run_params

    return launch_training(settings, "widedeep", TRAIN_MODULE, table, config, experiment=EXPERIMENT,
                           params=run_params(config, workers), lineage=gold_tables(table.uri, table.version),
                           workers=workers, sweep_run_id=sweep_run_id, out_dir=out_dir, resume=resume)


def evaluate(settings: Settings, run_id: str, table: TableRef | None = None) -> EvaluationResult:
    """Score run `run_id`'s model against wide-only, deep-only and popularity on the test split of the gold
    examples `table` (default: the table and version it trained on); logs its metrics (`EvaluationResult.metrics`)
    and evaluation.json into the run.

    Returns the EvaluationResult (its `files` point at the run's artifact).
    """
    import mlflow

    from kuberec.widedeep.evaluate import RESULT_FILE, evaluate_widedeep
    from kuberec.widedeep.train import TrainResult

    with tempfile.TemporaryDirectory(prefix="kuberec-widedeep-eval-") as tmp:
        model_dir = tracking.download_artifacts(settings, run_id, tracking.TRAIN_ARTIFACTS, tmp)
        trained = TrainResult.load(model_dir)
        table = table or TableRef(trained.examples_uri, trained.tables[trained.examples_uri])
        result = evaluate_widedeep(table.uri, Path(tmp) / tracking.EVALUATION_ARTIFACTS, model_dir=model_dir,
                                   version=table.version)
        with tracking.continue_run(settings, run_id):
            tracking.log_metrics(result.metrics())
            mlflow.log_artifact(result.files["json"], tracking.EVALUATION_ARTIFACTS)
    result.files = {"json": f"runs:/{run_id}/{tracking.EVALUATION_ARTIFACTS}/{RESULT_FILE}"}
    log.info("evaluation logged to run %s: wide & deep AUC %.4f, MAP@10 %.4f", run_id,
             result.metrics()["auc"], result.metrics()["map_at_10"])
    return result


def register(settings: Settings, run_id: str, table: TableRef | None = None, *,
             policy: str = gates.DEFAULT_POLICY, tolerance: float = gates.DEFAULT_TOLERANCE,
             name: str = REGISTERED_NAME) -> RegisteredWideDeepModel:
    """Log run `run_id`'s model with its features as a pyfunc in that run and register it as a version of `name`
    (default kuberec-widedeep), with the run's evaluation when it has one. Returns the RegisteredWideDeepModel.
    The features come from the gold build of the examples `table` (default: the build the run trained on).

    `policy` (kuberec.champion: gate, always, never) decides whether it takes the `champion` alias; the gate scores
    the run's model and the champion's on the test split of `table` by per-user AUC. The decision is in the
    result, the training run and the version's tags.
    """
    from kuberec.ingest.instacart_features import gold_tables
    from kuberec.widedeep.evaluate import RESULT_FILE, flat_metrics
    from kuberec.widedeep.pyfunc import log_widedeep_model
    from kuberec.widedeep.train import TrainResult

    gates.check_policy(policy, tolerance)
    with tempfile.TemporaryDirectory(prefix="kuberec-widedeep-register-") as tmp:
        model_dir = tracking.download_artifacts(settings, run_id, tracking.TRAIN_ARTIFACTS, tmp)
        trained = TrainResult.load(model_dir)
        scored_on = table or TableRef(trained.examples_uri, trained.tables[trained.examples_uri])
        decision = gate(settings, trained.model_dir, scored_on, name=name, policy=policy, tolerance=tolerance)
        evaluated = [item.path
                     for item in tracking.client(settings).list_artifacts(run_id, tracking.EVALUATION_ARTIFACTS)]
        evaluation = None
        if f"{tracking.EVALUATION_ARTIFACTS}/{RESULT_FILE}" in evaluated:
            path = tracking.download_artifacts(settings, run_id, f"{tracking.EVALUATION_ARTIFACTS}/{RESULT_FILE}", tmp)
            saved = json.loads(path.read_text())
            # "metrics": what evaluations logged before the per-model key was renamed call it.
            evaluation = flat_metrics(saved.get("scores") or saved["metrics"])
        with tracking.continue_run(settings, run_id):
            gates.record_decision(decision)
            registered = log_widedeep_model(settings, model_dir, name=name, set_champion=decision.promote,
                                            evaluation=evaluation, tags=decision.tags(),
                                            tables=gold_tables(table.uri, table.version) if table else None)
    log.info("%s version %s: %s", name, registered.version, decision.summary())
    return dataclasses.replace(registered, decision=decision)


def gate(settings: Settings, model_dir: Path, table: TableRef, *, name: str, policy: str,
         tolerance: float) -> ChampionDecision:
    """The champion decision (kuberec.champion) for the model saved in `model_dir`, both models scored on the test
    split of `table`."""
    from kuberec.widedeep.evaluate import load_test_split, score_model
    from kuberec.widedeep.model import load_model
    from kuberec.widedeep.pyfunc import load_ranker

    current = tracking.alias_version(settings, name)
    test = functools.cache(lambda: load_test_split(table.uri, table.version))

    def challenger() -> float:
        return score_model(load_model(model_dir), test())[HEADLINE_METRIC]

    def champion() -> float:
        ranker = load_ranker(settings, name, version=current.version)[0].unwrap_python_model()
        return score_model(ranker.model, test())[HEADLINE_METRIC]

    return gates.decide(policy, metric=HEADLINE_METRIC, champion_version=int(current.version) if current else None,
                  score_challenger=challenger, score_champion=champion, tolerance=tolerance)
