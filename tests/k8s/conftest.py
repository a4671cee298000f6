"""A real Kubernetes API server for the tests: etcd + k8s.io/apiextensions-apiserver on loopback, with the
operators' CRDs from tests/k8s/crds installed.

It is the CRD-serving half of kube-apiserver: schema validation (unknown fields, types, CEL), defaults, dry run,
watch, generations and /status subresources are the real thing. It serves no built-in kinds and runs no operators
or garbage collector, so the tests write each resource's status as its operator would.
Binaries come from scripts/setup-k8s-test.sh (make test runs it) in the project cache.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from overlays import TARGETS

from kuberec.backends.local import die_with_parent
from kuberec.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KUBEREC_CACHE", REPO / ".kuberec" / "cache")).absolute()
BIN = CACHE / "bin"
CRD_DIR = Path(__file__).parent / "crds"  # the operators' CRDs, verbatim (crds/PROVENANCE.md)
# Without the two *AdmissionPolicy plugins every write is 403 (they need core kinds this server lacks).
DISABLED_ADMISSION = ("NamespaceLifecycle,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,"
                      "ValidatingAdmissionPolicy,MutatingAdmissionPolicy")


def _tool(name: str) -> Path:
    path = BIN / name
    if not os.access(path, os.X_OK):
        reason = f"{path} is missing: run scripts/setup-k8s-test.sh (make test runs it)"
        if os.environ.get("KUBEREC_K8S_TESTS") == "0":
            pytest.skip("Kubernetes tests disabled (KUBEREC_K8S_TESTS=0)")
        if os.environ.get("CI"):
            pytest.fail(reason)  # in CI the setup must have built it: never skip silently there
        pytest.skip(reason)
    return path


def _write_certs(directory: Path) -> dict[str, Path]:
    """A throwaway CA, a serving cert for 127.0.0.1 and a client cert in system:masters (always authorized)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def cert(subject, key, issuer, issuer_key, *, ca=False, usage=None, san=None):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(valid[0]).not_valid_after(valid[1])
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def name(cn, org=None):
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("kuberec-test-ca")
    ca = cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = cert(name("127.0.0.1"), server_key, ca_name, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                  san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client = cert(name("kuberec-test", "system:masters"), client_key, ca_name, ca_key,
                  usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    paths = {}
    for label, obj in (("ca", ca), ("server", server), ("client", client)):
        paths[f"{label}.crt"] = directory / f"{label}.crt"
        paths[f"{label}.crt"].write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    for label, key in (("server", server_key), ("client", client_key)):
        paths[f"{label}.key"] = directory / f"{label}.key"
        paths[f"{label}.key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def _wait_for(check, what: str, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout} s:\n{log.read_text()[-4000:]}")


class TestAPIServer:
    """etcd + apiextensions-apiserver processes under one directory."""

    __test__ = False  # not a test class

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen] = []
        self.host = ""
        self.etcd_url = ""
        self.certs: dict[str, Path] = {}

    def _spawn(self, name: str, argv: list[str]) -> tuple[subprocess.Popen, Path]:
        log = self.workdir / f"{name}.log"
        process = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=self.workdir,
                                   preexec_fn=die_with_parent)  # no server outlives pytest
        self.processes.append(process)
        return process, log

    def _start_on_free_ports(self, name: str, ports: int, argv, ready, timeout: float) -> None:
        """Start a server on fresh free ports, again on new ones if another process took a port first.

        A port free when picked can be taken before the server binds it (any outgoing connection may get it
        as its ephemeral port: CI lost a whole session to that once), so a bind failure means pick again.
        """
        for _ in range(5):
            chosen = [free_port() for _ in range(ports)]
            process, log = self._spawn(name, argv(*chosen))
            try:
                _wait_for(ready, name, timeout, process, log)
                return
            except RuntimeError:
                if process.poll() is None or b"address already in use" not in log.read_bytes():
                    raise
                self.processes.remove(process)
        raise RuntimeError(f"{name} found no free port in 5 tries:\n{log.read_text()[-4000:]}")

    def start(self) -> None:
        etcd_bin, apiserver_bin = _tool("etcd"), _tool("apiextensions-apiserver")

        def etcd_argv(client_port: int, peer_port: int) -> list[str]:
            self.etcd_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
            # A data dir per try: a failed try may have recorded its peer URL in the one before.
            return [str(etcd_bin), "--name", "test", "--data-dir", str(self.workdir / f"etcd-{client_port}"),
                    "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
                    "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                    "--initial-cluster", f"test={peer_url}", "--unsafe-no-fsync", "--log-level", "warn"]

        def etcd_ready() -> bool:
            return b"true" in urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2).read()

        self._start_on_free_ports("etcd", 2, etcd_argv, etcd_ready, 60)

        self.certs = _write_certs(self.workdir)
        kubeconfig = self.workdir / "kubeconfig"
        context = ssl.create_default_context(cafile=str(self.certs["ca.crt"]))
        context.load_cert_chain(str(self.certs["client.crt"]), str(self.certs["client.key"]))

        def apiserver_argv(secure_port: int) -> list[str]:
            self.host = f"https://127.0.0.1:{secure_port}"
            kubeconfig.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": self.host,
                                                          "certificate-authority": str(self.certs["ca.crt"])}}],
                "users": [{"name": "test", "user": {"client-certificate": str(self.certs["client.crt"]),
                                                    "client-key": str(self.certs["client.key"])}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
            }))
            return [
                str(apiserver_bin), "--etcd-servers", self.etcd_url,
                "--bind-address", "127.0.0.1", "--secure-port", str(secure_port),
                "--tls-cert-file", str(self.certs["server.crt"]),
                "--tls-private-key-file", str(self.certs["server.key"]),
                "--client-ca-file", str(self.certs["ca.crt"]),
                # Delegated authn/authz need a kubeconfig; the client cert is in system:masters, which the
                # authorizer always allows, so nothing is ever looked up through it.
                "--authentication-kubeconfig", str(kubeconfig), "--authorization-kubeconfig", str(kubeconfig),
                "--kubeconfig", str(kubeconfig), "--authentication-skip-lookup",
                "--disable-admission-plugins", DISABLED_ADMISSION]

        # /readyz stays 500 here (its informer-sync check waits for core kinds this server does not serve):
        # ready means the CRD API answers.
        def apiserver_ready() -> bool:
            crds = f"{self.host}/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
            return urllib.request.urlopen(crds, context=context, timeout=2).status == 200

        self._start_on_free_ports("apiserver", 1, apiserver_argv, apiserver_ready, 120)
        self.kubeconfig = kubeconfig

    def client_configuration(self):
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.host
        configuration.ssl_ca_cert = str(self.certs["ca.crt"])
        configuration.cert_file = str(self.certs["client.crt"])
        configuration.key_file = str(self.certs["client.key"])
        return configuration

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str = "application/json") -> dict:
        context = ssl.create_default_context(cafile=str(self.certs["ca.crt"]))
        context.load_cert_chain(str(self.certs["client.crt"]), str(self.certs["client.key"]))
        request = urllib.request.Request(f"{self.host}{path}", data=body, method=method,
                                         headers={"Content-Type": content_type, "Accept": "application/json"})
        with urllib.request.urlopen(request, context=context, timeout=60) as response:
            return json.loads(response.read())

    def install_crds(self, crd_dir: Path, timeout: float = 60) -> list[str]:
        """Create every CRD in crd_dir and wait until the server reports each Established."""
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        # The files go as YAML, unparsed: they are megabytes, and parsing them in Python takes ~10 s here.
        names = [self._request("POST", path, crd.read_bytes(), "application/yaml")["metadata"]["name"]
                 for crd in sorted(crd_dir.glob("*.yaml"))]
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending and time.monotonic() < deadline:
            for crd_name in list(pending):
                conditions = self._request("GET", f"{path}/{crd_name}").get("status", {}).get("conditions") or []
                if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                    pending.discard(crd_name)
            time.sleep(0.5)
        if pending:
            raise RuntimeError(f"CRDs not Established after {timeout} s: {sorted(pending)}")
        return names

    def stop(self) -> None:
        for process in reversed(self.processes):  # the API server first, then etcd
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory) -> TestAPIServer:
    """The running API server with all CRDs Established (one per test session)."""
    if not CRD_DIR.is_dir():
        pytest.fail(f"CRDs not found at {CRD_DIR}")
    server = TestAPIServer(tmp_path_factory.mktemp("apiserver"))
    try:
        server.start()
        server.crd_names = server.install_crds(CRD_DIR)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def k8s_config(apiserver):
    """A kubernetes.client.Configuration for the test API server."""
    return apiserver.client_configuration()


@pytest.fixture
def k8s_api_client(k8s_config):
    from kubernetes import client

    api_client = client.ApiClient(k8s_config)
    yield api_client
    api_client.close()


@pytest.fixture
def k8s_namespace() -> str:
    """A namespace of its own per test (this server does not enforce that namespaces exist)."""
    return f"t-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def k8s_tool():
    """Path of a tool scripts/setup-k8s-test.sh put in the cache (kustomize, hadolint...), or skip/fail."""
    return _tool


@pytest.fixture(scope="session")
def built(k8s_tool) -> dict[str, list[dict]]:
    """Every overlay of manifests/ built with kustomize: target -> its documents."""
    kustomize = k8s_tool("kustomize")
    out = {}
    for target in TARGETS:
        result = subprocess.run([str(kustomize), "build", str(REPO / "manifests" / target)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"kustomize build {target}: {result.stderr}"
        out[target] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out
