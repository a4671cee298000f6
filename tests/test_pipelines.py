"""Pipelines compile deterministically and run end to end with the KFP local runner on a small subset."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuberec.champion import ChampionPolicyError
from kuberec.lake.delta import table_version
from pipelines import run
from tests.kfp_local import artifact, executor_output

PIPELINE_MODEL = "test-pipeline-similarity"
# The tasks each pipeline compiles to (KFP names a task after its component, with dashes).
TASKS = {
    "catalog": {"ingest-fashion-mnist"},
    "similarity": {"ingest-fashion-mnist", "tune-config", "train-similarity", "evaluate-similarity",
                   "register-similarity"},
    "widedeep": {"instacart-source", "ingest-instacart", "build-features", "tune-config", "train-widedeep",
                 "evaluate-widedeep", "register-widedeep"},
    "refresh": {"ingest-staged-images", "refresh-index"},
}


@pytest.mark.fast
@pytest.mark.parametrize("name", sorted(run.PIPELINES))
def test_compiles_deterministically_to_its_tasks_in_the_runtime_image(name, tmp_path):
    import inspect

    import yaml

    from kuberec.settings import load_settings

    first = run.compile_pipeline(name, tmp_path / "a").read_text()
    second = run.compile_pipeline(name, tmp_path / "b").read_text()
    assert first == second
    spec, platform = yaml.safe_load_all(first)  # the pipeline, then its Kubernetes settings (kfp-kubernetes)
    assert spec["pipelineInfo"]["name"] == f"kuberec-{name}"
    assert set(spec["root"]["dag"]["tasks"]) == TASKS[name]
    images = {name.removeprefix("exec-"): executor["container"]["image"]
              for name, executor in spec["deploymentSpec"]["executors"].items()}
    # In the runtime image, but for the wide & deep evaluation: it trains its baselines in-process, with Horovod.
    assert images == {task: load_settings().image("horovod-cpu" if task == "evaluate-widedeep" else "runtime")
                      for task in TASKS[name]}
    # Every parameter of the pipeline function is a run input a user can set (`--param`, the KFP dashboard).
    function = run.load_pipeline(name).pipeline_func
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == set(inspect.signature(function).parameters)
    assert set(platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]) == \
        set(spec["deploymentSpec"]["executors"])  # every task gets the cluster settings (configure_for_cluster)
    # Nothing may come from KFP's cache: the steps' effects live in Delta and MLflow, outside what KFP tracks.
    assert not any(task.get("cachingOptions", {}).get("enableCache")
                   for task in spec["root"]["dag"]["tasks"].values())


@pytest.mark.fast
def test_params_are_typed_and_a_config_that_lost_its_quotes_is_refused_before_anything_runs():
    params = run.parse_params("similarity", ["workers=3", 'config_json={"epochs": 1}', "model_name=x"])
    assert params == {"workers": 3, "config_json": '{"epochs": 1}', "model_name": "x"}
    with pytest.raises(run.PipelineError, match=r"config_json: '\{epochs:1\}' is not valid JSON"):
        # what the shell leaves of PIPELINE_ARGS='--param config_json={"epochs":1}' in `make pipeline-run`
        run.parse_params("similarity", ["config_json={epochs:1}"])
    with pytest.raises(run.PipelineError, match="workers: 'two' is not valid JSON"):
        run.parse_params("similarity", ["workers=two"])
    with pytest.raises(ChampionPolicyError, match="unknown champion policy 'yes'"):  # before training, not after
        run.parse_params("widedeep", ["champion=yes"])


@pytest.mark.fast
@pytest.mark.parametrize("name", sorted(run.PIPELINES))
def test_every_pipeline_parameter_has_a_description_the_dashboard_shows(name, tmp_path):
    import yaml

    from kuberec.reports import markdown_text

    spec, _ = yaml.safe_load_all(run.compile_pipeline(name, tmp_path).read_text())
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert {key for key, value in parameters.items() if not value.get("description")} == set()
    # ... and beside the pipeline's own description in the dashboard (the run form shows names and types only).
    shown = run.upload_description(name)
    assert shown.startswith(run.load_pipeline(name).description)
    assert all(f"- **{markdown_text(key)}**: {markdown_text(' '.join(value['description'].split()))}" in shown
               for key, value in parameters.items())


@pytest.mark.fast
def test_a_schedule_is_checked_before_anything_is_uploaded(monkeypatch, capsys):
    with pytest.raises(run.PipelineError, match="--schedule needs KFP_HOST"):
        run.main(["refresh", "--schedule", "0 0 * * * *"])
    monkeypatch.setenv("KFP_HOST", "http://127.0.0.1:9")  # nothing listens: a bad cron must fail before any call
    with pytest.raises(run.PipelineError, match="KFP's cron has 6 fields, seconds first"):
        run.main(["refresh", "--schedule", "0 * * * *"])
    with pytest.raises(SystemExit):
        run.main(["all", "--schedule", "0 0 * * * *"])
    assert "--schedule makes one pipeline a recurring run" in capsys.readouterr().err


@pytest.mark.fast
def test_the_docker_runners_containers_get_kuberecs_settings_but_none_of_this_machines_paths():
    environ = {"KUBEREC_LAKE": "s3://kuberec/e2e", "KUBEREC_HOME": "/work/.kuberec", "KUBEREC_CACHE": "/work/cache",
               "MLFLOW_TRACKING_URI": "http://127.0.0.1:5001", "AWS_SECRET_ACCESS_KEY": "s", "KUBECONFIG": "/root/k",
               "PATH": "/work/.venv/bin", "HOME": "/root", "KUBEREC_K8S_POD_S3_ENDPOINT": "http://minio:9000"}
    assert run.container_environment(environ) == {
        "KUBEREC_LAKE": "s3://kuberec/e2e", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5001",
        "AWS_SECRET_ACCESS_KEY": "s", "KUBEREC_K8S_POD_S3_ENDPOINT": "http://minio:9000",
        "HOME": "/tmp", "KUBEREC_HOME": "/tmp/kuberec", "KUBECONFIG": run.CONTAINER_KUBECONFIG}


@pytest.mark.fast
def test_the_docker_runner_is_refused_where_its_containers_could_not_run_the_steps(settings, monkeypatch, capsys):
    # The runtime image has no Spark or Horovod, and a container's files are gone when it ends.
    with pytest.raises(run.PipelineError, match="set KUBEREC_BACKEND=kubernetes and an s3:// KUBEREC_LAKE"):
        run.run_local("catalog", {"max_per_split": 30}, runner="docker")
    monkeypatch.setenv("KFP_HOST", "http://127.0.0.1:9")
    with pytest.raises(SystemExit):
        run.main(["catalog", "--runner", "docker"])
    assert "Kubeflow Pipelines (KFP_HOST, --upload) always runs them in their containers" in capsys.readouterr().err


def test_catalog_pipeline_runs_locally(settings):
    outputs = run.run_local("catalog", {"max_per_split": 30})
    assert outputs["Output"] == settings.table_uri("fashion_mnist")
    assert table_version(settings.table_uri("fashion_mnist")) == 0


def test_similarity_pipeline_runs_locally_and_registers_a_champion(tracked_settings):
    """The whole similarity pipeline on 150 images per split: ingest (Spark) -> a 2-trial Ray Tune sweep ->
    2-worker horovodrun training of its best config -> evaluation -> index -> registry; the champion it registers
    answers for an image and for an item id."""
    import numpy as np
    import pandas as pd

    from kuberec import tracking
    from kuberec.similarity.pyfunc import load_recommender, png_b64

    config = '{"architecture": "seed", "epochs": 2, "steps_per_epoch": 4}'
    # A model of its own: the session's MLflow server holds other tests' kuberec-similarity.
    outputs = run.run_local("similarity", {"max_per_split": 150, "workers": 2, "config_json": config,
                                           "eval_queries": 100, "tune_trials": 2, "model_name": PIPELINE_MODEL})
    assert outputs["champion"] is True and outputs["model_uri"] == f"models:/{PIPELINE_MODEL}/1"
    assert 0 <= outputs["metrics"]["precision_at_5"] <= 1 and "raw_pixels_precision_at_5" in outputs["metrics"]

    client = tracking.client(tracked_settings)
    training = client.get_run(outputs["training_run_id"])
    table = tracked_settings.table_uri("fashion_mnist")
    assert tracking.parse_lineage(training.data.tags) == {"fashion_mnist": (table, 0)}
    assert [m.step for m in client.get_metric_history(training.info.run_id, "loss")] == [1, 2]
    assert training.data.metrics["precision_at_5"] == outputs["metrics"]["precision_at_5"]
    # The sweep chose the config (its fixed fields are config_json's) and the training run says which sweep.
    sweep = client.get_run(training.data.tags[tracking.SWEEP_RUN_TAG])
    assert sweep.data.params["model"] == "similarity" and sweep.info.status == "FINISHED"
    assert training.data.params["architecture"] == "seed" and training.data.params["epochs"] == "2"

    model, version = load_recommender(tracked_settings, PIPELINE_MODEL)
    assert int(version.version) == outputs["version"]
    image = np.frombuffer(model.unwrap_python_model().index.items["image"].iloc[0], np.uint8).reshape(28, 28)
    by_image = model.predict(pd.DataFrame({"image_b64": [png_b64(image)]}))
    by_item = model.predict(pd.DataFrame({"item_id": [3]}), params={"k": 5})
    assert len(by_image) == 5 and len(by_item) == 5 and 3 not in by_item["item_id"].tolist()

    # What the KFP run page shows: every metric, the report, the registered version with its MLflow links.
    evaluated, registered = executor_output(tracked_settings, "evaluate-similarity"), \
        executor_output(tracked_settings, "register-similarity")
    assert artifact(evaluated, "metrics")["metadata"] == pytest.approx(outputs["metrics"])
    report = Path(artifact(evaluated, "report")["uri"]).read_text()
    assert "raw pixels" in report and '<img alt="neighbour grid" src="data:image/png;base64,' in report
    assert f"/runs/{training.info.run_id}" in report  # the MLflow run, one click away
    model_artifact = artifact(registered, "model")["metadata"]
    assert model_artifact["mlflow_model_uri"] == outputs["model_uri"] and model_artifact["champion"] is True
    assert outputs["decision"]["reason"] == "first version: no champion to beat"
    assert "is now **champion**" in Path(artifact(registered, "report")["uri"]).read_text()
    # ... and the MLflow side names the KFP run (the local runner's id and name).
    assert training.data.tags[tracking.KFP_RUN_NAME_TAG].startswith("kuberec-similarity-")
    assert sweep.data.tags[tracking.KFP_RUN_ID_TAG] == training.data.tags[tracking.KFP_RUN_ID_TAG] == \
        version.tags[tracking.KFP_RUN_ID_TAG]

    # The catalog refresh: three new pictures staged in the lake become a new champion (the grown index holds the
    # champion's precision@5: with 150 queries one neighbour moved by the grown HNSW graph is 0.0013, hence a
    # tolerance above the default); the next run finds nothing and registers nothing.
    from PIL import Image

    from kuberec.ingest.steps import ARCHIVE, STAGING, lake_location

    staging = Path(lake_location(tracked_settings, STAGING))
    (staging / "shirts").mkdir(parents=True)
    for number in range(3):
        Image.fromarray(np.full((28, 28), 40 * (number + 1), np.uint8)).save(staging / "shirts" / f"{number}.png")
    refreshed = run.run_local("refresh", {"champion_tolerance": 0.01, "model_name": PIPELINE_MODEL})
    assert refreshed["ingested"] == 3 and refreshed["added"] == 3 and refreshed["version"] == outputs["version"] + 1
    assert refreshed["champion"] is True and "holds champion" in refreshed["decision"]["reason"]
    assert not list(staging.rglob("*.png"))
    assert sorted(p.name for p in Path(lake_location(tracked_settings, ARCHIVE)).rglob("*.png")) == \
        ["0.png", "1.png", "2.png"]
    again = run.run_local("refresh", {"champion_tolerance": 0.01, "model_name": PIPELINE_MODEL})
    assert again["ingested"] == 0 and again["version"] == 0 and again["champion"] is False
    assert int(tracking.get_version(tracked_settings, PIPELINE_MODEL).version) == refreshed["version"]

