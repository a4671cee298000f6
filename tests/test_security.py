"""Security basics: the embedded MLflow server listens on loopback unless told otherwise, and warns when told;
credentials never appear in rendered Kubernetes resources, compiled pipelines, job command lines, logs, or MLflow
params and tags (pod security: tests/k8s/test_pod_security.py)."""

from __future__ import annotations

import json
import logging
import os
import socket

import psutil
import pytest
import yaml

from kuberec import tracking
from kuberec.backends import HorovodJob, RayJob, ServingJob, SparkJob
from kuberec.backends.k8s.options import ClusterConfigError, ClusterOptions
from kuberec.backends.k8s.render import render
from kuberec.backends.local import LocalBackend
from kuberec.settings import Settings, SettingsError, exposure_warning, load_settings, redact_uri
from kuberec.tracking import server as mlflow_server
from kuberec.training.launch import training_run

# Distinctive fake credentials: any appearance of one of these values is a leak.
FAKE = {"AWS_ACCESS_KEY_ID": "AKIAKUBERECFAKEKEY42", "AWS_SECRET_ACCESS_KEY": "fake-secret-3vQ9wLx7Zp",
        "MLFLOW_TRACKING_USERNAME": "fake-user-Qm8", "MLFLOW_TRACKING_PASSWORD": "fake-pass-Hx4Kd9",
        "POSTGRES_PASSWORD": "fake-pg-7TgRw2"}


@pytest.fixture
def credentials(monkeypatch) -> dict[str, str]:
    for name, value in FAKE.items():
        monkeypatch.setenv(name, value)
    return FAKE


def leaks(text: str) -> list[str]:
    return [name for name, value in FAKE.items() if value in text]


def listening(pid: int) -> set[tuple[str, int]]:
    """The TCP addresses the processes of `pid`'s process group (the server and its workers) listen on."""
    group = [p for p in psutil.process_iter() if _pgid(p.pid) == pid]
    return {(c.laddr.ip, c.laddr.port) for p in group for c in _connections(p) if c.status == psutil.CONN_LISTEN}


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _connections(process: psutil.Process) -> list:
    try:
        return process.connections(kind="tcp")  # psutil 5.9 (kserve needs < 6): net_connections came in 6.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


# -- where the embedded MLflow server listens --------------------------------------------------------------------


def test_mlflow_server_listens_on_loopback_only_and_moves_only_when_told(settings, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="kuberec.tracking.server")
    monkeypatch.delenv("KUBEREC_MLFLOW_HOST", raising=False)
    info = mlflow_server.ensure_server(settings)
    try:
        assert listening(info.pid) == {("127.0.0.1", info.port)}
        assert info.url == f"http://127.0.0.1:{info.port}"
        # Asking for another address while it runs is refused, not done behind the other processes' backs.
        moved = Settings(home=settings.home, cache_dir=settings.cache_dir, mlflow_host="127.0.0.2")
        with pytest.raises(mlflow_server.MlflowServerError, match="listens on 127.0.0.1, but KUBEREC_MLFLOW_HOST"):
            mlflow_server.ensure_server(moved)
    finally:
        mlflow_server.stop_server(settings)
    # The setting is what it binds: another loopback address (no warning: still this machine only).
    monkeypatch.setenv("KUBEREC_MLFLOW_HOST", "127.0.0.2")
    moved = load_settings()
    info = mlflow_server.ensure_server(moved)
    try:
        assert listening(info.pid) == {("127.0.0.2", info.port)}
        assert info.url == f"http://127.0.0.2:{info.port}" and mlflow_server.healthy(info.url)
        assert mlflow_server.running_server(moved) == info  # found again through the state file
    finally:
        mlflow_server.stop_server(moved)
    assert not [r for r in caplog.records if "no authentication" in r.getMessage()]


