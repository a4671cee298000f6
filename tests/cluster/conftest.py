"""The real cluster of `make cluster-up`: its kubeconfig, port-forwards to MinIO and MLflow on 127.0.0.1, and the
environment a user on this machine runs kuberec's steps with (KUBEREC_BACKEND=kubernetes). Every test here is
marked `cluster` and skips, saying why, when no cluster is up; `make cluster-smoke` runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_STATE = Path(os.environ.get("KUBEREC_HOME", REPO / ".kuberec")).absolute() / "cluster"
KUBECONFIG = CLUSTER_STATE / "admin.kubeconfig"
KUBECTL = Path(os.environ.get("KUBEREC_CACHE", REPO / ".kuberec" / "cache")).absolute() / "cluster" / "bin" / "kubectl"
NAMESPACE = "kuberec"
KUBEREC = REPO / ".venv" / "bin" / "kuberec"
RESULTS = CLUSTER_STATE / "smoke.tsv"


def kubectl(*args: str, check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run([str(KUBECTL), "--kubeconfig", str(KUBECONFIG), *args], capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def cluster_missing() -> str | None:
    """Why the cluster tests cannot run, or None."""
    if not KUBECONFIG.exists() or not KUBECTL.exists():
        return f"no cluster (no {KUBECONFIG}): run make cluster-up"
    try:
        kubectl("get", "--raw", "/readyz", timeout=10)
        ready = kubectl("-n", NAMESPACE, "get", "deployment/mlflow", "-o", "jsonpath={.status.readyReplicas}",
                        timeout=10)
    except (AssertionError, subprocess.TimeoutExpired) as err:
        return f"the cluster of {KUBECONFIG} does not answer or has no kuberec installed ({err}): run make cluster-up"
    return None if ready.strip() == "1" else "kuberec's MLflow is not ready in the cluster (make cluster-status)"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    mine = [item for item in items if here in Path(item.fspath).parents]
    if not mine:
        return
    reason = cluster_missing()
    for item in mine:
        item.add_marker(pytest.mark.cluster)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PortForward:
    """`kubectl port-forward` of a Service to a free port on 127.0.0.1, stopped by its own process handle."""

    def __init__(self, target: str, remote_port: int):
        self.port = free_port()
        # Its messages go to a file: a pipe nobody reads would fill up and stall every forwarded connection.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [str(KUBECTL), "--kubeconfig", str(KUBECONFIG), "-n", NAMESPACE, "port-forward", "--address", "127.0.0.1",
             target, f"{self.port}:{remote_port}"], stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                self.log.seek(0)
                raise AssertionError(f"port-forward {target}: {self.log.read()}")
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"port-forward {target} did not open 127.0.0.1:{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self.log.close()


def credentials() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (CLUSTER_STATE / "credentials.env").read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs if key.startswith("AWS_")}


@pytest.fixture(scope="session")
def cluster_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Environment for `kuberec` on this machine driving the cluster: MinIO and MLflow through port-forwards, the
    pods told the in-cluster addresses, a lake prefix of its own, requests fitted to the node."""
    minio, mlflow = PortForward("svc/minio", 9000), PortForward("svc/mlflow", 5000)
    env = {
        **os.environ, **credentials(),
        "KUBECONFIG": str(KUBECONFIG), "KUBEREC_HOME": str(tmp_path_factory.mktemp("cluster-home")),
        "KUBEREC_BACKEND": "kubernetes", "KUBEREC_NAMESPACE": NAMESPACE, "KUBEREC_IMAGE_TAG": "dev",
        "KUBEREC_LAKE": "s3://kuberec/smoke", "KUBEREC_S3_ENDPOINT": minio.url, "MLFLOW_TRACKING_URI": mlflow.url,
        "KUBEREC_K8S_POD_S3_ENDPOINT": f"http://minio.{NAMESPACE}.svc.cluster.local:9000",
        "KUBEREC_K8S_POD_MLFLOW_URI": f"http://mlflow.{NAMESPACE}.svc.cluster.local:5000",
        "KUBEREC_K8S_REQUEST_FRACTION": "0.1", "KUBEREC_K8S_ON_CANCEL": "keep", "AWS_REGION": "us-east-1",
        "KUBEREC_K8S_IMAGE_PULL_POLICY": "IfNotPresent",
        # The server would hand out presigned URLs of MinIO's in-cluster address, which this machine cannot reach:
        # move artifacts through the server (the port-forward) instead.
        "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
    }
    yield env
    minio.stop()
    mlflow.stop()


def run_kuberec(env: dict[str, str], *args: str, timeout: float = 1800, fails: bool = False) -> str:
    """`kuberec <args>` as a user runs it; returns its stdout (its log goes to this test's output). With `fails`,
    it must exit non-zero, and its stderr is returned."""
    done = subprocess.run([str(KUBEREC), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    sys.stderr.write(done.stderr[-4000:])
    if fails:
        assert done.returncode != 0, f"kuberec {' '.join(args)} succeeded where it should fail"
        return done.stderr
    assert done.returncode == 0, f"kuberec {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def record(resource: str, state: str, seconds: float) -> None:
    """One line per smoke resource: printed, and kept in <home>/cluster/smoke.tsv."""
    line = f"{resource}\t{state}\t{seconds:.0f}\t{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
    print(f"\nSMOKE {line}")
    new = not RESULTS.exists()
    with RESULTS.open("a") as out:
        if new:
            out.write("resource\tstate\tseconds\tdate\n")
        out.write(line + "\n")
