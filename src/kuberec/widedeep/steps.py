"""Wide & deep pipeline steps as typed functions: what the `kuberec` verbs and the KFP components call.

    synthesize -> ingest -> features -> train -> evaluate -> register

Data steps return where the data is (a directory, Delta table versions); the model steps pass one MLflow run id
along. `train` creates the run (params, lineage tags of the Delta versions it reads) and launches the Horovod job,
whose rank 0 logs epochs and uploads its output directory into it; `evaluate` and `register` download those
artifacts by run id and log into the same run, so no step needs a file system shared with another.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from kuberec import tracking
from kuberec.backends import HorovodJob, SparkJob, get_backend
from kuberec.settings import Settings
from kuberec.steps import TableRef

if TYPE_CHECKING:  # imported where used: TensorFlow and MLflow's pyfunc take seconds, the data steps need neither
    from kuberec.widedeep.evaluate import EvaluationResult
    from kuberec.widedeep.model import WideDeepConfig
    from kuberec.widedeep.pyfunc import RegisteredWideDeepModel

log = logging.getLogger(__name__)

SYNTH_DIR = "instacart-synth"  # under <home>/data, where `kuberec data instacart-synth` writes too
TRAIN_MODULE = "kuberec.widedeep.train"
EVALUATION_ARTIFACTS = "evaluation"


def synthesize(settings: Settings, users: int, seed: int = 0) -> str:
    """Generated Instacart CSV files of `users` users under <home>/data/instacart-synth; returns the directory.

    Reused when its manifest says the same users, seed and generator version made it (the generator writes the
    directory atomically, so a manifest means complete files); otherwise generated again.
    """
    from kuberec.datasets.instacart import missing_files
    from kuberec.datasets.instacart_synth import GENERATOR_VERSION, MANIFEST, default_products, generate

    out = settings.data_dir / SYNTH_DIR
    wanted = {"users": users, "seed": seed, "products": default_products(users),
              "generator_version": GENERATOR_VERSION}
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = {}
    if isinstance(manifest, dict) and {key: manifest.get(key) for key in wanted} == wanted \
            and not missing_files(out):
        log.info("reusing generated Instacart data in %s (%d users, seed %d)", out, users, seed)
    else:
        generate(out, users, seed=seed)
    return str(out)


def ingest(settings: Settings, source: str) -> dict[str, int]:
    """Spark job: the six Instacart CSV files in `source` -> bronze Delta tables; returns {table name: version}."""
    from kuberec.ingest.instacart_features import bronze_versions

    job = SparkJob("ingest-instacart", "kuberec.ingest.instacart", ("--source", str(Path(source).absolute())))
    get_backend(settings).run_spark(job)
    return bronze_versions(settings)


def features(settings: Settings, force: bool = False) -> TableRef:
    """Spark job: bronze -> gold feature, label and split tables; returns the gold examples table's version."""
    from kuberec.ingest.instacart_features import EXAMPLES_TABLE
    from kuberec.lake.delta import table_version

    job = SparkJob("features-instacart", "kuberec.ingest.instacart_features", ("--force",) if force else ())
    get_backend(settings).run_spark(job)
    uri = settings.table_uri(EXAMPLES_TABLE)
    return TableRef(uri, table_version(uri))


def train_dir(settings: Settings, run_id: str) -> Path:
    """Where the training job of run `run_id` writes (on the machine or pod of its rank 0)."""
    return settings.home / "runs" / f"widedeep-{run_id}"


