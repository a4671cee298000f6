"""kuberec.tracking.server and kuberec.tracking against real MLflow servers: the embedded server's lifecycle, runs
with lineage, registry."""

from __future__ import annotations

import json
import os

import pytest

from kuberec import cli, tracking
from kuberec.settings import load_settings
from kuberec.tracking import server as mlflow_server


def test_embedded_server_starts_once_is_reused_and_stops(settings, capsys):
    assert mlflow_server.running_server(settings) is None
    info = mlflow_server.ensure_server(settings)
    try:
        assert mlflow_server.healthy(info.url) and info.url.startswith("http://127.0.0.1:")
        state = json.loads((settings.mlflow_dir / "server.json").read_text())
        assert state["pid"] == info.pid and state["port"] == info.port
        assert (settings.mlflow_dir / "mlflow.db").exists()
        # Later callers (other processes, the CLI) find and reuse the same server.
        assert mlflow_server.ensure_server(settings) == info
        assert tracking.tracking_uri(settings) == info.url
        assert cli.main(["mlflow", "ui"]) == 0
        assert info.url in capsys.readouterr().out
        # Moving a running server to another port is refused, not done behind other users' backs.
        assert cli.main(["mlflow", "ui", "--port", str(info.port + 1)]) == 2
        assert f"already runs on port {info.port}" in capsys.readouterr().err
        # Tracking through it works.
        import mlflow

        tracking.configure(settings)
        with tracking.start_run(settings, "lifecycle") as run:
            tracking.log_metrics({"x": 1.0})
        assert mlflow.get_run(run.info.run_id).data.metrics == {"x": 1.0}
    finally:
        assert cli.main(["mlflow", "stop"]) == 0
    assert f"pid {info.pid}" in capsys.readouterr().out
    assert not mlflow_server.healthy(info.url)
    with pytest.raises(ProcessLookupError):
        os.kill(info.pid, 0)
    assert not (settings.mlflow_dir / "server.json").exists()
    assert mlflow_server.stop_server(settings) is None


def test_stale_state_file_is_not_trusted(settings):
    settings.mlflow_dir.mkdir(parents=True)
    stale = mlflow_server.ServerInfo(pid=os.getpid(), port=1, backend_store_uri="sqlite:///nowhere.db",
                                     artifacts_destination="/nowhere", log_file="/nowhere.log")
    (settings.mlflow_dir / "server.json").write_text(json.dumps(stale.__dict__))
    # The pid is alive (this test) but is no MLflow server of this home: neither reused nor killed.
    assert mlflow_server.running_server(settings) is None
    assert mlflow_server.stop_server(settings) is None
    os.kill(os.getpid(), 0)


def test_configured_uri_wins_and_starts_nothing(settings, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.kubeflow.svc:5000")
    configured = load_settings()
    assert tracking.tracking_uri(configured) == "http://mlflow.kubeflow.svc:5000"
    assert not configured.mlflow_dir.exists()


def test_runs_record_lineage_params_and_per_epoch_metrics(tracked_settings):
    import mlflow

    reads = {"/lake/fashion_mnist": 3, "s3a://bucket/lake/orders": 12}
    with tracking.start_run(tracked_settings, "kuberec-test-runs", run_name="train", lineage=reads,
                            params={"lr": 0.001, "layers": [32, 64]}) as run:
        for epoch, loss in enumerate((0.9, 0.5, 0.3), start=1):  # as the training jobs log each epoch
            tracking.log_metrics({"loss": loss}, step=epoch)
        tracking.record_lineage({"/lake/extra": 0})
    client = tracking.client(tracked_settings)
    data = client.get_run(run.info.run_id).data
    assert data.tags["kuberec.lineage.fashion_mnist"] == "/lake/fashion_mnist@v3"
    assert tracking.parse_lineage(data.tags) == {"fashion_mnist": ("/lake/fashion_mnist", 3),
                                                 "orders": ("s3a://bucket/lake/orders", 12),
                                                 "extra": ("/lake/extra", 0)}
    assert data.params == {"lr": "0.001", "layers": "[32, 64]"}
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.9), (2, 0.5), (3, 0.3)]
    assert mlflow.active_run() is None


