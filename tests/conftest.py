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
    test_settings = load_settings()
    yield test_settings
    # A step that needed MLflow and found none configured started the home's embedded server: stop it.
    from kuberec import mlflow_server

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
    """One real MLflow server (SQLite + local artifacts), started by kuberec.mlflow_server under its own home."""
    from kuberec.mlflow_server import ensure_server, stop_server

    home_settings = Settings(home=tmp_path_factory.mktemp("mlflow-home"), cache_dir=SHARED_CACHE)
    info = ensure_server(home_settings)
    yield info
    stop_server(home_settings)


@pytest.fixture
def tracked_settings(settings, mlflow_server, monkeypatch) -> Settings:
    """`settings` whose MLflow is the session's server (MLFLOW_TRACKING_URI, as a team server would be given)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    return load_settings()


# What a `fast` test must not start (directly or through another fixture): the JVM, a server, the API server.
HEAVY_FIXTURES = frozenset({"spark", "mlflow_server", "tracked_settings", "apiserver", "mlserver"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        heavy = HEAVY_FIXTURES & set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("fast") and heavy:
            raise pytest.UsageError(f"{item.nodeid} is marked fast but uses {', '.join(sorted(heavy))}")
