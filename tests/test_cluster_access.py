"""How kuberec on this machine reaches a cluster (tests/e2e/cluster_access.py), without one: the kubeconfig and
kubectl it picks, its errors, and the environment it gives the steps. The port-forwards themselves run against
the real cluster (tests/cluster, make e2e)."""

from __future__ import annotations

import os

import pytest

from kuberec.errors import KuberecError
from kuberec.settings import Settings
from tests.e2e.cluster_access import ClusterAccess

pytestmark = pytest.mark.fast


@pytest.fixture
def local_cluster(tmp_path, monkeypatch):
    """The files `make cluster-up` leaves: admin kubeconfig, generated credentials, kubectl in the cache."""
    monkeypatch.delenv("KUBECONFIG", raising=False)
    state = tmp_path / "home" / "cluster"
    state.mkdir(parents=True)
    (state / "admin.kubeconfig").write_text("apiVersion: v1\n")
    (state / "credentials.env").write_text("AWS_ACCESS_KEY_ID=generated\nAWS_SECRET_ACCESS_KEY=s3cret\nOTHER=x\n")
    kubectl = tmp_path / "cache" / "cluster" / "bin" / "kubectl"
    kubectl.parent.mkdir(parents=True)
    kubectl.write_text("")
    return Settings(home=tmp_path / "home", cache_dir=tmp_path / "cache", namespace="kuberec")


def test_the_cluster_of_make_cluster_up_comes_with_its_credentials(local_cluster, monkeypatch):
    monkeypatch.setenv("KUBEREC_K8S_REQUEST_FRACTION", "0.5")
    access = ClusterAccess.from_settings(local_cluster)
    assert access.kubeconfig == local_cluster.home.absolute() / "cluster" / "admin.kubeconfig"
    assert access.kubectl == local_cluster.cache_dir / "cluster" / "bin" / "kubectl"
    env = access.client_env("http://127.0.0.1:1001", "http://127.0.0.1:1002", "s3://kuberec/e2e")
    assert env["AWS_ACCESS_KEY_ID"] == "generated" and "OTHER" not in env
    assert env["KUBEREC_BACKEND"] == "kubernetes" and env["KUBEREC_LAKE"] == "s3://kuberec/e2e"
    assert env["KUBEREC_S3_ENDPOINT"] == "http://127.0.0.1:1001" and env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1002"
    assert env["KUBEREC_K8S_POD_S3_ENDPOINT"] == "http://minio.kuberec.svc.cluster.local:9000"
    assert env["KUBEREC_K8S_REQUEST_FRACTION"] == "0.5"  # the user's setting beats the local node's default
    assert env["KUBEREC_IMAGE_TAG"] == "dev"
    # The components' containers (make e2e's DockerRunner) run on the cluster's own dockerd, which has its images.
    assert env["DOCKER_HOST"] == f"unix://{local_cluster.home.absolute() / 'cluster' / 'docker' / 'docker.sock'}"


def test_another_cluster_uses_this_environments_credentials(local_cluster, tmp_path, monkeypatch):
    other = tmp_path / "other.kubeconfig"
    other.write_text("apiVersion: v1\n")
    monkeypatch.setenv("KUBECONFIG", str(other))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "mine")
    env = ClusterAccess.from_settings(local_cluster).client_env("http://127.0.0.1:1", "http://127.0.0.1:2", "s3://b/p")
    assert env["KUBECONFIG"] == str(other) and env["AWS_ACCESS_KEY_ID"] == "mine"
    assert "DOCKER_HOST" not in env or env["DOCKER_HOST"] == os.environ.get("DOCKER_HOST")


def test_no_cluster_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(KuberecError, match="no kubeconfig at .*admin.kubeconfig: run make cluster-up, or point "
                                           "KUBECONFIG at a cluster"):
        ClusterAccess.from_settings(Settings(home=tmp_path))
