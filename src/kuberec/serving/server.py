"""`kuberec serve`: the registered recommenders on KServe's Python model server (V2 REST + gRPC) on loopback.

Each model spec (`name`, `name@alias`, `name:version`) is resolved in the MLflow registry to one version, whose
model directory is downloaded once into `<home>/serving/models/<name>/v<version>` (so a restart with a cached
version starts in seconds; `--version N` with a cached copy does not even contact the registry). A repository
(kuberec.serving.repository: one spec per model) is written to `<home>/serving/repo/<port>` and `--workers` model
server processes (kuberec.serving.model_server) serve it on the same ports. Liveness and readiness are KServe's
`/v2/health/live` and `/v2/health/ready`; SIGTERM/SIGINT stop the processes cleanly.

Following an alias: a model served by alias (`name@champion`, the default) is checked against the registry every
`follow_s` seconds; when the alias has moved (a promotion or a rollback), the new version is downloaded and its spec
rewritten; every server process loads it beside the old one and then swaps: requests never see a model that is not
loaded (docs/serving.md). A version that fails to load is reported and skipped; the old one keeps serving.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from kuberec import tracking
from kuberec.backends.local import die_with_parent
from kuberec.errors import KuberecError
from kuberec.serving import repository
from kuberec.settings import LOOPBACK, Settings, exposure_warning

log = logging.getLogger(__name__)

HOST = LOOPBACK  # where clients (and the readiness checks) reach the server, whatever it listens on
DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT = 8080, 8081
READY_TIMEOUT_S = 300.0  # model load imports TensorFlow: ~10 s idle, minutes on a loaded 2-core machine
SOURCE_FILE = ".kuberec-source"  # which registry entry a cached copy came from
FOLLOW_S = 30.0  # default seconds between registry checks of the aliases served


class ServingError(KuberecError):
    """The server could not be configured or started."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str, alias: str | None = None, version: int | None = None) -> "ModelSpec":
        """`name`, `name@alias` or `name:version`; the defaults apply to a bare name."""
        text = text.strip()
        if "@" in text:
            name, _, spec_alias = text.partition("@")
            return cls(name, alias=spec_alias)
        if ":" in text:
            name, _, number = text.partition(":")
            if not number.isdigit():
                raise ServingError(f"model spec {text!r}: the version after ':' must be a number")
            return cls(name, version=int(number))
        return cls(text, version=version, alias=None if version is not None else alias)


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: int
    path: Path  # local MLflow model directory


def model_cache(settings: Settings) -> Path:
    return settings.home / "serving" / "models"


def _cached(settings: Settings, name: str, version: int) -> Path:
    return model_cache(settings) / name / f"v{version}"


def fetch_model(settings: Settings, spec: ModelSpec) -> ServedModel:
    """Resolve `spec` in the registry and return a local copy of that version (downloaded once)."""
    if spec.version is not None:
        cached = _cached(settings, spec.name, spec.version)
        if (cached / "MLmodel").exists() and (cached / SOURCE_FILE).exists():
            # A registered version's artifacts never change: a cached copy needs no registry (or its server).
            log.info("%s v%d: cached at %s", spec.name, spec.version, cached)
            return ServedModel(spec.name, spec.version, cached)
    version = tracking.get_version(settings, spec.name, version=spec.version, alias=spec.alias)
    number = int(version.version)
    target = _cached(settings, spec.name, number)
    source = f"{version.source} {version.run_id}"  # run ids are unique across registries
    if (target / "MLmodel").exists() and (target / SOURCE_FILE).exists() and \
            (target / SOURCE_FILE).read_text() == source:
        log.info("%s v%d: cached at %s", spec.name, number, target)
        return ServedModel(spec.name, number, target)
    _download(settings, spec.name, number, target, source)
    return ServedModel(spec.name, number, target)


def _download(settings: Settings, name: str, version: int, target: Path, source: str) -> None:
    import mlflow.artifacts

    tracking.configure(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Download next to the target and rename, so an interrupted download never looks like a cached model.
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=tracking.model_uri(name, version=version),
                                                         dst_path=tmp))
        if not (local / "MLmodel").exists():
            raise ServingError(f"{name} v{version}: the downloaded artifacts at {local} have no MLmodel file")
        (local / SOURCE_FILE).write_text(source)
        shutil.rmtree(target, ignore_errors=True)
        local.rename(target)
    log.info("%s v%d: downloaded to %s in %.1f s", name, version, target, time.monotonic() - started)


