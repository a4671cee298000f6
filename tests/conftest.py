"""Shared fixtures: isolated project homes over the shared cache, and one real Spark session per test run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from kuberec.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
# Downloads, built wheels and Delta jars stay in the project's cache so tests never refetch them.
SHARED_CACHE = Path(os.environ.get("KUBEREC_CACHE", REPO / ".kuberec" / "cache")).absolute()


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kuberec-home")


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Iterator[Settings]:
    """Settings for one test: a fresh home and lake, the shared cache; exported so child processes agree."""
    home = tmp_path / "home"
    monkeypatch.setenv("KUBEREC_HOME", str(home))
    monkeypatch.setenv("KUBEREC_CACHE", str(SHARED_CACHE))
    monkeypatch.delenv("KUBEREC_LAKE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("KUBEREC_MLFLOW_HOST", raising=False)  # test servers stay on loopback
    test_settings = load_settings()
    yield test_settings
    # A step that needed MLflow and found none configured started the home's embedded server: stop it.
    from kuberec.tracking import server as mlflow_server

    mlflow_server.stop_server(test_settings)


@pytest.fixture(scope="session")
def spark(session_home):
    """One local Spark session (real JVM, real Delta) shared by all tests; each test uses its own lake dir."""
    from kuberec.lake.spark import spark_session

    session = spark_session(Settings(home=session_home, cache_dir=SHARED_CACHE, spark_master="local[2]"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real MLflow server (SQLite + local artifacts), started by kuberec.tracking.server under its own home."""
    from kuberec.tracking.server import ensure_server, stop_server

    home_settings = Settings(home=tmp_path_factory.mktemp("mlflow-home"), cache_dir=SHARED_CACHE)
    info = ensure_server(home_settings)
    yield info
    stop_server(home_settings)


@pytest.fixture
def tracked_settings(settings, mlflow_server, monkeypatch) -> Settings:
    """`settings` whose MLflow is the session's server (MLFLOW_TRACKING_URI, as a team server would be given)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    return load_settings()


class S3Server:
    """moto's S3 server in a process of its own on loopback, over real HTTP: a fake S3 (no MinIO binary in `make
    test`; `make cluster-smoke` uses the cluster's MinIO); it accepts any credentials. Not a thread of the test
    process: delta-rs holds the GIL while it waits for an answer, so an in-process server could never reply."""

    def __init__(self, attempts: int = 3) -> None:
        import socket
        import subprocess
        import sys
        import time

        for _ in range(attempts):  # another process may take the free port before the server binds it
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.process.poll() is None:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        self.endpoint = f"http://127.0.0.1:{port}"
                        return
                time.sleep(0.2)
            self.stop()
        raise RuntimeError(f"moto's S3 server did not start in {attempts} attempts")

    def client(self, key: str = "kuberec-test", secret: str = "kuberec-test-secret"):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=key,
                            aws_secret_access_key=secret)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """One S3Server for the test run; each test makes its own bucket."""
    server = S3Server()
    yield server
    server.stop()


# What a `fast` test must not start (directly or through another fixture): the JVM, a server, the API server.
HEAVY_FIXTURES = frozenset({"spark", "mlflow_server", "tracked_settings", "apiserver", "model_server"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        heavy = HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("fast") and heavy:
            raise pytest.UsageError(f"{item.nodeid} is marked fast but uses {', '.join(sorted(heavy))}")


# The repository's own home: tests must never start its embedded MLflow server (one was seen left running after a
# full run once, and not reproduced since). The test after which it appears is named (not stopped: the server may be
# a pipeline the developer started meanwhile).
REPO_SERVER_STATE = REPO / ".kuberec" / "mlflow" / "server.json"


def _repo_server_state() -> str | None:
    return REPO_SERVER_STATE.read_text() if REPO_SERVER_STATE.is_file() else None


@pytest.fixture(scope="session")
def _repo_server_seen() -> dict[str, str | None]:
    return {"state": _repo_server_state()}


@pytest.fixture(autouse=True)
def _repository_home_left_alone(request, _repo_server_seen):
    yield
    state = _repo_server_state()
    if state is not None and state != _repo_server_seen["state"]:
        import warnings

        warnings.warn(f"{request.node.nodeid} may have started the MLflow server of the repository's own home "
                      f"({REPO_SERVER_STATE} appeared). Tests must use a home of their own (the `settings` fixture)")
    _repo_server_seen["state"] = state
