"""`kuberec serve`: the registered recommenders on MLServer 1.7.1 (V2 REST + gRPC) on loopback.

Each model spec (`name`, `name@alias`, `name:version`) is resolved in the MLflow registry to one version, whose
model directory is downloaded once into `<home>/serving/models/<name>/v<version>` (so a restart with a cached
version starts in seconds; `--version N` with a cached copy does not even contact the registry). A model
repository with `settings.json` and one `model-settings.json` per model is written to `<home>/serving/repo` and
`mlserver start` runs it as a child process. Liveness and readiness are MLServer's `/v2/health/live` and
`/v2/health/ready`; SIGTERM/SIGINT stop the child cleanly.

Following an alias: a model served by alias (`name@champion`, the default) is checked against the registry every
`follow_s` seconds; when the alias has moved (a promotion or a rollback), the new version is downloaded, its
model-settings.json rewritten and MLServer told to reload the model, which loads the new version beside the old and
then swaps: requests never see a model that is not loaded (docs/serving.md). A version that fails to load is
reported and skipped; the old one keeps serving.
"""

from __future__ import annotations

import contextlib
import json
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
from kuberec.serving.runtime import IMPLEMENTATION, MAX_REQUEST_BYTES, REGISTRY_VERSION
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
    """MLServer `parallel_workers` for `cpus` CPUs: 0 (inference on the server's event loop) up to 2 CPUs, where
    measured worker processes lose (each request crosses two queues and is pickled twice: 2 workers served 304 image
    queries/s against 544 in-process, docs/BENCHMARKS.md); above that one worker per CPU left after the HTTP process
    (not measured here: no machine with more cores ran the serving image)."""
    return 0 if cpus <= 2 else cpus - 1


def write_repository(root: Path, models: Sequence[ServedModel], *, http_port: int, grpc_port: int,
                     workers: int | None = None, max_request_bytes: int = MAX_REQUEST_BYTES, host: str = HOST) -> Path:
    """An MLServer model repository: settings.json plus <name>/model-settings.json per model. `workers`: MLServer
    inference worker processes, each loading every model (None: `default_workers` of the usable CPUs); `host`: the
    address it listens on."""
    if workers is not None and workers < 0:
        raise ServingError(f"workers must be 0 (inference in the server process) or more, not {workers}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    server_settings = {
        "debug": False, "host": host, "http_port": http_port, "grpc_port": grpc_port,
        "grpc_max_message_length": max_request_bytes,
        "parallel_workers": default_workers(usable_cpus()) if workers is None else workers,
        "metrics_endpoint": None,  # no third port on loopback; KServe scrapes its own
        "load_models_at_startup": True,
    }
    (root / "settings.json").write_text(json.dumps(server_settings, indent=2))
    for model in models:
        (root / model.name).mkdir()
        write_model_settings(root, model)
    return root


def write_model_settings(root: Path, model: ServedModel) -> Path:
    """<root>/<name>/model-settings.json for `model`; the registry version goes where kuberec's runtime reads it
    (not MLServer's `version`: see kuberec.serving.runtime on why)."""
    path = root / model.name / "model-settings.json"
    path.write_text(json.dumps({
        "name": model.name, "implementation": IMPLEMENTATION,
        "parameters": {"uri": str(model.path), "extra": {REGISTRY_VERSION: str(model.version)}},
    }, indent=2))
    return path


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