@pytest.mark.fast
def test_mlflow_server_warns_before_listening_beyond_loopback(tmp_path, caplog):
    """KUBEREC_MLFLOW_HOST=0.0.0.0: the warning comes before anything starts. The port asked for is taken on
    loopback (where a server on every address would be reached too), so nothing starts: this test binds only
    127.0.0.1."""
    caplog.set_level(logging.WARNING, logger="kuberec.tracking.server")
    settings = Settings(home=tmp_path, mlflow_host="0.0.0.0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(mlflow_server.MlflowServerError, match=f"port {port} is already in use on 0.0.0.0"):
            mlflow_server.ensure_server(settings, port=port)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("listens on 0.0.0.0" in w and "no authentication" in w and "KUBEREC_MLFLOW_HOST" in w
               for w in warnings), warnings
    assert mlflow_server.running_server(settings) is None
    # Which addresses count as beyond this machine (the same rule as MLServer's and the demo page's).
    assert exposure_warning("192.0.2.10", "x") and exposure_warning("mlflow.example", "x")
    assert exposure_warning("127.0.0.2", "x") is None and exposure_warning("::1", "x") is None


# -- credentials only through Secrets ------------------------------------------------------------------------------


@pytest.fixture
def cluster_env(monkeypatch, tmp_path, credentials):
    monkeypatch.setenv("KUBEREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBEREC_LAKE", "s3://kuberec/lake")
    monkeypatch.setenv("KUBEREC_S3_ENDPOINT", "http://minio.kuberec.svc.cluster.local:9000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.kuberec.svc.cluster.local:5000")
    monkeypatch.setenv("KUBEREC_BACKEND", "kubernetes")
    return credentials


JOBS = [SparkJob("ingest", "kuberec.ingest.fashion_mnist"), HorovodJob("train", "m", workers=2),
        HorovodJob("train", "m", workers=2, gpus_per_worker=1), RayJob("tune", "m", workers=2),
        ServingJob("similarity", "s3://mlflow/artifacts/1/model", extra={"KUBEREC_TOP_K": "5"})]


@pytest.mark.fast
@pytest.mark.parametrize("job", JOBS, ids=lambda j: f"{type(j).__name__}-{getattr(j, 'gpus_per_worker', 0)}")
def test_rendered_resources_carry_no_credential(cluster_env, job):
    body = render(job, load_settings(), ClusterOptions.from_env())
    text = yaml.safe_dump(body) + json.dumps(body)
    assert not leaks(text)
    if not isinstance(job, ServingJob):  # the job pods name the Secrets' keys instead (the predictor: KServe)
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert f"kuberec-lake:{key}" in text or '"name": "kuberec-lake", "key": "' + key in text


@pytest.mark.fast
def test_cli_render_prints_no_credential(cluster_env, capsys):
    from kuberec import cli

    for kind, extra in (("sparkapplication", ["--module", "m"]), ("mpijob", ["--module", "m"]),
                        ("rayjob", ["--module", "m"]), ("inferenceservice", ["--model-uri", "s3://b/m"])):
        assert cli.main(["k8s", "render", kind, *extra]) == 0
        captured = capsys.readouterr()
        assert not leaks(captured.out + captured.err), kind


@pytest.mark.fast
@pytest.mark.parametrize("variable", ["MLFLOW_TRACKING_URI", "KUBEREC_K8S_POD_MLFLOW_URI"])
def test_a_uri_with_credentials_is_refused_without_printing_them(cluster_env, monkeypatch, variable):
    password = FAKE["MLFLOW_TRACKING_PASSWORD"]
    monkeypatch.setenv(variable, f"http://{FAKE['MLFLOW_TRACKING_USERNAME']}:{password}@mlflow.team:5000")
    with pytest.raises(ClusterConfigError, match="carries credentials") as err:
        render(HorovodJob("train", "m"), load_settings(), ClusterOptions.from_env())
    assert not leaks(str(err.value)) and "MLFLOW_TRACKING_USERNAME" in str(err.value)


@pytest.mark.fast
@pytest.mark.parametrize("field", ["lake_uri", "s3_endpoint"])
def test_settings_refuse_credentials_in_lake_uris(tmp_path, field):
    value = {"lake_uri": "s3://{}:{}@kuberec/lake", "s3_endpoint": "http://{}:{}@minio:9000"}[field]
    with pytest.raises(SettingsError, match="carries credentials") as err:
        Settings(home=tmp_path, **{field: value.format(FAKE["AWS_ACCESS_KEY_ID"], FAKE["AWS_SECRET_ACCESS_KEY"])})
    assert not leaks(str(err.value)) and "AWS_SECRET_ACCESS_KEY" in str(err.value)


@pytest.mark.fast
def test_redact_uri():
    assert redact_uri("http://u:p@h:5000/x?y=1") == "http://***@h:5000/x?y=1"
    assert redact_uri("https://token@h") == "https://***@h"
    for plain in ("http://h:5000", "s3a://kuberec/lake/t@v3", "/local/path", ""):
        assert redact_uri(plain) == plain  # a lineage tag's @v3 is no credential


@pytest.mark.fast
def test_compiled_pipelines_carry_no_credential(credentials, tmp_path):
    from pipelines import run

    for name in sorted(run.PIPELINES):
        text = run.compile_pipeline(name, tmp_path / name).read_text()
        assert not leaks(text), name
        assert "secretAsEnv" in text or "kuberec-lake" in text  # credentials by Secret reference


def test_local_jobs_logs_and_mlflow_carry_no_credential(tracked_settings, mlflow_server, credentials, tmp_path,
                                                        monkeypatch, capfd, caplog):
    """A step's run (params, lineage tags) and its Horovod job (2 ranks through horovodrun, as a training step
    launches them) with credentials in the environment: no credential in any process's command line, the job's
    output, kuberec's log, the run's params and tags, or the tracking server's log."""
    caplog.set_level(logging.DEBUG)
    dump = tmp_path / "kuberec_cmdline_dump.py"
    # Each rank prints every process's command line on this machine, horovodrun's and its siblings' included.
    dump.write_text("import pathlib\n"
                    "for proc in pathlib.Path('/proc').glob('[0-9]*'):\n"
                    "    try:\n"
                    "        print('cmdline', (proc / 'cmdline').read_bytes().replace(b'\\0', b' ').decode())\n"
                    "    except (OSError, UnicodeDecodeError):\n"
                    "        pass\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    settings = load_settings()
    params = {"epochs": 1, "workers": 2, "table": settings.table_uri("fashion_mnist")}
    with training_run(settings, "security", run_name="security", params=params,
                      lineage={settings.table_uri("fashion_mnist"): 3}) as (run_id, _, _):
        LocalBackend(settings).run_horovod(HorovodJob("security", "kuberec_cmdline_dump", workers=2))
    captured = capfd.readouterr()
    assert captured.out.count("kuberec_cmdline_dump") >= 2  # both ranks ran and dumped
    assert not leaks(captured.out + captured.err)
    assert not leaks("\n".join(r.getMessage() for r in caplog.records))
    run = tracking.client(settings).get_run(run_id)
    assert run.data.params["epochs"] == "1" and run.data.tags
    assert not leaks(json.dumps({"params": run.data.params, "tags": run.data.tags}))
    with open(mlflow_server.log_file, errors="replace") as log:
        assert not leaks(log.read())