def resolve(settings: Settings, specs: Sequence[ModelSpec], *, required: bool) -> list[ServedModel]:
    """Local copies of `specs`. With `required=False` (the default model list), unregistered ones are skipped."""
    served = []
    for spec in specs:
        try:
            served.append(fetch_model(settings, spec))
        except tracking.ModelNotFoundError as err:
            if required:
                raise
            log.warning("not serving %s: %s", spec.name, err)
    if not served:
        raise ServingError(f"none of the models {[s.name for s in specs]} is registered at "
                           f"{tracking.tracking_uri(settings)}; register one first (kuberec index build)")
    return served


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a taskset or a cpuset)."""
    return len(os.sched_getaffinity(0))


def default_workers(cpus: int) -> int:
    """Model server processes for `cpus` CPUs: one up to 2 CPUs (inference on the server's event loop: with MLServer,
    worker processes lost there, 304 image queries/s against 544 in-process, docs/BENCHMARKS.md), else one per CPU,
    each answering its share of the connections (not measured here: no machine with more cores ran it)."""
    return 1 if cpus <= 2 else cpus


def write_repository(root: Path, models: Sequence[ServedModel]) -> Path:
    """A repository for kuberec's model server: one spec per model (kuberec.serving.repository)."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for model in models:
        repository.write_spec(root, model.name, str(model.path), str(model.version))
    return root


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _check_port(port: int) -> None:
    with socket.socket() as sock:
        if sock.connect_ex((HOST, port)) == 0:
            raise ServingError(f"port {port} on {HOST} is already in use; pick another (--port / --grpc-port)")


