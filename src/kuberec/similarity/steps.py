"""The similarity recommender's pipeline steps: train (Horovod job), evaluate, index + register.

Each step takes and returns plain values (table URIs and versions, MLflow run ids), so the CLI and the KFP
components call the same functions and no step depends on another's local files: the training job logs its
outputs into the MLflow run the train step created, and the later steps read them from there by run id.
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
from kuberec.similarity.config import EXPERIMENT, HEADLINE_METRIC, REGISTERED_NAME, SimilarityConfig
from kuberec.similarity.evaluate import EvaluationResult, evaluate_similarity
from kuberec.similarity.pyfunc import RegisteredSimilarityModel
from kuberec.similarity.train import MODEL_DIR
from kuberec.training.worker import RESULT_FILE

log = logging.getLogger(__name__)

TRAIN_MODULE = "kuberec.similarity.train"


def trained_model_uri(run_id: str) -> str:
    """The exported embedding model a tracked training run logged."""
    return f"runs:/{run_id}/{tracking.TRAIN_ARTIFACTS}/{MODEL_DIR}"


def train(settings: Settings, table: TableRef, config: SimilarityConfig, *, workers: int = 1,
          sweep_run_id: str | None = None, out_dir: Path | None = None, resume: bool = False,
          max_examples: int | None = None) -> str:
    """Train on `table` (its train split) as a Horovod job of `workers` processes; returns the MLflow run id.

    The run holds the config, the table version read (lineage), per-epoch metrics and the exported model.
    `sweep_run_id`: the tuning sweep that chose `config`, recorded as a tag. `out_dir`, `resume` and reruns after a
    failure: `kuberec.training.launch.launch_training`. `max_examples` caps the training images (quick runs).
    """
    from kuberec.training.launch import launch_training

    run_id = launch_training(
        settings, "similarity", TRAIN_MODULE, table, config, experiment=EXPERIMENT,
        params={**config.to_dict(), "workers": workers, "max_examples": max_examples},
        lineage={table.uri: table.version}, workers=workers, sweep_run_id=sweep_run_id, out_dir=out_dir,
        resume=resume, extra_args=["--max-examples", str(max_examples)] if max_examples else [])
    log.info("training run %s: model at %s", run_id, trained_model_uri(run_id))
    return run_id


def trained_table(settings: Settings, run_id: str) -> TableRef:
    """The catalog table version run `run_id` trained on (its train_result.json)."""
    with tempfile.TemporaryDirectory(prefix="kuberec-trained-") as tmp:
        path = tracking.download_artifacts(settings, run_id, f"{tracking.TRAIN_ARTIFACTS}/{RESULT_FILE}", tmp)
        result = json.loads(Path(path).read_text())
    return TableRef(result["table_uri"], result["table_version"])


def evaluate(settings: Settings, run_id: str, table: TableRef | None = None, *,
             max_queries: int | None = None) -> EvaluationResult:
    """Retrieval quality of the run's model vs raw pixels (test queries against the train split of `table`,
    default: the table version it trained on), logged into the training run: its metrics
    (`EvaluationResult.metrics`), the result JSON and the neighbour grid PNG. Returns the EvaluationResult (its
    `files` point at the run's artifacts)."""
    import mlflow

    table = table or trained_table(settings, run_id)
    with tempfile.TemporaryDirectory(prefix="kuberec-evaluate-") as tmp:
        model_dir = tracking.download_artifacts(settings, run_id, f"{tracking.TRAIN_ARTIFACTS}/{MODEL_DIR}", Path(tmp))
        result = evaluate_similarity(model_dir, table.uri, table.version, Path(tmp) / tracking.EVALUATION_ARTIFACTS,
                                     max_queries=max_queries)
        with tracking.continue_run(settings, run_id):
            tracking.record_lineage({table.uri: table.version})
            tracking.log_metrics(result.metrics())
            mlflow.log_artifacts(str(Path(tmp) / tracking.EVALUATION_ARTIFACTS), tracking.EVALUATION_ARTIFACTS)
    result.files = {kind: f"runs:/{run_id}/{tracking.EVALUATION_ARTIFACTS}/{Path(path).name}"
                    for kind, path in result.files.items()}
    log.info("evaluation of run %s:\n%s", run_id, result.table())
    return result


def register(settings: Settings, run_id: str, table: TableRef | None = None, *,
             policy: str = gates.DEFAULT_POLICY, tolerance: float = gates.DEFAULT_TOLERANCE,
             max_queries: int | None = None, name: str = REGISTERED_NAME) -> RegisteredSimilarityModel:
    """Index every catalog row of `table` (default: the table version the run trained on) with the run's model and
    register model + index as a new version of `name`; `policy` (kuberec.champion: gate, always, never) decides
    whether it takes the `champion` alias. The gate scores the run's model and the champion's on `table`'s test
    queries (a seeded sample of `max_queries`, as the evaluation step took) against its train split by
    precision@5. The decision is in the result, the training run and the version's tags."""
    from kuberec.similarity.index.build import build_and_register

    gates.check_policy(policy, tolerance)
    table = table or trained_table(settings, run_id)
    decision = gate(settings, run_id, table, name=name, policy=policy, tolerance=tolerance, max_queries=max_queries)
    with tracking.continue_run(settings, run_id):  # the training run holds the registered model, as for wide & deep
        gates.record_decision(decision)
        registered = build_and_register(settings, trained_model_uri(run_id), table_uri=table.uri,
                                        version=table.version, name=name, training_run_id=run_id,
                                        set_champion=decision.promote, tags=decision.tags())
    log.info("%s version %s: %s", name, registered.version, decision.summary())
    return dataclasses.replace(registered, decision=decision)


def gate(settings: Settings, run_id: str, table: TableRef, *, name: str, policy: str, tolerance: float,
         max_queries: int | None) -> ChampionDecision:
    """The champion decision for run `run_id`'s model (kuberec.champion), both models scored on the same data."""
    from kuberec.similarity.evaluate import load_evaluation_data, score_model
    from kuberec.similarity.model import load_embedding_model
    from kuberec.similarity.pyfunc import load_recommender

    current = tracking.alias_version(settings, name)
    data = functools.cache(lambda: load_evaluation_data(table.uri, table.version, max_queries=max_queries))

    def score(model) -> float:
        return score_model(model, data()).flat()[HEADLINE_METRIC]

    def challenger() -> float:
        with tempfile.TemporaryDirectory(prefix="kuberec-gate-") as tmp:
            return score(load_embedding_model(tracking.download_artifacts(
                settings, run_id, f"{tracking.TRAIN_ARTIFACTS}/{MODEL_DIR}", tmp)))

    def champion() -> float:
        return score(load_recommender(settings, name, version=current.version)[0].unwrap_python_model().model)

    return gates.decide(policy, metric=HEADLINE_METRIC, champion_version=int(current.version) if current else None,
                  score_challenger=challenger, score_champion=champion, tolerance=tolerance)


def evaluation_report(settings: Settings, run_id: str, result: EvaluationResult) -> str:
    """The evaluation as an HTML page (the KFP run page's visualization): the quality table, model vs raw pixels,
    the neighbour grid and the MLflow run that holds both."""
    from kuberec.reports import metric_table_html, png_html
    from kuberec.similarity.evaluate import GRID_FILE

    with tempfile.TemporaryDirectory(prefix="kuberec-report-") as tmp:
        png = tracking.download_artifacts(settings, run_id, f"{tracking.EVALUATION_ARTIFACTS}/{GRID_FILE}",
                                          tmp).read_bytes()
    url = tracking.run_url(settings, run_id)
    run = f'<a href="{url}" target="_blank">{run_id}</a>' if url else run_id
    protocol = result.table().splitlines()[-1]
    return (f"<h3>Retrieval quality of training run {run}</h3><p>{protocol}, {result.table_uri} "
            f"v{result.table_version}</p>"
            + metric_table_html({"model": result.model.flat(), "raw pixels": result.raw_pixels.flat()})
            + "<h3>Nearest neighbours (green = same class)</h3>" + png_html(png, "neighbour grid"))
