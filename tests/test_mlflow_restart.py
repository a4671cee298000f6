"""The embedded MLflow server killed under a client: nothing logged before is lost, a stale server.json does not
block the next start, the server comes back on its port, a client stops waiting within seconds, and a process whose
server died (a training job's rank 0 between epochs) brings it back and goes on. Real server, real signals."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from kuberec import tracking
from kuberec.tracking import server as mlflow_server

EXPERIMENT = "test-mlflow-restart"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return any(not _zombie(pid) for pid in _group(pgid))


def _group(pgid: int) -> list[int]:
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == pgid:
                members.append(int(name))
    return members


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _kill_server(info: mlflow_server.ServerInfo, sig: int) -> None:
    """What a crash does: the whole server (the `mlflow server` process and its uvicorn worker) dies at once."""
    os.killpg(info.pid, sig)
    deadline = time.monotonic() + 30
    while _group_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(ChildProcessError):  # reap the leader: this test process started it
        while True:
            os.waitpid(info.pid, 0)
    assert not mlflow_server.healthy(info.url)


def test_killed_server_comes_back_on_its_port_with_everything_logged_before(settings):
    import mlflow
    from mlflow.exceptions import MlflowException

    first = mlflow_server.ensure_server(settings)
    with tracking.start_run(settings, EXPERIMENT, run_name="before-crash", params={"lr": 0.1},
                            lineage={"/lake/t": 3}) as run:
        run_id = run.info.run_id
        tracking.log_metrics({"loss": 0.9}, step=1)
        tracking.log_metrics({"loss": 0.7}, step=2)

        _kill_server(first, signal.SIGKILL)
        state = json.loads((settings.mlflow_dir / "server.json").read_text())
        assert state["pid"] == first.pid  # stale: it names the dead server

        # A plain MLflow call gives up within seconds (MLflow's default: 7 retries over ~4 minutes).
        started = time.monotonic()
        with pytest.raises(MlflowException, match="Max retries exceeded|Connection refused"):
            mlflow.log_metric("loss", 0.5, step=3)
        gave_up = time.monotonic() - started
        assert gave_up < 30, f"the client waited {gave_up:.0f} s for a dead server"

        # What a training job does after each epoch: the call brings the server back (same port) and succeeds.
        started = time.monotonic()
        tracking.reconnecting(settings, lambda: tracking.log_metrics({"loss": 0.5}, step=3), "epoch 3 metrics")
        recovered = time.monotonic() - started
    second = mlflow_server.running_server(settings)
    assert second is not None and second.pid != first.pid and second.port == first.port
    print(f"client gave up after {gave_up:.1f} s; restarted and logged after {recovered:.1f} s")

    client = tracking.client(settings)
    saved = client.get_run(run_id)
    assert saved.info.status == "FINISHED" and saved.data.params == {"lr": "0.1"}
    assert tracking.parse_lineage(saved.data.tags) == {"t": ("/lake/t", 3)}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 0.9), (2, 0.7), (3, 0.5)]

    # Stopped (SIGTERM) and started again by another process: a client's URL still works, the same port.
    other = tracking.create_run(settings, EXPERIMENT, run_name="restarted", params={"k": 5})
    _kill_server(second, signal.SIGTERM)
    started = time.monotonic()
    third = mlflow_server.ensure_server(settings)
    restart = time.monotonic() - started
    assert third.url == first.url and third.pid != second.pid
    client.log_metric(other, "precision_at_5", 0.8, step=1)  # the client made before the restart
    tracking.end_run(settings, other)
    run = client.get_run(other)
    assert run.info.status == "FINISHED" and run.data.params == {"k": "5"}
    assert run.data.metrics == {"precision_at_5": 0.8}
    assert len(client.get_metric_history(run_id, "loss")) == 3
    print(f"restarted in {restart:.1f} s")


def test_server_process_killed_alone_leaves_its_worker_serving_and_stop_ends_both(settings):
    """`kill -9 <pid in server.json>` kills `mlflow server` but not the uvicorn worker it started, which keeps
    serving: kuberec goes on using it (no second server on the same database) and `stop` ends it."""
    first = mlflow_server.ensure_server(settings)
    workers = [pid for pid in _group(first.pid) if pid != first.pid]
    assert workers, "mlflow server started no worker process"
    os.kill(first.pid, signal.SIGKILL)
    os.waitpid(first.pid, 0)
    assert mlflow_server.healthy(first.url)
    assert mlflow_server.running_server(settings) == first
    assert mlflow_server.ensure_server(settings) == first  # not a second server
    assert mlflow_server.stop_server(settings) == first
    assert not _group_alive(first.pid) and not mlflow_server.healthy(first.url)
    assert mlflow_server.running_server(settings) is None
