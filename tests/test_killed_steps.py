"""Killed processes at each step (issue 15): the real `kuberec` command, SIGKILLed at the moment that matters.

- A Spark write (`kuberec ingest images`), killed with its JVM once the new version's data files are on disk but
  before its commit: the table stays at its previous version, and a rerun lands exactly the intended rows.
- An index build (`kuberec index build`), killed while it uploads the new model to MLflow: nothing is registered,
  the champion still loads, and a rerun registers and promotes the new index.
- A registration, killed after the new model version exists but before `champion` moves to it: `champion` stays on
  the previous version, and a rerun ends with a new champion (the killed attempt's version stays, complete, unused).
- `ItemIndex.save` killed between its two renames: the previous index is put back at its path.

The kill moments are found by watching real state: new files in the table directory, and the HTTP requests the
command sends to the real MLflow server through a forwarding proxy that holds the one request the kill must precede.
Recovery times are printed (`pytest -s`).
"""

from __future__ import annotations

import http.client
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import numpy as np
import pytest

from kuberec.datasets import fashion_mnist as fm
from tests.scenarios.killed_steps import session_processes

KUBEREC = str(Path(sys.executable).with_name("kuberec"))
DEADLINE_S = 600  # a loaded 2-core machine starts a JVM and TensorFlow slowly


# -- processes -----------------------------------------------------------------------------------------------------

