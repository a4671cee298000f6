"""The wide & deep steps tracked in a real MLflow server (train -> evaluate -> register, one run), and the whole
pipeline under the KFP local runner on the small generated dataset of the `gold` lake."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from kuberec import feed, tracking
from kuberec.ingest import steps as data_steps
from kuberec.ingest.instacart_features import EXAMPLES_TABLE, PRODUCT_TABLE, USER_TABLE, bronze_versions
from kuberec.lake.delta import TableRef, table_version
from kuberec.widedeep import steps
from kuberec.widedeep.config import WideDeepConfig
from kuberec.widedeep.evaluate import SCORED_MODELS, TRAINED
from kuberec.widedeep.pyfunc import load_ranker
from kuberec.widedeep.train import TrainResult
from pipelines import run
from tests.kfp_local import artifact, executor_output

# Own model names: the session's MLflow server is shared with the pyfunc and serving tests' kuberec-widedeep.
STEPS_MODEL, PIPELINE_MODEL = "test-widedeep-steps", "test-widedeep-pipeline"
REGISTER_MODEL = "test-widedeep-register"


@pytest.fixture(scope="module")
def tracked_gold(gold, mlflow_server):
    return dataclasses.replace(gold, mlflow_tracking_uri=mlflow_server.url)


def _artifacts(client, run_id: str, path: str) -> set[str]:
    return {item.path for item in client.list_artifacts(run_id, path)}


def test_steps_share_one_tracked_run(tracked_gold, examples_uri, test_config):
    settings = tracked_gold
    examples = TableRef(examples_uri, table_version(examples_uri))
    config = WideDeepConfig.from_dict({**test_config, "epochs": 2, "steps_per_epoch": 4})
    run_id = steps.train(settings, examples, config, workers=1)
    client = tracking.client(settings)
    trained = client.get_run(run_id)
    assert trained.info.status == "FINISHED" and trained.info.run_name == "train-widedeep"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]  # logged by rank 0, per epoch
    assert trained.data.params["widedeep.epochs"] == "2" and trained.data.params["widedeep.world_size"] == "1"
    lineage = tracking.parse_lineage(trained.data.tags)
    assert lineage[EXAMPLES_TABLE] == (examples_uri, examples.version)
    assert lineage[USER_TABLE][0] == settings.table_uri(USER_TABLE) and PRODUCT_TABLE in lineage
    outputs = {f"{tracking.TRAIN_ARTIFACTS}/train_result.json", f"{tracking.TRAIN_ARTIFACTS}/model"}
    assert outputs <= _artifacts(client, run_id, tracking.TRAIN_ARTIFACTS)
    # A downloaded copy resolves its model next to train_result.json, not at the training machine's path.
    copy = tracking.download_artifacts(settings, run_id, tracking.TRAIN_ARTIFACTS, settings.home / "copy")
    assert TrainResult.load(copy).model_dir == copy / "model"

    evaluation = steps.evaluate(settings, run_id, examples)
    metrics = client.get_run(run_id).data.metrics
    assert list(evaluation.scores) == list(SCORED_MODELS)
    for model, values in evaluation.scores.items():  # tracked as <metric> for the run's model, else <model>_<metric>
        for metric, value in values.items():
            assert metrics[metric if model == TRAINED else f"{model}_{metric}"] == pytest.approx(value)
    assert evaluation.examples_version == examples.version
    assert "evaluation/evaluation.json" in _artifacts(client, run_id, "evaluation")

    registered = steps.register(settings, run_id, policy="always", name=STEPS_MODEL)
    assert registered.run_id == run_id and registered.champion and registered.version == 1
    model, version = load_ranker(settings, STEPS_MODEL)  # models:/test-widedeep-steps@champion
    assert version.run_id == run_id and int(version.version) == registered.version
    assert tracking.parse_lineage(version.tags)[EXAMPLES_TABLE] == (examples_uri, examples.version)
    logged = client.get_logged_model(version.source.removeprefix("models:/"))  # it carries its evaluation
    assert {m.key for m in logged.metrics} >= {"auc", "wide_auc", "popularity_map_at_10"}

    users = feed.load_table_arrays(examples_uri, ("user_id",)).columns["user_id"]
    ranked = model.predict(pd.DataFrame({"user_id": [int(users[0]), 987654321]}), params={"k": 3})
    known, unknown = ranked[ranked["user_id"] == int(users[0])], ranked[ranked["user_id"] == 987654321]
    assert known["rank"].tolist() == [1, 2, 3] and not known["fallback"].any()
    assert known["score"].is_monotonic_decreasing and known["product_name"].str.len().min() > 0
    assert len(unknown) == 3 and unknown["fallback"].all()


def test_the_register_step_gates_champion_on_per_user_auc_of_both_models(tracked_gold, examples_uri, test_config,
                                                                         monkeypatch, tmp_path):
    """The pipeline's register step (the KFP component's own function) with a known answer: a model trained for
    one step at a learning rate of 1e-9 (its initial weights: per-user AUC near chance) against one trained for
    three epochs. The trained challenger is promoted; the untrained one and a tie (the same run again) leave the
    champion where it is."""
    from kfp.dsl import Markdown, Model

    from components.widedeep import register_widedeep

    settings = tracked_gold
    for var, value in settings.to_env().items():  # what the component's own load_settings() reads
        monkeypatch.setenv(var, value)
    examples = TableRef(examples_uri, table_version(examples_uri))
    runs = {"trained": steps.train(settings, examples, WideDeepConfig.from_dict(test_config), workers=1),
            "untrained": steps.train(settings, examples, WideDeepConfig.from_dict(
                {**test_config, "epochs": 1, "steps_per_epoch": 1, "wide_learning_rate": 1e-9,
                 "deep_learning_rate": 1e-9}), workers=1)}

    def register(kind: str):
        step = len(list(tmp_path.iterdir()))
        model, report = Model(uri=str(tmp_path / f"{step}-model")), Markdown(uri=str(tmp_path / f"{step}-md"))
        out = register_widedeep.python_func(run_id=runs[kind], champion="gate", champion_tolerance=0.001,
                                            model_name=REGISTER_MODEL, model=model, report=report)
        assert model.metadata["mlflow_model_uri"] == out.model_uri and "## test-widedeep-register" in \
            Path(report.path).read_text()
        return out

    first = register("untrained")
    assert first.version == 1 and first.champion
    better = register("trained")
    assert better.champion and better.decision["champion_version"] == 1
    assert better.decision["challenger"] > better.decision["champion"] + 0.05, better.decision
    worse = register("untrained")
    assert not worse.champion and worse.decision["challenger"] == better.decision["champion"]
    tie = register("trained")
    assert not tie.champion and tie.decision["challenger"] == tie.decision["champion"]
    assert tracking.alias_version(settings, REGISTER_MODEL).version == "2"
    assert tracking.get_version(settings, REGISTER_MODEL, version=4).tags["kuberec.champion_gate.promote"] == "False"


def test_synthesize_reuses_matching_data(settings):
    first = data_steps.synthesize(settings, 200, seed=1)
    orders = settings.data_dir / data_steps.SYNTH_DIR / "orders.csv"
    stamp = orders.stat().st_mtime_ns
    assert data_steps.synthesize(settings, 200, seed=1) == first and orders.stat().st_mtime_ns == stamp
    data_steps.synthesize(settings, 200, seed=2)
    assert orders.stat().st_mtime_ns != stamp


def test_pipeline_runs_locally(tracked_gold, examples_uri, synth_args, test_config, monkeypatch):
    """The KFP local runner (each component a subprocess) on the gold lake: the regenerated files are identical,
    so ingest and features commit nothing, and the model trained on the same examples version is registered."""
    settings = tracked_gold
    for var, value in settings.to_env().items():
        monkeypatch.setenv(var, value)
    bronze, examples_version = bronze_versions(settings), table_version(examples_uri)
    outputs = run.run_local("widedeep", {**synth_args, "workers": 1, "model_name": PIPELINE_MODEL,
                                         "config_json": json.dumps({**test_config, "epochs": 1})})
    assert outputs["model_uri"] == f"models:/{PIPELINE_MODEL}/1"
    assert outputs["examples_version"] == examples_version == table_version(examples_uri)
    assert bronze_versions(settings) == bronze
    assert set(outputs["metrics"]) >= {"auc", "user_auc", *(f"{model}_auc" for model in SCORED_MODELS[1:])}
    client = tracking.client(settings)
    metrics = client.get_run(outputs["run_id"]).data.metrics
    assert metrics["auc"] == pytest.approx(outputs["metrics"]["auc"])
    version = tracking.get_version(settings, PIPELINE_MODEL)  # @champion
    assert version.run_id == outputs["run_id"] and version.version == "1"
    assert outputs["champion"] is True and outputs["decision"]["policy"] == "gate"
    # What the KFP run page shows: every model's metrics, the ROC curve and confusion matrix, the registered version.
    evaluated = executor_output(settings, "evaluate-widedeep")
    assert artifact(evaluated, "metrics")["metadata"] == pytest.approx(outputs["metrics"])
    classification = artifact(evaluated, "classification")["metadata"]
    roc = classification["confidenceMetrics"]
    assert roc[0]["falsePositiveRate"] == roc[0]["recall"] == 0 and roc[-1]["recall"] == 1
    matrix = classification["confusionMatrix"]
    assert [row["displayName"] for row in matrix["annotationSpecs"]] == ["not reordered", "reordered"]
    assert sum(map(sum, (row["row"] for row in matrix["rows"]))) == len(
        feed.load_table_arrays(examples_uri, ("label",), split="test").columns["label"])
    model = artifact(executor_output(settings, "register-widedeep"), "model")["metadata"]
    assert model["mlflow_model_uri"] == outputs["model_uri"] and model["mlflow_run_id"] == outputs["run_id"]