def train(settings: Settings, examples: TableRef, config: WideDeepConfig, workers: int = 1,
          sweep_run_id: str | None = None) -> str:
    """Horovod job: train on `examples` with `workers` workers in a new MLflow run; returns the run id.

    The run records the config, the worker count, the Delta versions read (examples, user and product features) and
    the tuning sweep that chose the config (`sweep_run_id`) before the job starts; it ends FAILED when the job fails.
    """
    from kuberec.widedeep.pyfunc import EXPERIMENT
    from kuberec.widedeep.train import config_to_args, resolve_tables, run_params

    lineage = resolve_tables(examples.uri, examples.version)
    with tracking.step_run(settings, EXPERIMENT, run_name="train-widedeep", lineage=lineage,
                           params=run_params(config, workers), tags=tracking.sweep_tags(sweep_run_id)) as run_id:
        args = ("--examples", examples.uri, "--version", str(examples.version),
                "--out", str(train_dir(settings, run_id)), *config_to_args(config), "--mlflow-run-id", run_id)
        get_backend(settings).run_horovod(HorovodJob("train-widedeep", TRAIN_MODULE, args, workers=workers))
    log.info("trained wide & deep in MLflow run %s", run_id)
    return run_id


def evaluate(settings: Settings, run_id: str, examples: TableRef | None = None) -> "EvaluationResult":
    """Score run `run_id`'s model against wide-only, deep-only and popularity on the test split of `examples`
    (default: the table and version it trained on); logs `<model>_<metric>` metrics and evaluation.json into the run.

    Returns the EvaluationResult (its `files` point at the run's artifact).
    """
    import mlflow

    from kuberec.widedeep.evaluate import RESULT_FILE, evaluate_widedeep
    from kuberec.widedeep.train import TRAIN_ARTIFACTS, TrainResult

    with tempfile.TemporaryDirectory(prefix="kuberec-widedeep-eval-") as tmp:
        model_dir = tracking.download_artifacts(settings, run_id, TRAIN_ARTIFACTS, tmp)
        trained = TrainResult.load(model_dir)
        examples = examples or TableRef(trained.examples_uri, trained.tables[trained.examples_uri])
        result = evaluate_widedeep(examples.uri, Path(tmp) / EVALUATION_ARTIFACTS, model_dir=model_dir,
                                   version=examples.version)
        with tracking.continue_run(settings, run_id):
            tracking.log_metrics({f"{model}_{metric}": value for model, values in result.metrics.items()
                                  for metric, value in values.items()})
            mlflow.log_artifact(result.files["json"], EVALUATION_ARTIFACTS)
    result.files = {"json": f"runs:/{run_id}/{EVALUATION_ARTIFACTS}/{RESULT_FILE}"}
    log.info("evaluation logged to run %s: wide & deep AUC %.4f, MAP@10 %.4f", run_id,
             result.metrics["wide_deep"]["auc"], result.metrics["wide_deep"]["map_at_10"])
    return result


def register(settings: Settings, run_id: str, set_champion: bool | None = None,
             name: str | None = None) -> "RegisteredWideDeepModel":
    """Log run `run_id`'s model with its features as a pyfunc in that run and register it as a version of `name`
    (default kuberec-widedeep), with the run's evaluation when it has one. Returns the RegisteredWideDeepModel.

    `set_champion`: True moves the `champion` alias to it, False leaves the alias, None sets it only when the model
    has no champion yet.
    """
    from kuberec.widedeep.evaluate import RESULT_FILE
    from kuberec.widedeep.pyfunc import DEFAULT_NAME, log_widedeep_model
    from kuberec.widedeep.train import TRAIN_ARTIFACTS

    with tempfile.TemporaryDirectory(prefix="kuberec-widedeep-register-") as tmp:
        model_dir = tracking.download_artifacts(settings, run_id, TRAIN_ARTIFACTS, tmp)
        evaluated = [item.path for item in tracking.client(settings).list_artifacts(run_id, EVALUATION_ARTIFACTS)]
        evaluation = None
        if f"{EVALUATION_ARTIFACTS}/{RESULT_FILE}" in evaluated:
            path = tracking.download_artifacts(settings, run_id, f"{EVALUATION_ARTIFACTS}/{RESULT_FILE}", tmp)
            evaluation = json.loads(path.read_text())["metrics"]
        with tracking.continue_run(settings, run_id):
            return log_widedeep_model(settings, model_dir, name=name or DEFAULT_NAME, set_champion=set_champion,
                                      evaluation=evaluation)
