"""`kuberec serve` follows its alias for real: a promotion, a version that cannot load, and a rollback, each while 8
clients query a running server, which must fail no request and switch every client cleanly from one version to
the next (issue 15, "serving under change")."""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import mlflow
import numpy as np
import pytest
from serving_helpers import N_ITEMS, raw_post

from kuberec import tracking
from kuberec.ports import free_port

MOVING = "kuberec-similarity-moving"  # its own name: the session's `kuberec-similarity` champion stays put
CLIENTS = 8


class _Unloadable(mlflow.pyfunc.PythonModel):
    """A registered version MLServer cannot load (its load_context fails), as a broken training output would be."""

    def load_context(self, context):
        raise RuntimeError("this model version is broken on purpose")

    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def versions(serving_settings, catalog, embedding_model, embedding_model_dir):
    """Three versions of MOVING: v1 (champion) and v2 are the similarity pyfunc, v3 cannot be loaded."""
    from kuberec.similarity.index import HnswParams, ItemIndex, items_frame
    from kuberec.similarity.model import embed
    from kuberec.similarity.pyfunc import log_similarity_model

    images, labels = catalog
    index = ItemIndex.build(embed(embedding_model, images), items_frame(np.arange(N_ITEMS), labels, images),
                            HnswParams(), table_uri="/lake/fashion_mnist", table_version=0)
    first = log_similarity_model(serving_settings, embedding_model_dir, index, name=MOVING, set_champion=True)
    second = log_similarity_model(serving_settings, embedding_model_dir, index, name=MOVING, set_champion=False)
    tracking.configure(serving_settings)
    with mlflow.start_run(run_name="unloadable"):
        info = mlflow.pyfunc.log_model(name="model", python_model=_Unloadable())
    broken = tracking.register_model(serving_settings, info.model_uri, MOVING)
    return int(first.version), int(second.version), int(broken.version)


Answers = list[tuple[float, int, str | None]]  # (seconds, HTTP status, model_version or the error text)


def _clients(url: str, stop: threading.Event, seen: list[Answers]) -> list[threading.Thread]:
    body = json.dumps({"inputs": [{"name": "item_id", "shape": [1], "datatype": "INT64", "data": [3]}]})

    def query(log: list) -> None:
        while not stop.is_set():
            started = time.monotonic()
            status, text = raw_post(url, f"/v2/models/{MOVING}/infer", body)
            version = json.loads(text).get("model_version") if status == 200 else text[:200]
            log.append((time.monotonic() - started, status, version))

    threads = [threading.Thread(target=query, args=(seen[i],), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    return threads


def _wait_for_line(lines: queue.Queue, needle: str, timeout: float = 300.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if needle in line:
            return line
    raise AssertionError(f"`kuberec serve` never printed {needle!r} within {timeout:.0f} s")


def test_promotion_and_rollback_under_load_fail_no_request(serving_settings, versions):
    first, second, broken = versions
    port = free_port()
    env = {**os.environ, "KUBEREC_HOME": str(serving_settings.home),
           "MLFLOW_TRACKING_URI": serving_settings.mlflow_tracking_uri}
    process = subprocess.Popen([sys.executable, "-m", "kuberec.cli", "serve", "--models", f"{MOVING}@champion",
                                "--port", str(port), "--grpc-port", str(free_port()), "--follow", "0.5"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    output: list[str] = []

    def read() -> None:
        for line in process.stdout:
            output.append(line)
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    stop, seen = threading.Event(), [[] for _ in range(CLIENTS)]
    try:
        _wait_for_line(lines, f"serving {MOVING} v{first} at")
        threads = _clients(f"http://127.0.0.1:{port}", stop, seen)
        time.sleep(1.0)
        tracking.set_alias(serving_settings, MOVING, second)
        _wait_for_line(lines, f"now serving v{second} (was v{first}")
        time.sleep(1.0)
        tracking.set_alias(serving_settings, MOVING, broken)  # a champion that cannot load: v2 keeps serving
        _wait_for_line(lines, f"moved to v{broken}, which cannot be served")
        time.sleep(1.0)
        tracking.set_alias(serving_settings, MOVING, first)  # the rollback
        _wait_for_line(lines, f"now serving v{first} (was v{second}")
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
    answers = [answer for log in seen for answer in log]
    failed = [answer for answer in answers if answer[1] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[:3]}"
    # Each client saw v1, then only v2, then only v1 again: no request answered by a version out of turn.
    for log in seen:
        assert [version for version, _ in itertools.groupby(v for _, _, v in log)] == \
            [str(first), str(second), str(first)], "".join(output)
    slowest = max(seconds for seconds, _, _ in answers)
    switches = "".join(line for line in output if "moved" in line)
    print(f"\n{len(answers)} requests from {CLIENTS} clients across two switches, none failed; slowest "
          f"{slowest * 1000:.0f} ms\n{switches}")
