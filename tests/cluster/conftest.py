"""The real cluster of `make cluster-up`: its kubeconfig, port-forwards to MinIO and MLflow on 127.0.0.1, and the
environment a user on this machine runs kuberec's steps with (KUBEREC_BACKEND=kubernetes). Every test here is
marked `cluster` and skips, saying why, when no cluster is up; `make cluster-smoke` runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("KUBEREC_HOME", REPO / ".kuberec")).absolute()
CLUSTER_STATE = HOME / "cluster"
KUBECONFIG = CLUSTER_STATE / "admin.kubeconfig"
# Where scripts/cluster/common.sh puts its builds: KUBEREC_CACHE, else the home's cache.
KUBECTL = Path(os.environ.get("KUBEREC_CACHE", HOME / "cache")).absolute() / "cluster" / "bin" / "kubectl"
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
    if not KUBECONFIG.exists():
        return f"no cluster (no {KUBECONFIG}): run make cluster-up"
    if not KUBECTL.exists():
        return f"no {KUBECTL} (the cluster's kubectl): run make cluster-up, with the same KUBEREC_HOME / KUBEREC_CACHE"
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


def access():
    from kuberec.settings import Settings
    from tests.e2e.cluster_access import ClusterAccess

    return ClusterAccess.from_settings(Settings(home=CLUSTER_STATE.parent, cache_dir=KUBECTL.parents[2],
                                                namespace=NAMESPACE))


def PortForward(target: str, remote_port: int):  # noqa: N802  (reads like the class it makes)
    """A port-forward on 127.0.0.1 to `target` in kuberec's namespace of the cluster of make cluster-up."""
    return access().forward(target, remote_port)


@pytest.fixture(scope="session")
def cluster_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Environment for `kuberec` on this machine driving the cluster (ClusterAccess.client_env), with a home and a
    lake prefix of its own; a timed-out MPIJob is kept (one test asks for that)."""
    minio, mlflow = PortForward("svc/minio", 9000), PortForward("svc/mlflow", 5000)
    env = {**access().client_env(minio.url, mlflow.url, "s3://kuberec/smoke"),
           "KUBEREC_HOME": str(tmp_path_factory.mktemp("cluster-home")), "KUBEREC_K8S_ON_CANCEL": "keep"}
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