class ModelServer:
    """`workers` model server processes (kuberec.serving.model_server) serving one repository on shared ports."""

    def __init__(self, repo: Path, models: Sequence[ServedModel], log_file: Path, *, http_port: int, grpc_port: int,
                 workers: int = 1, host: str = HOST) -> None:
        if workers < 1:
            raise ServingError(f"workers must be 1 or more (model server processes), not {workers}")
        self.repo, self.models, self.log_file = repo, list(models), log_file
        self.http_port, self.grpc_port, self.workers = http_port, grpc_port, workers
        self.listen_host = host
        # Reached on loopback when it listens there or on every address; else at the address it was given.
        self.host = HOST if host in ("0.0.0.0", "::", "localhost") or exposure_warning(host, "") is None else host
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kuberec.serving.model_server", "--repository", str(self.repo),
                "--host", self.listen_host, "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]

    def start(self, timeout: float = READY_TIMEOUT_S, abort: threading.Event | None = None) -> "ModelServer":
        """Start the processes and wait until each has loaded every model and the server answers ready; `abort`
        (set by a signal handler) stops the wait and the processes."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_file, "ab") as out:
            for _ in range(self.workers):
                # Own process group each, so stopping one also stops anything it forked.
                self.processes.append(subprocess.Popen(
                    self.command(), cwd=self.repo, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, start_new_session=True, preexec_fn=die_with_parent))
        log.info("starting the model server (%d process%s, pids %s) on %s with %s; log: %s", self.workers,
                 "" if self.workers == 1 else "es", ", ".join(str(p.pid) for p in self.processes), self.url,
                 ", ".join(f"{m.name} v{m.version}" for m in self.models), self.log_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if abort is not None and abort.is_set():
                self.stop()
                return self
            self.check_running("while starting")
            if all(self._status(m.name, p.pid) for m in self.models for p in self.processes) and \
                    _http_ok(f"{self.url}/v2/health/ready"):
                log.info("model server ready at %s", self.url)
                return self
            time.sleep(0.5)
        self.stop()
        raise ServingError(f"the model server was not ready within {timeout:.0f} s; see {self.log_file}:\n"
                           f"{_tail(self.log_file)}")

    def check_running(self, when: str = "") -> None:
        for process in self.processes:
            if process.poll() is not None:
                self.stop()
                raise ServingError(f"a model server process exited with status {process.returncode} {when}; "
                                   f"see {self.log_file}:\n{_tail(self.log_file)}".replace("  ", " "))

    def _status(self, name: str, pid: int) -> dict | None:
        return repository.read_json(repository.status_path(self.repo, name, pid))

    def switch(self, model: ServedModel, timeout: float = READY_TIMEOUT_S) -> None:
        """Serve `model` in place of the loaded version of the same name, without a moment with no model loaded;
        if a process cannot load the new version, every process goes on serving the old one and ServingError says
        why."""
        current = next(m for m in self.models if m.name == model.name)
        repository.write_spec(self.repo, model.name, str(model.path), str(model.version))
        deadline, pending = time.monotonic() + timeout, {p.pid for p in self.processes}
        while pending and time.monotonic() < deadline:
            self.check_running(f"while switching {model.name}")
            for pid in list(pending):
                status = self._status(model.name, pid) or {}
                if status.get("registry_version") != str(model.version):
                    continue
                if status.get("error"):
                    repository.write_spec(self.repo, current.name, str(current.path), str(current.version))
                    raise ServingError(f"{model.name} v{model.version} did not load ({status['error']}); still "
                                       f"serving v{current.version}")
                pending.discard(pid)
            time.sleep(0.2)
        if pending:
            repository.write_spec(self.repo, current.name, str(current.path), str(current.version))
            raise ServingError(f"{model.name} v{model.version} did not load within {timeout:.0f} s; still serving "
                               f"v{current.version}")
        self.models = [model if m.name == model.name else m for m in self.models]

    def stop(self, timeout: float = 30.0) -> None:
        running = [p for p in self.processes if p.poll() is None]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for process in running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
            ends = time.monotonic() + timeout
            for process in running:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=max(0.0, ends - time.monotonic()))
            running = [p for p in running if p.poll() is None]
            if not running:
                break
            log.warning("%d model server process(es) did not stop within %.0f s of %s", len(running), timeout,
                        sig.name)
        if self.processes:
            log.info("model server stopped (status %s)", ", ".join(str(p.returncode) for p in self.processes))

    def __enter__(self) -> "ModelServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def prepare(settings: Settings, specs: Sequence[ModelSpec], *, http_port: int = DEFAULT_HTTP_PORT,
            grpc_port: int = DEFAULT_GRPC_PORT, required: bool = True, workers: int | None = None,
            host: str = HOST) -> ModelServer:
    """Resolve, cache and configure: a model server ready to `start()`, listening on `host`."""
    warning = exposure_warning(host, "the model server")
    if warning:
        log.warning(warning)
    if workers is not None and workers < 1:
        raise ServingError(f"workers must be 1 or more (model server processes), not {workers}")
    for port in (http_port, grpc_port):
        _check_port(port)
    models = resolve(settings, specs, required=required)
    base = settings.home / "serving"
    repo = write_repository(base / "repo" / str(http_port), models)
    return ModelServer(repo, models, base / f"model-server-{http_port}.log", http_port=http_port,
                       grpc_port=grpc_port, workers=default_workers(usable_cpus()) if workers is None else workers,
                       host=host)


@contextlib.contextmanager
def running(settings: Settings, specs: Sequence[ModelSpec], **kwargs) -> Iterator[ModelServer]:
    """The model server serving `specs` for the duration of the block."""
    server = prepare(settings, specs, **kwargs)
    try:
        yield server.start()
    finally:
        server.stop()


class AliasFollower:
    """Keeps each model served by alias on the version its alias points at (a promotion or a rollback)."""

    def __init__(self, settings: Settings, server: ModelServer, specs: Sequence[ModelSpec]) -> None:
        served = {m.name for m in server.models}
        self.settings, self.server = settings, server
        self.specs = [s for s in specs if s.alias is not None and s.name in served]
        self.failed: dict[str, int] = {}  # name -> a version that failed to load: not retried until the alias moves

    def check(self) -> list[str]:
        """One look at the registry; switches what moved and returns what it did, one line per model."""
        done = []
        for spec in self.specs:
            target = tracking.alias_version(self.settings, spec.name, spec.alias)  # None: gone or unreachable
            current = next(m for m in self.server.models if m.name == spec.name)
            if target is None or int(target.version) in (current.version, self.failed.get(spec.name)):
                continue
            number, started = int(target.version), time.monotonic()
            try:
                self.server.switch(fetch_model(self.settings, ModelSpec(spec.name, version=number)))
            except KuberecError as err:
                self.failed[spec.name] = number
                log.error("%s@%s moved to v%d, which cannot be served: %s", spec.name, spec.alias, number, err)
                continue
            done.append(f"{spec.name}@{spec.alias} moved: now serving v{number} (was v{current.version}; switched "
                        f"in {time.monotonic() - started:.1f} s)")
        return done

    def run(self, stop: threading.Event, every_s: float) -> None:
        while not stop.wait(every_s):
            try:
                for line in self.check():
                    print(line, flush=True)
            except Exception:  # a follower that dies would silently stop promotions reaching the server
                log.exception("checking the registry's aliases failed; trying again in %.0f s", every_s)


def serve(settings: Settings, specs: Sequence[ModelSpec], *, http_port: int, grpc_port: int, required: bool,
          demo_port: int | None = None, workers: int | None = None, follow_s: float = FOLLOW_S,
          host: str = HOST) -> int:
    """Run in the foreground until SIGTERM/SIGINT or until a model server process exits; returns an exit status.
    Models served by alias follow it, checked every `follow_s` seconds (0: never)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server = prepare(settings, specs, http_port=http_port, grpc_port=grpc_port, required=required, workers=workers,
                     host=host)
    demo = None
    try:
        server.start(abort=stop)
        if stop.is_set():
            return 0
        print(f"serving {', '.join(f'{m.name} v{m.version}' for m in server.models)} at {server.url}"
              f"  (V2: POST {server.url}/v2/models/<name>/infer; gRPC on {server.host}:{grpc_port})", flush=True)
        follower = AliasFollower(settings, server, specs)
        if follow_s > 0 and follower.specs:
            threading.Thread(target=follower.run, args=(stop, follow_s), name="alias-follower", daemon=True).start()
            print(f"following {', '.join(f'{s.name}@{s.alias}' for s in follower.specs)} in the registry every "
                  f"{follow_s:g} s", flush=True)
        if demo_port is not None:
            from kuberec.serving.demo import start_demo

            demo = start_demo(server.url, port=demo_port, host=host)
            print(f"demo page at {demo.url}", flush=True)
        while not stop.is_set():
            server.check_running()
            stop.wait(1.0)
        log.info("signal received; shutting down")
        return 0
    finally:
        if demo is not None:
            demo.stop()
        server.stop()