class MLServer:
    """A running `mlserver start <repo>` child process."""

    def __init__(self, repo: Path, http_port: int, models: Sequence[ServedModel], log_file: Path,
                 host: str = HOST) -> None:
        self.repo, self.http_port, self.models, self.log_file = repo, http_port, list(models), log_file
        # Reached on loopback when it listens there or on every address; else at the address it was given.
        self.host = HOST if host in ("0.0.0.0", "::", "localhost") or exposure_warning(host, "") is None else host
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def start(self, timeout: float = READY_TIMEOUT_S, abort: threading.Event | None = None) -> "MLServer":
        """Start and wait until ready; `abort` (set by a signal handler) stops the wait and the child."""
        mlserver = Path(sys.executable).with_name("mlserver")
        command = [str(mlserver) if mlserver.exists() else "mlserver", "start", str(self.repo)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_file, "ab") as out:
            # Own process group, so stopping it also stops anything it forked.
            self.process = subprocess.Popen(command, cwd=self.repo, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                            preexec_fn=die_with_parent)
        log.info("starting MLServer (pid %d) on %s with %s; log: %s", self.process.pid, self.url,
                 ", ".join(f"{m.name} v{m.version}" for m in self.models), self.log_file)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if abort is not None and abort.is_set():
                self.stop()
                return self
            if self.process.poll() is not None:
                raise ServingError(f"MLServer exited with status {self.process.returncode} while starting; "
                                   f"see {self.log_file}:\n{_tail(self.log_file)}")
            if _http_ok(f"{self.url}/v2/health/ready"):
                log.info("MLServer ready at %s", self.url)
                return self
            time.sleep(0.5)
        self.stop()
        raise ServingError(f"MLServer was not ready within {timeout:.0f} s; see {self.log_file}:\n"
                           f"{_tail(self.log_file)}")

    def switch(self, model: ServedModel, timeout: float = READY_TIMEOUT_S) -> None:
        """Serve `model` in place of the loaded version of the same name, without a moment with no model loaded;
        if the new version fails to load, the old one keeps serving and ServingError says why."""
        current = next(m for m in self.models if m.name == model.name)
        write_model_settings(self.repo, model)
        request = urllib.request.Request(f"{self.url}/v2/repository/models/{model.name}/load", data=b"",
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                pass
        except (urllib.error.URLError, OSError) as err:
            write_model_settings(self.repo, current)  # what is loaded, for MLServer's next repository scan
            detail = err.read().decode(errors="replace") if isinstance(err, urllib.error.HTTPError) else err
            raise ServingError(f"{model.name} v{model.version} did not load ({detail}); still serving "
                               f"v{current.version}") from err
        self.models = [model if m.name == model.name else m for m in self.models]

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                log.warning("MLServer did not stop within %.0f s of %s", timeout, sig.name)
        log.info("MLServer stopped (status %s)", self.process.returncode)

    def __enter__(self) -> "MLServer":
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
            host: str = HOST) -> MLServer:
    """Resolve, cache and configure: an MLServer ready to `start()`, listening on `host`."""
    warning = exposure_warning(host, "MLServer")
    if warning:
        log.warning(warning)
    for port in (http_port, grpc_port):
        _check_port(port)
    models = resolve(settings, specs, required=required)
    base = settings.home / "serving"
    repo = write_repository(base / "repo" / str(http_port), models, http_port=http_port, grpc_port=grpc_port,
                            workers=workers, host=host)
    return MLServer(repo, http_port, models, base / f"mlserver-{http_port}.log", host=host)


@contextlib.contextmanager
def running(settings: Settings, specs: Sequence[ModelSpec], **kwargs) -> Iterator[MLServer]:
    """MLServer serving `specs` for the duration of the block."""
    server = prepare(settings, specs, **kwargs)
    try:
        yield server.start()
    finally:
        server.stop()


class AliasFollower:
    """Keeps each model served by alias on the version its alias points at (a promotion or a rollback)."""

    def __init__(self, settings: Settings, server: MLServer, specs: Sequence[ModelSpec]) -> None:
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
    """Run in the foreground until SIGTERM/SIGINT or until MLServer exits; returns an exit status. Models served by
    alias follow it, checked every `follow_s` seconds (0: never)."""
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
            if server.process.poll() is not None:
                raise ServingError(f"MLServer exited with status {server.process.returncode}; "
                                   f"see {server.log_file}:\n{_tail(server.log_file)}")
            stop.wait(1.0)
        log.info("signal received; shutting down")
        return 0
    finally:
        if demo is not None:
            demo.stop()
        server.stop()
