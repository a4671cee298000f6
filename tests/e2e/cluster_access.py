"""How this machine reaches a cluster: `kubectl port-forward` (or `kubectl proxy`) on 127.0.0.1 for its
services (MinIO, MLflow, an InferenceService's predictor; nothing exposed beyond loopback) and the environment
`kuberec` drives it with. Used by `make e2e` (tests/e2e/driver.py), the cluster tests and
benchmarks/serving_bench.py, never by kuberec itself (src/kuberec)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kuberec.errors import KuberecError
from kuberec.ports import free_port
from kuberec.settings import Settings


class KubectlListener:
    """A kubectl command that serves on 127.0.0.1:PORT (a free PORT), started now and stopped by its own process
    handle (`stop`, or leaving a `with` block): `kubectl port-forward` or `kubectl proxy`."""

    def __init__(self, kubectl: str | Path, kubeconfig: str | Path, args: list[str], what: str,
                 timeout_s: float = 30):
        self.what = what
        self.port = free_port()
        # Its messages go to a file: a pipe nobody reads would fill up and stall every forwarded connection.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [str(kubectl), "--kubeconfig", str(kubeconfig), *[a.replace("{port}", str(self.port)) for a in args]],
            stdout=self.log, stderr=subprocess.STDOUT, text=True, env={**os.environ, "KUBECONFIG": str(kubeconfig)})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                self.log.seek(0)
                raise KuberecError(f"{what} stopped: {self.log.read().strip()}")
            time.sleep(0.3)
        self.stop()
        raise KuberecError(f"{what} did not open 127.0.0.1:{self.port} in {timeout_s:.0f} s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.log.close()

    def __enter__(self) -> "KubectlListener":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class ClusterAccess:
    """How kuberec on this machine drives a cluster: kubectl, a kubeconfig, kuberec's namespace and, for the cluster
    of `make cluster-up`, the credentials it generated (<home>/cluster/credentials.env)."""

    kubectl: Path
    kubeconfig: Path
    namespace: str
    credentials_file: Path | None
    docker_host: str | None = None  # the Docker daemon that holds kuberec's images (make cluster-up's own dockerd)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ClusterAccess":
        """The cluster of `make cluster-up`, unless KUBECONFIG names another (whose lake credentials are then the
        AWS_* variables of this environment)."""
        state = settings.home.absolute() / "cluster"
        local = state / "admin.kubeconfig"
        kubeconfig = Path(os.environ.get("KUBECONFIG") or local)
        if not kubeconfig.is_file():
            raise KuberecError(f"no kubeconfig at {kubeconfig}: run make cluster-up, or point KUBECONFIG at a "
                               "cluster with kuberec installed")
        kubectl = settings.cache_dir / "cluster" / "bin" / "kubectl"
        if not kubectl.is_file():
            found = shutil.which("kubectl")
            if not found:
                raise KuberecError(f"no kubectl (looked for {kubectl} and on PATH): run make cluster-up")
            kubectl = Path(found)
        credentials = state / "credentials.env"
        own = kubeconfig.resolve() == local.resolve() and credentials.is_file()
        if not own:
            return cls(kubectl, kubeconfig, settings.namespace, None)
        return cls(kubectl, kubeconfig, settings.namespace, credentials,
                   f"unix://{state / 'docker' / 'docker.sock'}")  # as scripts/cluster/common.sh starts it

    def forward(self, target: str, remote_port: int, namespace: str | None = None) -> KubectlListener:
        """`kubectl port-forward <target>` (e.g. svc/minio) in kuberec's namespace unless another is named: to one
        pod, chosen when it starts."""
        return KubectlListener(self.kubectl, self.kubeconfig, [
            "-n", namespace or self.namespace, "port-forward", "--address", "127.0.0.1", target,
            f"{{port}}:{remote_port}"],
            f"kubectl port-forward {target}")

    def proxy(self) -> KubectlListener:
        """`kubectl proxy`: the API server's proxy to Services (`service_path`), which sends each request to a ready
        endpoint of the Service, as an ingress would; a port-forward stays on one pod, which a rollout replaces."""
        return KubectlListener(self.kubectl, self.kubeconfig,
                               ["proxy", "--address", "127.0.0.1", "--port", "{port}"], "kubectl proxy")

    def service_path(self, service: str, port: int) -> str:
        """The path of `service`'s port under `kubectl proxy`'s URL."""
        return f"/api/v1/namespaces/{self.namespace}/services/{service}:{port}/proxy"

    def credentials(self) -> dict[str, str]:
        if self.credentials_file is None:
            return {}
        pairs = (line.split("=", 1) for line in self.credentials_file.read_text().splitlines() if "=" in line)
        return {key: value for key, value in pairs if key.startswith("AWS_")}

    def client_env(self, minio_url: str, mlflow_url: str, lake: str) -> dict[str, str]:
        """The environment `kuberec` runs its steps with on this machine against the cluster: lake and MLflow
        through port-forwards, the pods told the in-cluster addresses. The defaults fitted to make cluster-up's
        node (image tag dev, a tenth of the usual requests, its dockerd) give way to the same variables in the
        environment."""
        fitted = {"KUBEREC_IMAGE_TAG": "dev", "KUBEREC_K8S_REQUEST_FRACTION": "0.1", "AWS_REGION": "us-east-1",
                  "KUBEREC_K8S_IMAGE_PULL_POLICY": "IfNotPresent"}
        if self.docker_host:
            fitted["DOCKER_HOST"] = self.docker_host
        return {
            **fitted, **os.environ, **self.credentials(),
            "KUBECONFIG": str(self.kubeconfig), "KUBEREC_BACKEND": "kubernetes", "KUBEREC_NAMESPACE": self.namespace,
            "KUBEREC_LAKE": lake, "KUBEREC_S3_ENDPOINT": minio_url, "MLFLOW_TRACKING_URI": mlflow_url,
            "KUBEREC_K8S_POD_S3_ENDPOINT": f"http://minio.{self.namespace}.svc.cluster.local:9000",
            "KUBEREC_K8S_POD_MLFLOW_URI": f"http://mlflow.{self.namespace}.svc.cluster.local:5000",
            # The server would hand out presigned URLs of MinIO's in-cluster address, which this machine cannot
            # reach: move artifacts through the server (the port-forward) instead.
            "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false", "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "false",
        }