def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The real command in a session of its own, so one killpg reaches it, its job process and the job's JVM."""
    return subprocess.Popen([KUBEREC, *args], env={**os.environ, **(env or {})}, start_new_session=True,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def kill_session(process: subprocess.Popen, timeout: float = 60) -> float:
    """SIGKILL the command's process group; seconds until nothing of its session is left (fails if something is)."""
    killed = time.monotonic()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    while session_processes(process.pid) and time.monotonic() - killed < timeout:
        time.sleep(0.1)
    left = session_processes(process.pid)
    assert not left, f"processes of the killed command still running {timeout} s later: {left}"
    return time.monotonic() - killed


def run(args: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run the real command to its end; its duration (the recovery time of a rerun)."""
    started = time.monotonic()
    with log.open("wb") as out:
        result = subprocess.run([KUBEREC, *args], env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, timeout=DEADLINE_S)
    assert result.returncode == 0, log.read_text()[-3000:]
    return time.monotonic() - started


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the command ended (status {process.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {DEADLINE_S} s")
        time.sleep(0.002)


# -- 1. a Spark write killed before its commit ----------------------------------------------------------------------

@pytest.mark.faults
def test_spark_write_killed_before_its_commit_leaves_the_previous_version(settings, spark, tmp_path):
    from PIL import Image

    from kuberec.ingest.fashion_mnist import ingest_fashion_mnist
    from kuberec.lake.delta import history, snapshot_files, table_version

    table = settings.table_uri("fashion_mnist")
    assert ingest_fashion_mnist(spark, str(fm.DEBIAN_DIR), table, max_per_split=20) == 0  # 40 rows
    spec = fm.idx_file("test", "images")
    pictures = fm.parse_idx(spec, fm.decompress("", (fm.DEBIAN_DIR / f"{spec.name}.gz").read_bytes()))[-300:]
    batch = tmp_path / "batch"
    batch.mkdir()
    for i, pixels in enumerate(pictures):
        Image.fromarray(pixels).save(batch / f"p{i:03d}.png")
    expected = len({p.tobytes() for p in pictures})  # identical pictures are one item

    def data_files() -> set[str]:
        return {str(p) for p in Path(table).rglob("*.parquet")}

    before, log_before = data_files(), sorted(os.listdir(Path(table) / "_delta_log"))
    process = start(["ingest", "images", str(batch)], tmp_path / "killed.log")
    wait_for(lambda: bool(data_files() - before), process, tmp_path / "killed.log", "new data files in the table")
    gone_s = kill_session(process)
    written = data_files() - before
    assert sorted(os.listdir(Path(table) / "_delta_log")) == log_before, "the write committed before the kill"

    # The table is exactly its previous version: same version, one commit in its history, every row reads back.
    assert table_version(table) == 0
    assert [entry["version"] for entry in history(table)] == [0]
    assert [row.version for row in spark.sql(f"DESCRIBE HISTORY delta.`{table}`").collect()] == [0]
    rows = spark.read.format("delta").load(table).select("item_id", "image").collect()
    assert sorted(row.item_id for row in rows) == [*range(20), *range(60000, 60020)]
    assert all(len(row.image) == 784 for row in rows)
    _, live = snapshot_files(table)
    assert written and not {"file://" + f for f in written} & set(live)  # the killed write's files: unreferenced

    rerun_s = run(["ingest", "images", str(batch)], tmp_path / "rerun.log")
    catalog = spark.read.format("delta").load(table).where("split = 'catalog'").select("item_id", "image_sha256")
    added = catalog.collect()
    assert len(added) == expected == len({r.item_id for r in added}) == len({r.image_sha256 for r in added})
    assert table_version(table) == 1
    # Once more: the MERGE finds every picture there and commits nothing.
    run(["ingest", "images", str(batch)], tmp_path / "again.log")
    assert table_version(table) == 1 and catalog.count() == expected
    print(f"\nspark write: {len(written)} data files written, killed; session gone in {gone_s:.1f} s; "
          f"rerun (CLI, new JVM) {rerun_s:.1f} s")


# -- MLflow through a proxy that holds one request ------------------------------------------------------------------

class HoldingProxy:
    """Forwards HTTP requests to the MLflow server unchanged, except the first one `hold(method, path)` picks: that
    one is never forwarded, and `held` is set, so the test can kill the client at exactly that point."""

    HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}

    def __init__(self, upstream: str, hold: Callable[[str, str], bool]) -> None:
        self.upstream = urlsplit(upstream)
        self.hold = hold
        self.held = threading.Event()
        self.held_request = ""
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = io.BytesIO()
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        data.write(self.rfile.read(size))
                        self.rfile.readline()
                    self.rfile.readline()
                    return data.getvalue()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                if not proxy.held.is_set() and proxy.hold(self.command, self.path):
                    proxy.held_request = f"{self.command} {self.path}"
                    proxy.held.set()
                    time.sleep(DEADLINE_S)  # the client is killed meanwhile; this request never reaches MLflow
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in proxy.HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                upstream.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the similarity model: a tiny real embedding model over a small real catalog table ------------------------------

@pytest.fixture(scope="module")
def small_catalog(spark, tmp_path_factory) -> str:
    from kuberec.ingest.fashion_mnist import ingest_fashion_mnist

    table = str(tmp_path_factory.mktemp("killed-lake") / "fashion_mnist")
    ingest_fashion_mnist(spark, str(fm.DEBIAN_DIR), table, max_per_split=30)
    return table


@pytest.fixture(scope="module")
def tiny_embedding_model(tmp_path_factory) -> Path:
    """An untrained Flatten -> Dense(8) -> unit norm model, exported like a trained one: registration does not care
    how good the model is (tests/similarity/conftest.py has the same kind, out of this module's reach)."""
    import tensorflow as tf

    from kuberec.similarity.model import export_embedding_model

    tf.keras.utils.set_random_seed(11)
    inputs = tf.keras.layers.Input(shape=(28, 28, 1))
    outputs = tf.keras.layers.UnitNormalization()(tf.keras.layers.Dense(8)(tf.keras.layers.Flatten()(inputs)))
    return export_embedding_model(tf.keras.Model(inputs, outputs), tmp_path_factory.mktemp("tiny") / "embedding")


def registered_versions(settings, name: str) -> dict[int, str]:
    from kuberec import tracking

    return {int(v.version): v.status for v in tracking.client(settings).search_model_versions(f"name = '{name}'")}


def champion_serves(settings, name: str) -> int:
    """The champion's version number, after loading it with MLflow and asking it for an item's neighbours."""
    import pandas as pd

    from kuberec.similarity.pyfunc import load_recommender

    model, version = load_recommender(settings, name)
    answer = model.predict(pd.DataFrame({"item_id": [3]}), params={"k": 3})
    assert answer["rank"].tolist() == [1, 2, 3] and 3 not in answer["item_id"].tolist()
    return int(version.version)


def first_champion(settings, model_dir: Path, table: str, name: str) -> int:
    from kuberec.similarity.index.build import build_and_register

    registered = build_and_register(settings, str(model_dir), table_uri=table, name=name, set_champion=True)
    assert registered.champion
    return registered.version


def build_args(model_dir: Path, table: str, name: str) -> list[str]:
    return ["index", "build", "--model", str(model_dir), "--table", table, "--name", name, "--set-champion"]


# -- 2. an index build killed while it uploads the new model --------------------------------------------------------

def test_index_build_killed_mid_upload_registers_nothing(tracked_settings, small_catalog, tiny_embedding_model,
                                                         tmp_path):
    name = f"kills-index-{uuid.uuid4().hex[:8]}"
    previous = first_champion(tracked_settings, tiny_embedding_model, small_catalog, name)
    proxy = HoldingProxy(tracked_settings.mlflow_tracking_uri,
                         lambda method, path: method == "PUT" and "/mlflow-artifacts/artifacts/" in path)
    try:
        process = start(build_args(tiny_embedding_model, small_catalog, name), tmp_path / "killed.log",
                        {"MLFLOW_TRACKING_URI": proxy.url, "TMPDIR": str(tmp_path)})
        wait_for(proxy.held.is_set, process, tmp_path / "killed.log", "an artifact upload")
        kill_session(process)
    finally:
        proxy.close()
    assert registered_versions(tracked_settings, name) == {previous: "READY"}
    assert champion_serves(tracked_settings, name) == previous

    rerun_s = run(build_args(tiny_embedding_model, small_catalog, name), tmp_path / "rerun.log")
    versions = registered_versions(tracked_settings, name)
    assert versions == {previous: "READY", previous + 1: "READY"}
    assert champion_serves(tracked_settings, name) == previous + 1
    print(f"\nindex build killed at {proxy.held_request}; rerun (CLI) {rerun_s:.1f} s")


# -- 3. a registration killed before champion moves -----------------------------------------------------------------

def test_registration_killed_before_the_alias_moves_keeps_the_champion(tracked_settings, small_catalog,
                                                                      tiny_embedding_model, tmp_path):
    name = f"kills-register-{uuid.uuid4().hex[:8]}"
    previous = first_champion(tracked_settings, tiny_embedding_model, small_catalog, name)
    proxy = HoldingProxy(tracked_settings.mlflow_tracking_uri,
                         lambda method, path: path.startswith("/api/2.0/mlflow/registered-models/alias"))
    try:
        process = start(build_args(tiny_embedding_model, small_catalog, name), tmp_path / "killed.log",
                        {"MLFLOW_TRACKING_URI": proxy.url})
        wait_for(proxy.held.is_set, process, tmp_path / "killed.log", "the request that moves the alias")
        kill_session(process)
    finally:
        proxy.close()
    # The new version exists, complete (registered only after its upload finished), and is not the champion.
    assert registered_versions(tracked_settings, name) == {previous: "READY", previous + 1: "READY"}
    assert champion_serves(tracked_settings, name) == previous

    rerun_s = run(build_args(tiny_embedding_model, small_catalog, name), tmp_path / "rerun.log")
    assert champion_serves(tracked_settings, name) == previous + 2
    # The killed attempt's version stays: a whole model, never champion, loadable by number.
    from kuberec.similarity.pyfunc import load_recommender

    stray, _ = load_recommender(tracked_settings, name, version=previous + 1)
    assert len(stray.unwrap_python_model().index) == 60
    print(f"\nregistration killed at {proxy.held_request}; rerun (CLI) {rerun_s:.1f} s")


# -- 4. ItemIndex.save killed between its two renames ---------------------------------------------------------------

@pytest.mark.fast
def test_index_save_killed_between_renames_puts_the_previous_index_back(tmp_path):
    from kuberec.similarity.index import ItemIndex, items_frame

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20, 4)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    path = tmp_path / "index"
    ItemIndex.build(vectors[:10], items_frame(range(10)), table_version=1).save(path)
    # A child process saves a grown index over it and is SIGKILLed right after its first rename (old index moved
    # aside, new one not yet in place): the state a kill at that instant leaves.
    child = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        import numpy as np
        from kuberec.similarity.index import ItemIndex, items_frame
        rename = Path.rename
        def rename_then_die(self, target):
            rename(self, target)
            os.kill(os.getpid(), signal.SIGKILL)
        Path.rename = rename_then_die
        vectors = np.load({str(tmp_path / 'v.npy')!r})
        ItemIndex.build(vectors, items_frame(range(20)), table_version=2).save({str(path)!r})
    """)
    np.save(tmp_path / "v.npy", vectors)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert not path.exists() and len(list(tmp_path.glob(".index.*"))) == 2  # moved aside + the new one staged

    loaded = ItemIndex.load(path)
    assert (len(loaded), loaded.table_version) == (10, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index", "v.npy"]  # leftovers of the dead save removed
    ItemIndex.build(vectors, items_frame(range(20)), table_version=2).save(path)
    assert len(ItemIndex.load(path)) == 20


@pytest.mark.fast
def test_a_job_does_not_outlive_the_command_that_started_it(tmp_path):
    """SIGKILL of the step's own process (not its process group): the local backend's job, a child that would run
    for ten minutes, is stopped by the kernel (PR_SET_PDEATHSIG) instead of running on as an orphan."""
    import psutil

    pid_file = tmp_path / "job.pid"
    job = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    step = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from kuberec.backends.local import LocalBackend
        from kuberec.settings import Settings
        LocalBackend(Settings(home={str(tmp_path)!r}))._run("sleeper", [sys.executable, "-c", {job!r}])
        """)])
    try:
        deadline = time.monotonic() + 120
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        job_process = psutil.Process(int(pid_file.read_text()))
        step.send_signal(signal.SIGKILL)
        step.wait(timeout=30)
        job_process.wait(timeout=30)  # raises TimeoutExpired if the job outlives its step
    finally:
        if step.poll() is None:
            step.kill()
