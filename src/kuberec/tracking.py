"""MLflow for kuberec: where the tracking server is, runs with data lineage, and the model registry.

`tracking_uri(settings)` is `MLFLOW_TRACKING_URI` (or `mlflow_tracking_uri` in the config) when set: the in-cluster
server, a team server. Otherwise kuberec runs its own embedded server: SQLite backend store and proxied local
artifacts under `<home>/mlflow`, on loopback, started on first use and reused by every later process (KFP local
components, Horovod ranks, the CLI) through a state file that records its pid and port. `kuberec mlflow ui` prints
its URL; `kuberec mlflow stop` ends it.

Every run records the Delta table versions it read as tags `kuberec.lineage.<table>=<uri>@v<version>`, so a model
version traces back to its exact data. The registry helpers wrap names, versions and the `champion` alias.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from kuberec.errors import KuberecError
from kuberec.settings import Settings

if TYPE_CHECKING:
    from mlflow import ActiveRun
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CHAMPION = "champion"
LINEAGE_PREFIX = "kuberec.lineage."
SWEEP_RUN_TAG = "kuberec.tuned_by_sweep_run"
HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0  # cold start is 15-60 s on the 2-core machine; more when it is busy
UNHEALTHY_GRACE_S = 30.0


class TrackingError(KuberecError):
    """The MLflow server could not be started or reached, or a registry lookup failed."""


class ModelNotFoundError(TrackingError):
    """A registered model, version or alias does not exist."""


# -- the embedded server ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    pid: int  # also the process group: the server runs in its own session
    port: int
    backend_store_uri: str
    artifacts_destination: str
    log_file: str

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _paths(settings: Settings) -> dict[str, Path]:
    base = settings.mlflow_dir
    return {"base": base, "db": base / "mlflow.db", "artifacts": base / "artifacts", "state": base / "server.json",
            "lock": base / "server.lock", "log": base / "server.log"}


def healthy(url: str, timeout: float = 2.0) -> bool:
    """True when an MLflow server answers `/health` at `url`."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _read_state(settings: Settings) -> ServerInfo | None:
    state = _paths(settings)["state"]
    try:
        return ServerInfo(**json.loads(state.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _is_our_server(info: ServerInfo) -> bool:
    """The recorded pid is still this home's MLflow server (not a recycled pid of something else)."""
    try:
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "mlflow" in cmdline and info.backend_store_uri in cmdline


def running_server(settings: Settings) -> ServerInfo | None:
    """The embedded server of this home if it is up and healthy, else None."""
    info = _read_state(settings)
    if info is not None and _is_our_server(info) and healthy(info.url):
        return info
    return None


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    # Serialises check-then-start across processes (parallel KFP components, Horovod ranks).
    lock_path = _paths(settings)["lock"]
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((HOST, port)) == 0


def ensure_server(settings: Settings, port: int | None = None, timeout: float = START_TIMEOUT_S) -> ServerInfo:
    """Start this home's embedded MLflow server unless it already runs; return where it is.

    `port` pins the port (default: a free one). Asking for a port other than the one a running server uses is an
    error rather than a silent restart, since other processes may be using the server.
    """
    with _locked(settings):
        info = running_server(settings) or _wait_for_slow_server(settings)
        if info is not None:
            if port is not None and port != info.port:
                raise TrackingError(f"the MLflow server of {settings.home} already runs on port {info.port}; "
                                    f"use that, or `kuberec mlflow stop` first to move it to port {port}")
            return info
        return _start(settings, port, timeout)


def _wait_for_slow_server(settings: Settings) -> ServerInfo | None:
    """The recorded server if it is alive and answers within a grace period; a silent one is terminated.

    On a busy machine /health can take seconds; only a server that stays silent is replaced, since other
    processes may be using it.
    """
    info = _read_state(settings)
    if info is None or not _is_our_server(info):
        return None
    deadline = time.monotonic() + UNHEALTHY_GRACE_S
    while time.monotonic() < deadline:
        if healthy(info.url, timeout=5.0):
            return info
        time.sleep(1.0)
    log.warning("MLflow server pid %d has not answered %s/health for %.0f s; restarting it", info.pid, info.url,
                UNHEALTHY_GRACE_S)
    _terminate(info)
    return None


def _start(settings: Settings, port: int | None, timeout: float) -> ServerInfo:
    paths = _paths(settings)
    paths["artifacts"].mkdir(parents=True, exist_ok=True)
    if port is None:
        port = _free_port()
    elif _port_in_use(port):
        raise TrackingError(f"port {port} is already in use on {HOST}; pick another with --port")
    backend_store = f"sqlite:///{paths['db']}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store,
               "--artifacts-destination", str(paths["artifacts"]), "--host", HOST, "--port", str(port),
               "--workers", "1"]
    # Without this MLflow 3 forks 7 job-runner workers (~2.5 GB RSS) that kuberec never uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(paths["log"], "ab") as log_file:
        # Own session: it outlives the command that started it and is stopped as one process group.
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=paths["base"], start_new_session=True)
    info = ServerInfo(pid=process.pid, port=port, backend_store_uri=backend_store,
                      artifacts_destination=str(paths["artifacts"]), log_file=str(paths["log"]))
    log.info("starting MLflow server on %s (pid %d, store %s)", info.url, process.pid, paths["db"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TrackingError(f"the MLflow server exited with status {process.returncode} while starting; "
                                f"see {paths['log']}:\n{_tail(paths['log'])}")
        if healthy(info.url, timeout=1.0):
            paths["state"].write_text(json.dumps(asdict(info), indent=2))
            log.info("MLflow server ready at %s", info.url)
            return info
        time.sleep(0.5)
    _terminate(info)
    raise TrackingError(f"the MLflow server did not answer {info.url}/health within {timeout:.0f} s; "
                        f"see {paths['log']}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _terminate(info: ServerInfo, timeout: float = 20.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(info.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(info.pid, 0)
            except ProcessLookupError:
                return
            with contextlib.suppress(ChildProcessError):
                os.waitpid(info.pid, os.WNOHANG)  # reap it when this process started it
            time.sleep(0.2)


def stop_server(settings: Settings) -> ServerInfo | None:
    """Stop this home's embedded server; returns what was stopped, or None when none was running."""
    with _locked(settings):
        info = _read_state(settings)
        stopped = None
        if info is not None and _is_our_server(info):
            _terminate(info)
            stopped = info
            log.info("stopped MLflow server pid %d (%s)", info.pid, info.url)
        _paths(settings)["state"].unlink(missing_ok=True)
        return stopped


def tracking_uri(settings: Settings) -> str:
    """The tracking URI to use: the configured one, else the embedded server (started if needed)."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    return ensure_server(settings).url


def configure(settings: Settings) -> str:
    """Point this process's MLflow client (tracking and registry) at `tracking_uri(settings)`; returns it."""
    import mlflow

    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def client(settings: Settings) -> "MlflowClient":
    from mlflow.tracking import MlflowClient

    uri = configure(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# -- runs and lineage --------------------------------------------------------------------------------------------


def table_name(table_uri: str) -> str:
    return table_uri.rstrip("/").rsplit("/", 1)[-1]


def lineage_tags(reads: Mapping[str, int]) -> dict[str, str]:
    """Tags for the Delta tables a run read: {table URI: version} -> {kuberec.lineage.<table>: <uri>@v<version>}."""
    return {f"{LINEAGE_PREFIX}{table_name(uri)}": f"{uri}@v{int(version)}" for uri, version in reads.items()}


def parse_lineage(tags: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """The inverse of `lineage_tags`: {table name: (uri, version)} from a run's or model version's tags."""
    lineage = {}
    for key, value in tags.items():
        if key.startswith(LINEAGE_PREFIX) and "@v" in value:
            uri, _, version = value.rpartition("@v")
            lineage[key.removeprefix(LINEAGE_PREFIX)] = (uri, int(version))
    return lineage


def experiment_id(name: str) -> str:
    """Id of the experiment `name`, created if missing (safe when several processes race to create it)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(name)
    except MlflowException:
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextlib.contextmanager
def start_run(settings: Settings, experiment: str, *, run_name: str | None = None,
              lineage: Mapping[str, int] | None = None, params: Mapping[str, Any] | None = None,
              tags: Mapping[str, str] | None = None, nested: bool = False) -> Iterator["ActiveRun"]:
    """An MLflow run in `experiment` tagged with the Delta versions it reads (`lineage`: {table URI: version})."""
    import mlflow

    configure(settings)
    all_tags = {**lineage_tags(lineage or {}), **(tags or {})}
    with mlflow.start_run(experiment_id=experiment_id(experiment), run_name=run_name, nested=nested,
                          tags=all_tags) as run:
        if params:
            log_params(params)
        yield run


def sweep_tags(sweep_run_id: str | None) -> dict[str, str]:
    """Tags of a training run whose config a tuning sweep chose (its MLflow parent run), or none."""
    return {SWEEP_RUN_TAG: sweep_run_id} if sweep_run_id else {}


def record_lineage(reads: Mapping[str, int]) -> None:
    """Tag the active run with Delta versions read after it started."""
    import mlflow

    mlflow.set_tags(lineage_tags(reads))


def _param_values(params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value, default=str)
            for key, value in params.items()}


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    mlflow.log_params(_param_values(params))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    import mlflow

    mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)


def log_history(history: Mapping[str, Sequence[float]]) -> None:
    """Per-epoch metrics (a Keras `History.history`): each series logged with step = epoch number."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    run = mlflow.active_run()
    if run is None:
        raise TrackingError("log_history needs an active run (use tracking.start_run)")
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, epoch)
               for key, series in history.items() for epoch, value in enumerate(series)]
    for start in range(0, len(metrics), 1000):  # the REST API takes at most 1,000 metrics per batch
        MlflowClient().log_batch(run.info.run_id, metrics=metrics[start:start + 1000])


def epoch_logger():
    """A Keras callback that logs each epoch's metrics to the active run as they happen (step = epoch)."""
    import tensorflow as tf

    class EpochLogger(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            if logs:
                log_metrics({k: v for k, v in logs.items() if isinstance(v, (int, float))}, step=epoch)

    return EpochLogger()


# -- registry ----------------------------------------------------------------------------------------------------


def model_uri(name: str, *, version: int | str | None = None, alias: str | None = None) -> str:
    """`models:/<name>/<version>` or `models:/<name>@<alias>` (default alias: champion)."""
    if version is not None:
        return f"models:/{name}/{version}"
    return f"models:/{name}@{alias or CHAMPION}"


def register_model(settings: Settings, source_uri: str, name: str, *, tags: Mapping[str, str] | None = None,
                   description: str | None = None) -> "ModelVersion":
    """Register the logged model at `source_uri` (e.g. `runs:/<id>/model`) as a new version of `name`."""
    import mlflow

    configure(settings)
    version = mlflow.register_model(source_uri, name, tags=dict(tags or {}))
    if description:
        client(settings).update_model_version(name, version.version, description=description)
    return version


def set_alias(settings: Settings, name: str, version: int | str, alias: str = CHAMPION) -> None:
    client(settings).set_registered_model_alias(name, alias, str(version))
    log.info("%s@%s -> version %s", name, alias, version)


def alias_version(settings: Settings, name: str, alias: str = CHAMPION) -> "ModelVersion | None":
    """The version `alias` points at, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def get_version(settings: Settings, name: str, *, version: int | str | None = None,
                alias: str | None = None) -> "ModelVersion":
    """A model version by number or alias (default alias: champion); ModelNotFoundError says what exists."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        if version is not None:
            return mlflow_client.get_model_version(name, str(version))
        return mlflow_client.get_model_version_by_alias(name, alias or CHAMPION)
    except MlflowException as err:
        wanted = f"version {version}" if version is not None else f"alias @{alias or CHAMPION}"
        try:
            known = sorted(int(v.version) for v in mlflow_client.search_model_versions(f"name = '{name}'"))
        except MlflowException:
            known = []
        hint = (f"it has versions {known}" if known else
                "no versions are registered; build and register one first (kuberec index build)")
        raise ModelNotFoundError(f"registered model {name!r} has no {wanted} at {tracking_uri(settings)}: "
                                 f"{hint}") from err


def register_and_promote(settings: Settings, source_uri: str, name: str, *, set_champion: bool | None,
                         tags: Mapping[str, str] | None = None,
                         description: str | None = None) -> tuple["ModelVersion", bool]:
    """Register `source_uri` as a new version of `name`; (version, whether it is now the champion).

    `set_champion`: True moves the `champion` alias to the new version, False leaves it, None sets it only when the
    model has no champion yet, so a first registration is servable right away.
    """
    version = register_model(settings, source_uri, name, tags=tags, description=description)
    champion = alias_version(settings, name) is None if set_champion is None else set_champion
    if champion:
        set_alias(settings, name, version.version)
    return version, bool(champion)


def pinned_requirements(distributions: Sequence[str]) -> list[str]:
    """`dist==<installed version>` for each distribution (unpinned when it is not installed): a model's pip list."""
    from importlib import metadata

    pins = []
    for dist in distributions:
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pins.append(dist)
    return pins


# -- runs that span processes ------------------------------------------------------------------------------------
# A pipeline step creates the run (params, lineage) and hands its id to the job it launches (a Horovod job: local
# processes or an MPIJob), whose rank 0 logs into it; the step then closes it with the job's outcome. Later steps
# read the run's artifacts by id, so nothing depends on a file system shared between pods.


def create_run(settings: Settings, experiment: str, *, run_name: str, lineage: Mapping[str, int] | None = None,
               params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> str:
    """A new RUNNING run with params and lineage tags, not attached to this process; returns its id."""
    from mlflow.entities import Param

    mlflow_client = client(settings)
    run = mlflow_client.create_run(experiment_id(experiment), run_name=run_name,
                                   tags={**lineage_tags(lineage or {}), **(tags or {})})
    if params:
        mlflow_client.log_batch(run.info.run_id, params=[Param(key, str(value)) for key, value in
                                                         _param_values(params).items()])
    return run.info.run_id


@contextlib.contextmanager
def continue_run(settings: Settings, run_id: str) -> Iterator["ActiveRun"]:
    """Make an existing run this process's active run (FINISHED when the block ends, FAILED when it raises)."""
    import mlflow

    configure(settings)
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def end_run(settings: Settings, run_id: str, *, failed: bool = False) -> None:
    client(settings).set_terminated(run_id, "FAILED" if failed else "FINISHED")


@contextlib.contextmanager
def step_run(settings: Settings, experiment: str, *, run_name: str, lineage: Mapping[str, int] | None = None,
             params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """`create_run` for the job a step launches; the run ends FINISHED, or FAILED when the job raises."""
    run_id = create_run(settings, experiment, run_name=run_name, lineage=lineage, params=params, tags=tags)
    try:
        yield run_id
    except BaseException:
        end_run(settings, run_id, failed=True)
        raise
    end_run(settings, run_id)


def download_artifacts(settings: Settings, run_id: str, artifact_path: str, dst: str | Path | None = None) -> Path:
    """A run's artifact directory as a local path (downloaded from the tracking server)."""
    import mlflow

    configure(settings)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                    dst_path=str(dst) if dst else None))
