"""The embedded MLflow server kuberec runs when no tracking server is configured.

SQLite backend store and proxied local artifacts under `<home>/mlflow`, on loopback (KUBEREC_MLFLOW_HOST moves it,
with a warning: it has no authentication), started on first use and reused
by every later process (KFP local components, Horovod ranks, the CLI) through a state file that records its pid and
port; a lock serialises check-then-start across those processes. A server found dead (killed, crashed) is started
again on the port it had, so the URL that running processes hold still works; nothing is lost, since runs live in
the SQLite file. `kuberec mlflow ui` prints its URL; `kuberec mlflow stop` ends it (the next start may take another
port). `kuberec.tracking` decides when to use it (this module knows nothing of runs or models).
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
from typing import Iterator

from kuberec.errors import KuberecError
from kuberec.ports import free_port
from kuberec.settings import LOOPBACK, Settings, exposure_warning

log = logging.getLogger(__name__)

HOST = LOOPBACK  # where it listens unless the mlflow_host setting (KUBEREC_MLFLOW_HOST) says otherwise
START_TIMEOUT_S = 180.0  # cold start is 15-60 s on the 2-core machine; more when it is busy
UNHEALTHY_GRACE_S = 30.0


class MlflowServerError(KuberecError):
    """The embedded MLflow server could not be started (or moved to another port)."""


@dataclass(frozen=True)
class ServerInfo:
    pid: int  # also the process group: the server runs in its own session
    port: int
    backend_store_uri: str
    artifacts_destination: str
    log_file: str
    host: str = HOST  # the address it listens on (state files written before this field: loopback)

    @property
    def url(self) -> str:
        return f"http://{_client_address(self.host)}:{self.port}"


def bind_host(settings: Settings) -> str:
    """The address the embedded server listens on: the mlflow_host setting, by default loopback only."""
    return settings.mlflow_host or HOST


def _client_address(host: str) -> str:
    """How this machine reaches a server listening on `host` (a wildcard address: over loopback), URL-ready."""
    host = {"0.0.0.0": HOST, "::": "::1", "": HOST}.get(host, host)
    return f"[{host}]" if ":" in host else host


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


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""  # gone (a zombie's is empty too)


def recorded_server(settings: Settings) -> ServerInfo | None:
    """What the state file says about this home's last server, whether or not it still runs."""
    return _read_state(settings)


def _is_our_server(info: ServerInfo) -> bool:
    """The recorded server still runs: its pid is this home's `mlflow server` (not a recycled pid), or that process
    was killed on its own and the web server it started (uvicorn, same process group, same port) still serves."""
    cmdline = _cmdline(info.pid)
    if "mlflow" in cmdline and info.backend_store_uri in cmdline:
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pgid = int(stat.read_text().rsplit(")", 1)[1].split()[2])
        except (OSError, ValueError, IndexError):
            continue
        if pgid == info.pid and "mlflow" in (other := _cmdline(int(stat.parent.name))) and \
                f" --port {info.port} " in other:
            return True
    return False


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


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _port_in_use(host: str, port: int) -> bool:
    address = _client_address(host).strip("[]")
    with socket.socket(_family(address)) as sock:
        return sock.connect_ex((address, port)) == 0


def ensure_server(settings: Settings, port: int | None = None, timeout: float = START_TIMEOUT_S) -> ServerInfo:
    """Start this home's embedded MLflow server unless it already runs; return where it is.

    `port` pins the port (default: a free one). Asking for a port other than the one a running server uses is an
    error rather than a silent restart, since other processes may be using the server.
    """
    with _locked(settings):
        info = running_server(settings) or _wait_for_slow_server(settings)
        if info is not None:
            if port is not None and port != info.port:
                raise MlflowServerError(f"the MLflow server of {settings.home} already runs on port {info.port}; "
                                    f"use that, or `kuberec mlflow stop` first to move it to port {port}")
            if bind_host(settings) != info.host:  # never leave it exposed (or hidden) against the setting
                raise MlflowServerError(f"the MLflow server of {settings.home} listens on {info.host}, but "
                                        f"KUBEREC_MLFLOW_HOST asks for {bind_host(settings)}; run `kuberec mlflow "
                                        f"stop` to restart it there on next use, or change the setting back")
            return info
        return _start(settings, _previous_port(settings) if port is None else port, timeout)


def _previous_port(settings: Settings) -> int | None:
    """The port of this home's last server, when it is gone and its port free: starting again there keeps the URL
    that running processes (a training job's rank 0, a pipeline step) hold working once they retry."""
    info = _read_state(settings)
    if info is None or _port_in_use(bind_host(settings), info.port):
        return None
    log.warning("the MLflow server of %s (pid %d, %s) is gone; starting it again on port %d", settings.home,
                info.pid, info.url, info.port)
    return info.port


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
    host = bind_host(settings)
    warning = exposure_warning(host, "the embedded MLflow server (KUBEREC_MLFLOW_HOST)")
    if warning:
        log.warning(warning)
    if port is None:
        port = free_port(host)
    elif _port_in_use(host, port):
        raise MlflowServerError(f"port {port} is already in use on {host}; pick another with --port")
    backend_store = f"sqlite:///{paths['db']}"
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store,
               "--artifacts-destination", str(paths["artifacts"]), "--host", host, "--port", str(port),
               "--workers", "1"]
    # Without this MLflow 3 forks 7 job-runner workers (~2.5 GB RSS) that kuberec never uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(paths["log"], "ab") as log_file:
        # Own session: it outlives the command that started it and is stopped as one process group.
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=paths["base"], start_new_session=True)
    info = ServerInfo(pid=process.pid, port=port, backend_store_uri=backend_store,
                      artifacts_destination=str(paths["artifacts"]), log_file=str(paths["log"]), host=host)
    log.info("starting MLflow server on %s (pid %d, store %s)", info.url, process.pid, paths["db"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MlflowServerError(f"the MLflow server exited with status {process.returncode} while starting; "
                                f"see {paths['log']}:\n{_tail(paths['log'])}")
        if healthy(info.url, timeout=1.0):
            paths["state"].write_text(json.dumps(asdict(info), indent=2))
            log.info("MLflow server ready at %s", info.url)
            return info
        time.sleep(0.5)
    _terminate(info)
    raise MlflowServerError(f"the MLflow server did not answer {info.url}/health within {timeout:.0f} s; "
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
