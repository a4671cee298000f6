"""kuberec's KFP components, run by the KFP local runner with KUBEREC_BACKEND=kubernetes against the real API server
(tests/k8s/conftest.py): each component creates its custom resource there and waits for it, while a thread of the
test plays the operator, as the operator would: it watches for the resource, does the job's work where a later step
reads it, and writes /status.

This machine stands in for a workstation with port-forwards: the components reach MLflow (the session's real
server) and the object store on 127.0.0.1 and tell the pods the in-cluster addresses (KUBEREC_K8S_POD_*). The
object store is moto's S3 server (a fake S3 over real HTTP: there is no MinIO here). No pod runs: the Spark job is
replayed by the fake operator with the local Spark session (this Spark has no s3a jars, so it reads the staged files
through S3 downloads and uploads the Delta table it wrote), and the MPIJob's training is replaced by the fake
operator logging into the run as rank 0 would.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

import pytest

# The statuses each operator writes, shared with the backend tests (tests/k8s is on sys.path, like its conftest).
from test_kubernetes_backend import mpijob_statuses, spark_statuses

from kuberec.backends.k8s.kinds import MPIJOB, SPARK_APPLICATION, Kind

pytestmark = [pytest.mark.skipif(os.environ.get("KUBEREC_K8S_TESTS") == "0",
                                 reason="Kubernetes tests disabled (KUBEREC_K8S_TESTS=0)"),
              pytest.mark.timeout(300)]

BUCKET = "kuberec"
AWS = {"AWS_ACCESS_KEY_ID": "kuberec-test", "AWS_SECRET_ACCESS_KEY": "kuberec-test-secret",
       "AWS_REGION": "us-east-1"}


# -- the world around the components ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_endpoint(s3_server) -> str:
    """The session's S3 server with the lake's bucket (stands in for the cluster's MinIO)."""
    s3_server.client(AWS["AWS_ACCESS_KEY_ID"], AWS["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=BUCKET)
    return s3_server.endpoint


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name=AWS["AWS_REGION"],
                        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture
def cluster(apiserver, k8s_namespace, s3_endpoint, settings, monkeypatch, tmp_path):
    """The environment a component's pod gets from the kuberec-settings ConfigMap and the Secrets, pointed at the
    test API server (a kubeconfig, as from a workstation), plus a KFP local runner."""
    from kfp import local

    env = {
        "KUBEREC_BACKEND": "kubernetes", "KUBECONFIG": str(apiserver.kubeconfig),
        "KUBEREC_NAMESPACE": k8s_namespace, "KUBEREC_LAKE": f"s3://{BUCKET}/{k8s_namespace}/lake",
        "KUBEREC_S3_ENDPOINT": s3_endpoint,
        "KUBEREC_K8S_POD_S3_ENDPOINT": f"http://minio.{k8s_namespace}.svc.cluster.local:9000",
        "KUBEREC_K8S_POD_MLFLOW_URI": f"http://mlflow.{k8s_namespace}.svc.cluster.local:5000",
        "KUBEREC_K8S_TIMEOUT": "120",  # a broken test fails in minutes, not in the default 12 hours
        **AWS,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the in-cluster config of a CI pod
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp-root"))
    return env


class FakeOperator:
    """The operator of one kind, in a thread: waits (list, then watch) for the first resource of `kind` in the
    namespace and calls `play(resource, write_status)`. `result()` re-raises what went wrong in the thread."""

    def __init__(self, config, kind: Kind, namespace: str, play: Callable[[dict, Callable[[dict], None]], None]):
        self.config, self.kind, self.namespace, self.play = config, kind, namespace, play
        self.resource: dict | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"fake-{kind.kind}-operator", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from kubernetes import client, watch

        kind = self.kind
        api = client.CustomObjectsApi(client.ApiClient(self.config))
        try:
            listing = api.list_namespaced_custom_object(kind.group, kind.version, self.namespace, kind.plural)
            found = listing["items"][0] if listing["items"] else None
            if found is None:
                stream = watch.Watch()
                for event in stream.stream(api.list_namespaced_custom_object, kind.group, kind.version,
                                           self.namespace, kind.plural, timeout_seconds=120,
                                           resource_version=listing["metadata"]["resourceVersion"]):
                    if event["type"] == "ADDED":
                        found = event["object"]
                        stream.stop()
                        break
            assert found is not None, f"no {kind.kind} was created in {self.namespace} within 120 s"
            self.resource = found
            name = found["metadata"]["name"]

            def write_status(status: dict) -> None:
                api.patch_namespaced_custom_object_status(kind.group, kind.version, self.namespace, kind.plural,
                                                          name, {"status": status})

            self.play(found, write_status)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            self.error = err

    def result(self) -> dict:
        self.thread.join(60)
        assert not self.thread.is_alive(), f"the fake {self.kind.kind} operator is still running"
        if self.error:
            raise self.error
        return self.resource


def arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from a Secret>") for e in container["env"]}


def s3_key(uri: str) -> str:
    """Key of an s3:// or s3a:// URI in the test bucket."""
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    assert bucket == BUCKET
    return key


# -- catalog ingest: a SparkApplication --------------------------------------------------------------------------
def test_ingest_component_runs_a_spark_application(cluster, k8s_config, spark, s3_endpoint, tmp_path):
    """The component stages the verified Fashion-MNIST files in the lake, creates the SparkApplication and, once
    the operator reports COMPLETED, returns the table version the job wrote."""
    from components.catalog import ingest_fashion_mnist
    from kuberec.ingest.fashion_mnist import ingest_fashion_mnist as spark_ingest

    namespace = cluster["KUBEREC_NAMESPACE"]
    s3 = s3_client(s3_endpoint)

    def play(app: dict, write_status) -> None:
        steps, _, _ = spark_statuses(app["metadata"]["name"])
        write_status(steps[0])  # SUBMITTED
        module, *argv = app["spec"]["arguments"]
        assert module == "kuberec.ingest.fashion_mnist"
        # The driver's work, with this machine's Spark: the staged files from the lake -> Delta -> the lake.
        staged = tmp_path / "staged"
        staged.mkdir()
        prefix = s3_key(arg(argv, "--source")) + "/"
        for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]:
            s3.download_file(BUCKET, item["Key"], str(staged / item["Key"].removeprefix(prefix)))
        write_status(steps[1])  # RUNNING
        written = tmp_path / "written"
        spark_ingest(spark, str(staged), str(written), int(arg(argv, "--max-per-split")))
        table = s3_key(arg(argv, "--table"))
        for path in sorted(p for p in written.rglob("*") if p.is_file()):
            s3.upload_file(str(path), BUCKET, f"{table}/{path.relative_to(written)}")
        for status in steps[2:]:  # SUCCEEDING, COMPLETED
            write_status(status)

    operator = FakeOperator(k8s_config, SPARK_APPLICATION, namespace, play)
    task = ingest_fashion_mnist(max_per_split=20)
    app = operator.result()

    lake = f"s3a://{BUCKET}/{namespace}/lake"
    assert task.outputs["table_uri"] == f"{lake}/fashion_mnist"
    assert task.outputs["table_version"] == 0
    argv = app["spec"]["arguments"][1:]
    source = arg(argv, "--source")
    assert source.startswith(f"{lake}/raw/fashion-mnist/")  # a place the driver pod can read
    staged = {item["Key"].rsplit("/", 1)[1] for item in
              s3.list_objects_v2(Bucket=BUCKET, Prefix=s3_key(source) + "/")["Contents"]}
    assert {"train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"} <= staged
    # The driver's environment travels as Spark properties (spark-submit applies them; no webhook needed).
    prefix = "spark.kubernetes.driverEnv."
    driver_env = {k.removeprefix(prefix): v for k, v in app["spec"]["sparkConf"].items() if k.startswith(prefix)}
    assert driver_env["KUBEREC_S3_ENDPOINT"] == cluster["KUBEREC_K8S_POD_S3_ENDPOINT"]
    assert driver_env["KUBEREC_BACKEND"] == "local"
    assert app["metadata"]["labels"]["kuberec.io/step"] == "ingest-fashion-mnist"


def test_ingest_component_fails_with_the_operators_message(cluster, k8s_config, capfd):
    from components.catalog import ingest_fashion_mnist

    def play(app: dict, write_status) -> None:
        steps, failed, _ = spark_statuses(app["metadata"]["name"])
        write_status(steps[0])
        write_status({**failed, "applicationState": {"state": "FAILED", "errorMessage": "driver pod OOMKilled"}})

    operator = FakeOperator(k8s_config, SPARK_APPLICATION, cluster["KUBEREC_NAMESPACE"], play)
    with pytest.raises(RuntimeError, match="FAILURE"):
        ingest_fashion_mnist(max_per_split=20)
    name = operator.result()["metadata"]["name"]
    output = capfd.readouterr().out
    assert f"SparkApplication {name}: SUBMITTED" in output  # the states the backend saw, in the task's log
    assert f"SparkApplication {cluster['KUBEREC_NAMESPACE']}/{name} failed: driver pod OOMKilled" in output


# -- similarity training: an MPIJob ------------------------------------------------------------------------------
def launcher_of(mpijob: dict) -> dict:
    return mpijob["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]


def test_train_component_runs_an_mpijob(cluster, tracked_settings, k8s_config):
    """The component opens the MLflow run, hands its id to the MPIJob, and closes it FINISHED when the operator
    reports Succeeded; what rank 0 logged into the run is there for the next steps."""
    from components.similarity import train_similarity
    from kuberec import tracking

    mlflow = tracking.client(tracked_settings)
    table_uri = f"s3a://{BUCKET}/{cluster['KUBEREC_NAMESPACE']}/lake/fashion_mnist"

    def play(mpijob: dict, write_status) -> None:
        steps, _, _ = mpijob_statuses(mpijob["metadata"]["name"])
        write_status(steps[0])  # Created
        write_status(steps[1])  # Running
        command = launcher_of(mpijob)["command"]
        run_id = arg(command, "--mlflow-run-id")
        assert mlflow.get_run(run_id).info.status == "RUNNING"
        mlflow.log_metric(run_id, "loss", 0.5, step=1)  # what rank 0 logs
        write_status(steps[2])  # Succeeded

    operator = FakeOperator(k8s_config, MPIJOB, cluster["KUBEREC_NAMESPACE"], play)
    task = train_similarity(table_uri=table_uri, table_version=3, workers=2, config_json='{"epochs": 1}',
                            max_examples=200, sweep_run_id="")
    mpijob = operator.result()

    run = mlflow.get_run(task.output)
    assert run.info.status == "FINISHED"
    assert tracking.parse_lineage(run.data.tags) == {"fashion_mnist": (table_uri, 3)}
    assert run.data.params["epochs"] == "1" and run.data.params["workers"] == "2"
    assert run.data.metrics["loss"] == 0.5
    launcher = launcher_of(mpijob)
    command = launcher["command"]
    assert arg(command, "--mlflow-run-id") == task.output
    assert arg(command, "--table") == table_uri and arg(command, "--version") == "3"
    assert arg(command, "-np") == "2" and mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    assert env_of(launcher)["MLFLOW_TRACKING_URI"] == cluster["KUBEREC_K8S_POD_MLFLOW_URI"]
    # The job writes in the pod's home, not under this machine's (found on the real cluster: a pod cannot
    # create /work/... and the wide & deep MPIJob failed at once).
    assert arg(command, "--out") == f"/var/lib/kuberec/runs/similarity-{task.output}"


def test_train_component_fails_and_marks_the_run_failed(cluster, tracked_settings, k8s_config, capfd):
    from components.similarity import train_similarity
    from kuberec import tracking

    def play(mpijob: dict, write_status) -> None:
        steps, failed, _ = mpijob_statuses(mpijob["metadata"]["name"])
        write_status(steps[1])
        condition = failed["conditions"][-1]
        write_status({**failed, "conditions": [*failed["conditions"][:-1],
                                               {**condition, "message": "launcher exited with code 137"}]})

    operator = FakeOperator(k8s_config, MPIJOB, cluster["KUBEREC_NAMESPACE"], play)
    with pytest.raises(RuntimeError, match="FAILURE"):
        train_similarity(table_uri=f"s3a://{BUCKET}/x/fashion_mnist", table_version=0, workers=1,
                         config_json="{}", max_examples=0, sweep_run_id="")
    mpijob = operator.result()
    output = capfd.readouterr().out
    assert (f"MPIJob {cluster['KUBEREC_NAMESPACE']}/{mpijob['metadata']['name']} failed: "
            f"BackoffLimitExceeded: launcher exited with code 137") in output
    run_id = arg(launcher_of(mpijob)["command"], "--mlflow-run-id")
    assert tracking.client(tracked_settings).get_run(run_id).info.status == "FAILED"