def test_registry_uris_resolve_to_the_artifact_store(tracked_settings, tmp_path):
    """What KServe reads for `kuberec k8s deploy --model-uri models:/<name>@champion`: the files of the registered
    version in the server's --artifacts-destination, the same path the server stores them under."""
    import mlflow

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    tracking.configure(tracked_settings)
    # An explicit experiment, not mlflow.set_experiment: that would stay active for the later tests of this process.
    with mlflow.start_run(experiment_id=tracking.experiment_id("resolve")) as run:
        mlflow.log_artifacts(str(tmp_path / "model"), "train/model")
    version, _ = tracking.register_and_promote(tracked_settings, f"runs:/{run.info.run_id}/train/model", "resolved",
                                               set_champion=True)
    destination = "s3://mlflow/artifacts"
    by_alias = tracking.artifact_store_uri(tracked_settings, "models:/resolved@champion", destination)
    by_version = tracking.artifact_store_uri(tracked_settings, f"models:/resolved/{version.version}", destination)
    by_run = tracking.artifact_store_uri(tracked_settings, f"runs:/{run.info.run_id}/train/model", destination)
    assert by_alias == by_version == by_run
    artifact_uri = mlflow.get_run(run.info.run_id).info.artifact_uri  # mlflow-artifacts:/<experiment>/<run>/artifacts
    assert by_run == f"{destination}/{artifact_uri.split(':', 1)[1].lstrip('/')}/train/model"
    assert tracking.artifact_store_uri(tracked_settings, "s3://bucket/model", destination) == "s3://bucket/model"
    with pytest.raises(tracking.ModelNotFoundError, match="no alias @nope"):
        tracking.artifact_store_uri(tracked_settings, "models:/resolved@nope", destination)


def test_missing_models_and_aliases_give_clear_errors(tracked_settings):
    assert tracking.alias_version(tracked_settings, "no-such-model") is None
    with pytest.raises(tracking.ModelNotFoundError, match="no-such-model.*no versions are registered"):
        tracking.get_version(tracked_settings, "no-such-model")
    assert tracking.model_uri("m") == "models:/m@champion"
    assert tracking.model_uri("m", version=3) == "models:/m/3"


@pytest.mark.fast
def test_what_a_pipeline_creates_links_back_to_its_kubeflow_run(tmp_path):
    from kuberec.settings import Settings

    outside = Settings(home=tmp_path)
    assert tracking.pipeline_tags(outside) == tracking.pipeline_run_tags(outside) == {}
    inside = Settings(home=tmp_path, kfp_run_id="4c99", kfp_run_name="kuberec-refresh-x",
                      kfp_ui_url="http://127.0.0.1:8088/", image_tag="dev")
    assert tracking.pipeline_tags(inside) == {
        tracking.KFP_RUN_ID_TAG: "4c99", tracking.KFP_RUN_NAME_TAG: "kuberec-refresh-x",
        tracking.KUBEREC_VERSION_TAG: "dev", tracking.KFP_RUN_URL_TAG: "http://127.0.0.1:8088/#/runs/details/4c99"}
    # A run's description is Markdown in the MLflow UI: the KFP run is one click away.
    assert tracking.pipeline_run_tags(inside)["mlflow.note.content"] == \
        "Created by Kubeflow Pipelines run [kuberec-refresh-x](http://127.0.0.1:8088/#/runs/details/4c99)"
    assert "mlflow.note.content" not in tracking.pipeline_run_tags(Settings(home=tmp_path, kfp_run_id="4c99"))
    assert tracking.KFP_RUN_NAME_TAG not in tracking.pipeline_tags(Settings(home=tmp_path, kfp_run_id="4c99"))
