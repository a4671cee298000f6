"""What kuberec.backends.k8s puts into each custom resource (no server needed; acceptance by a real API
server is tested in test_kubernetes_backend.py)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from kuberec.backends import HorovodJob, RayJob, ServingJob, SparkJob, run_module
from kuberec.backends.k8s.naming import dns_label, run_name
from kuberec.backends.k8s.options import ClusterConfigError, ClusterOptions, Toleration
from kuberec.backends.k8s.pods import pod_env
from kuberec.backends.k8s.render import render
from kuberec.backends.k8s.serving import (
    CANARY,
    MODEL_URI_ANNOTATION,
    Canary,
    render_inference_service,
    render_traffic_split,
)
from kuberec.errors import KuberecError
from kuberec.settings import Settings

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`


@pytest.fixture
def cluster_settings(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home", lake_uri="s3://kuberec/lake", s3_endpoint="http://minio:9000",
                    namespace="ml", backend="kubernetes", image_registry="registry.example/team", image_tag="1.2.3")


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_pod_env_carries_settings_but_not_local_paths(cluster_settings):
    env = {e["name"]: e for e in pod_env(cluster_settings, ClusterOptions())}
    assert env["KUBEREC_LAKE"]["value"] == "s3://kuberec/lake"
    assert env["KUBEREC_S3_ENDPOINT"]["value"] == "http://minio:9000"
    assert env["KUBEREC_BACKEND"]["value"] == "local"  # the pod runs the step, it does not submit it again
    assert env["KUBEREC_HOME"]["value"] == "/var/lib/kuberec"
    assert "KUBEREC_CACHE" not in env and "KFP_HOST" not in env
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.ml.svc.cluster.local:5000"
    for key, secret in (("AWS_SECRET_ACCESS_KEY", "kuberec-lake"), ("MLFLOW_TRACKING_PASSWORD", "kuberec-mlflow")):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key, "optional": True}
    assert not any(str(cluster_settings.home) in json.dumps(e) for e in env.values())


@pytest.mark.parametrize("lake", ["/data/lake", "file:///data/lake"])
def test_local_lake_is_refused(tmp_path, lake):
    settings = Settings(home=tmp_path, lake_uri=lake, backend="kubernetes")
    with pytest.raises(ClusterConfigError, match="KUBEREC_LAKE"):
        render(SparkJob("ingest", "kuberec.ingest.x"), settings, ClusterOptions())


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "http://localhost:5000", "sqlite:///m.db", "file:///x"])
def test_tracking_uri_only_reachable_here_is_refused(tmp_path, uri):
    settings = Settings(home=tmp_path, lake_uri="s3://b/l", mlflow_tracking_uri=uri, backend="kubernetes")
    with pytest.raises(ClusterConfigError, match="only reachable from this machine"):
        pod_env(settings, ClusterOptions())


def test_loopback_s3_endpoint_is_refused(tmp_path):
    settings = Settings(home=tmp_path, lake_uri="s3://b/l", s3_endpoint="http://localhost:9000", backend="kubernetes")
    with pytest.raises(ClusterConfigError, match="KUBEREC_K8S_POD_S3_ENDPOINT"):
        pod_env(settings, ClusterOptions())


def test_pods_get_their_own_addresses_behind_a_port_forward(tmp_path):
    """A workstation reaches MLflow and MinIO through `kubectl port-forward` (localhost); the pods get the
    in-cluster addresses from KUBEREC_K8S_POD_MLFLOW_URI / KUBEREC_K8S_POD_S3_ENDPOINT."""
    settings = Settings(home=tmp_path, lake_uri="s3://b/l", s3_endpoint="http://localhost:9000",
                        mlflow_tracking_uri="http://127.0.0.1:5000", backend="kubernetes")
    options = ClusterOptions.from_env({"KUBEREC_K8S_POD_MLFLOW_URI": "http://mlflow.ml.svc:5000",
                                       "KUBEREC_K8S_POD_S3_ENDPOINT": "http://minio.ml.svc:9000"})
    env = {e["name"]: e.get("value") for e in pod_env(settings, options)}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.ml.svc:5000"
    assert env["KUBEREC_S3_ENDPOINT"] == "http://minio.ml.svc:9000"


def test_spark_application(cluster_settings):
    job = SparkJob("ingest fashion-mnist", "kuberec.ingest.fashion_mnist", ("--split", "train"), executors=3,
                   executor_cores=2, executor_memory="3g", driver_memory="1g")
    cr = render(job, cluster_settings, ClusterOptions())
    spec = cr["spec"]
    assert cr["metadata"]["namespace"] == "ml"
    assert spec["image"] == "registry.example/team/kuberec-spark:1.2.3"
    assert spec["mainApplicationFile"] == "local:///opt/kuberec/run_module.py"
    assert spec["arguments"] == ["kuberec.ingest.fashion_mnist", "--split", "train"]
    assert spec["sparkVersion"] == importlib.metadata.version("pyspark")
    assert spec["executor"]["instances"] == 3 and spec["executor"]["cores"] == 2
    assert spec["executor"]["memory"] == "3g" and spec["driver"]["memory"] == "1g"
    conf = spec["sparkConf"]
    # The environment is Spark's own properties (applied by spark-submit, no webhook needed), for both roles.
    for prefix in ("spark.kubernetes.driverEnv.", "spark.executorEnv."):
        assert conf[f"{prefix}KUBEREC_DELTA_ON_CLASSPATH"] == "1"  # the Spark image has the Delta jars
        assert conf[f"{prefix}KUBEREC_LAKE"] == "s3://kuberec/lake"
    for role in ("driver", "executor"):  # executors read s3a too
        assert conf[f"spark.kubernetes.{role}.secretKeyRef.AWS_ACCESS_KEY_ID"] == "kuberec-lake:AWS_ACCESS_KEY_ID"
        assert f"spark.kubernetes.{role}.secretKeyRef.MLFLOW_TRACKING_PASSWORD" not in conf  # optional: not for Spark
        assert "env" not in spec[role]
        assert spec[role]["serviceAccount"] == "kuberec-spark"
        assert spec[role]["labels"]["kuberec.io/step"] == "ingest-fashion-mnist"


def test_mpijob_cpu(cluster_settings):
    cr = render(HorovodJob("train", "kuberec.similarity.train", ("--epochs", "3"), workers=3, slots_per_worker=2),
                cluster_settings, ClusterOptions())
    launcher = cr["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    worker = cr["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert cr["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 3 and cr["spec"]["slotsPerWorker"] == 2
    command = launcher["containers"][0]["command"]
    assert command[0] == "mpirun" and "--allow-run-as-root" not in command  # the non-root user runs it
    assert command[command.index("-np") + 1] == "6"  # workers x slots
    assert command[-5:] == ["python", "-m", "kuberec.similarity.train", "--epochs", "3"]
    # Everything the workers need crosses ssh with -x (secrets by name only, never by value).
    forwarded = {command[i + 1] for i, arg in enumerate(command) if arg == "-x"}
    assert {"KUBEREC_LAKE", "MLFLOW_TRACKING_URI", "AWS_SECRET_ACCESS_KEY", "PATH"} <= forwarded
    assert worker["containers"][0]["image"] == "registry.example/team/kuberec-horovod-cpu:1.2.3"
    assert "nvidia.com/gpu" not in json.dumps(cr)
    assert "nodeSelector" not in worker and "tolerations" not in worker


def test_mpijob_gpu_goes_to_the_gpu_pool(cluster_settings):
    options = ClusterOptions.from_env({"KUBEREC_K8S_GPU_NODE_SELECTOR": "cloud.example/accelerator=a100,pool=gpu",
                                       "KUBEREC_K8S_GPU_TOLERATIONS": "nvidia.com/gpu:NoSchedule,pool=gpu:NoExecute"})
    cr = render(HorovodJob("train", "kuberec.similarity.train", workers=2, slots_per_worker=4, gpus_per_worker=4),
                cluster_settings, options)
    worker = cr["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    launcher = cr["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]
    container = worker["containers"][0]
    assert container["image"] == "registry.example/team/kuberec-horovod-gpu:1.2.3"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert worker["nodeSelector"] == {"cloud.example/accelerator": "a100", "pool": "gpu"}
    assert worker["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "pool", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}]
    # The launcher only runs mpirun: no GPU, not on the GPU pool.
    assert "nodeSelector" not in launcher and "nvidia.com/gpu" not in json.dumps(launcher)
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def test_rayjob(cluster_settings):
    cr = render(RayJob("tune", "kuberec.tuning.sweep", ("--name", "a b"), workers=4, cpus_per_worker=3,
                       gpus_per_worker=1), cluster_settings, ClusterOptions())
    spec = cr["spec"]
    assert shlex.split(spec["entrypoint"]) == ["python", "-m", "kuberec.tuning.sweep", "--name", "a b"]
    assert spec["rayClusterSpec"]["rayVersion"] == importlib.metadata.version("ray")
    group = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    worker = group["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"] == {"cpu": "3", "memory": "8Gi", "nvidia.com/gpu": "1"}
    assert worker["nodeSelector"] == {"kuberec.io/pool": "gpu"}
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert "nodeSelector" not in head
    # Trials run the Horovod training code: the Horovod images (GPU for GPU workers).
    assert head["containers"][0]["image"] == "registry.example/team/kuberec-horovod-cpu:1.2.3"
    assert worker["containers"][0]["image"] == "registry.example/team/kuberec-horovod-gpu:1.2.3"
    for pod in (head, worker):  # the object store's shared memory
        assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_inference_service(cluster_settings):
    cr = render(ServingJob("Wide & Deep", "s3://kuberec/mlflow/2/x/artifacts/model", min_replicas=2, max_replicas=4),
                cluster_settings, ClusterOptions(serving_runtime="custom-rt"))
    assert cr["metadata"]["name"] == "wide-deep"  # stable: deploying again updates the same service
    predictor = cr["spec"]["predictor"]
    model = {k: v for k, v in predictor["model"].items() if k != "securityContext"}  # test_pod_security.py
    assert model == {"modelFormat": {"name": "mlflow"}, "protocolVersion": "v2",
                     "storageUri": "s3://kuberec/mlflow/2/x/artifacts/model", "runtime": "custom-rt"}
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 4)
    # Between min and max replicas KServe's HPA scales on the pods' CPU, percent of their request.
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("cpu", 80)
    assert predictor["serviceAccountName"] == "kuberec-serving"
    assert "canary" not in cr["spec"]
    fixed = render(ServingJob("wd", "s3://kuberec/m/1"), cluster_settings, ClusterOptions())
    assert "scaleMetric" not in fixed["spec"]["predictor"]  # one replica: nothing to scale


@pytest.mark.parametrize(("job", "message"), [
    (ServingJob("wd", "s3://kuberec/m/1", min_replicas=3, max_replicas=2), r"min \(3\) <= max \(2\)"),
    (ServingJob("wd", "s3://kuberec/m/1", min_replicas=0), r"min \(0\)"),
    (ServingJob("wd", "s3://kuberec/m/1", max_replicas=2, cpu_target=0), "CPU target"),
])
def test_bad_replicas_are_refused(cluster_settings, job, message):
    with pytest.raises(KuberecError, match=message):
        render(job, cluster_settings, ClusterOptions())


def test_canary_beside_the_stable_model(cluster_settings):
    job = ServingJob("similarity", "s3://kuberec/m/1", extra={"KUBEREC_TOP_K": "10"})
    cr = render_inference_service(job, cluster_settings, ClusterOptions(), Canary("s3://kuberec/m/2", 10))
    assert cr["spec"]["predictor"]["model"]["storageUri"] == "s3://kuberec/m/1"
    assert cr["metadata"]["annotations"] == {MODEL_URI_ANNOTATION: "s3://kuberec/m/1"}
    (canary,) = cr["spec"]["canary"]
    assert canary["trafficPercent"] == 10
    # The canary's pods say which model they serve (a predictor's annotations win over the service's).
    assert canary["predictor"]["name"] == CANARY
    assert canary["predictor"]["annotations"] == {MODEL_URI_ANNOTATION: "s3://kuberec/m/2"}
    assert canary["predictor"]["model"] == {**cr["spec"]["predictor"]["model"], "storageUri": "s3://kuberec/m/2",
                                            "name": "kserve-container"}


@pytest.mark.parametrize("percent", [0, 100, -5, 150])
def test_canary_share_is_between_1_and_99(percent):
    with pytest.raises(KuberecError, match="between 1 and 99 percent"):
        Canary("s3://kuberec/m/2", percent)


def test_traffic_split(cluster_settings):
    isvc = render(ServingJob("similarity", "s3://kuberec/m/1"), cluster_settings, ClusterOptions())
    isvc["metadata"]["uid"] = "0f6f1c2e"
    graph = render_traffic_split(isvc, {"": 70, CANARY: 30})
    assert graph["kind"] == "InferenceGraph" and graph["metadata"]["name"] == "similarity-split"
    assert graph["metadata"]["ownerReferences"][0]["uid"] == "0f6f1c2e"  # deleted with its service
    root = graph["spec"]["nodes"]["root"]
    namespace = cluster_settings.namespace
    assert root == {"routerType": "Splitter", "steps": [
        {"name": "stable", "weight": 70,
         "serviceUrl": f"http://similarity-predictor.{namespace}.svc.cluster.local/v2/models/similarity/infer"},
        {"name": "canary", "weight": 30,
         "serviceUrl": f"http://similarity-canary-predictor.{namespace}.svc.cluster.local"
                       "/v2/models/similarity/infer"}]}
    # A step with no share is left out (KServe's router would never pick it).
    assert [step["name"] for step in render_traffic_split(isvc, {"": 0, CANARY: 100})["spec"]["nodes"]["root"][
        "steps"]] == ["canary"]
    with pytest.raises(KuberecError, match="sum to 100"):
        render_traffic_split(isvc, {"": 70, CANARY: 20})


@pytest.mark.parametrize("text", ["Ingest: Fashion_MNIST v2!", "2-step", "-x-", "a" * 80, "步骤"])
def test_names_are_valid_dns_labels(text):
    for name in (run_name(text), dns_label(text, 45)):
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 45, name
    assert run_name(text) != run_name(text)  # each run is a new resource


def test_options_from_env():
    options = ClusterOptions.from_env({"KUBEREC_K8S_ON_CANCEL": "keep", "KUBEREC_K8S_TIMEOUT": "90",
                                       "KUBEREC_K8S_GPU_NODE_SELECTOR": "", "KUBEREC_K8S_GPU_TOLERATIONS": ""})
    assert options.on_cancel == "keep" and options.timeout_s == 90
    assert options.gpu_node_selector == {} and options.gpu_tolerations == ()
    assert ClusterOptions.from_env({}) == ClusterOptions()


@pytest.mark.parametrize(("env", "message"), [
    ({"KUBEREC_K8S_ON_CANCEL": "abandon"}, "delete or keep"),
    ({"KUBEREC_K8S_TIMEOUT": "soon"}, "number of seconds"),
    ({"KUBEREC_K8S_GPU_NODE_SELECTOR": "gpu"}, "key=value"),
    ({"KUBEREC_K8S_GPU_TOLERATIONS": "nvidia.com/gpu:Sometimes"}, "Effect one of"),
    ({"KUBEREC_K8S_REQUEST_FRACTION": "half"}, "REQUEST_FRACTION must be a number"),
    ({"KUBEREC_K8S_REQUEST_FRACTION": "0"}, r"REQUEST_FRACTION must be in \(0, 1\]"),
    ({"KUBEREC_K8S_REQUEST_FRACTION": "1.5"}, r"REQUEST_FRACTION must be in \(0, 1\]"),
])
def test_bad_options_say_what_to_write(env, message):
    with pytest.raises(ClusterConfigError, match=message):
        ClusterOptions.from_env(env)


def test_toleration_parse():
    assert Toleration.parse("dedicated=ml:NoSchedule").to_dict() == {
        "key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}


def test_run_module_runs_module_as_main(tmp_path):
    (tmp_path / "echo_argv.py").write_text(
        "import json, sys\nif __name__ == '__main__':\n    json.dump(sys.argv[1:], open(sys.argv[1], 'w'))\n")
    out = tmp_path / "argv.json"
    subprocess.run([sys.executable, run_module.__file__, "echo_argv", str(out), "--flag", "x y"], check=True,
                   env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert json.loads(out.read_text()) == [str(out), "--flag", "x y"]
    with pytest.raises(SystemExit, match="usage"):
        run_module.main([])


def test_a_failed_jobs_error_line_is_the_programs_own():
    """What `KubernetesBackend.program_error` reads from a program pod's log: the last line kuberec.entrypoint wrote
    (`<program>: error: ...`), not Spark's shutdown lines after it nor a traceback's `Error:` lines before it. The
    pod selectors are the labels the operators put on the driver, the launcher and the submitter (checked on the
    real cluster by make cluster-smoke)."""
    from kuberec.backends.k8s.kinds import INFERENCE_SERVICE, MPIJOB, RAYJOB, SPARK_APPLICATION
    from kuberec.backends.kubernetes import last_program_error

    driver_log = "\n".join([
        "26/12/04 13:17:10 INFO SparkContext: Running Spark version 4.0.5",
        "ValueError: not what we report",
        "kuberec.ingest.instacart: error: orders.csv row 2 (line 3), column eval_set: 'someday' is not one of prior",
        "26/12/04 13:17:12 INFO ShutdownHookManager: Shutdown hook called",
        "26/12/04 13:17:12 INFO ShutdownHookManager: Deleting directory /tmp/spark-1",
    ])
    assert last_program_error(driver_log) == ("kuberec.ingest.instacart: error: orders.csv row 2 (line 3), column "
                                              "eval_set: 'someday' is not one of prior")
    assert last_program_error("a: error: first\nkuberec.similarity.train: error: second\n") == \
        "kuberec.similarity.train: error: second"
    assert last_program_error("Traceback (most recent call last):\nRuntimeError: boom\n") is None
    assert last_program_error("") is None
    assert SPARK_APPLICATION.program_pod("ingest-1") == "sparkoperator.k8s.io/app-name=ingest-1,spark-role=driver"
    assert MPIJOB.program_pod("train-1") == ("training.kubeflow.org/job-name=train-1,"
                                             "training.kubeflow.org/job-role=launcher")
    assert RAYJOB.program_pod("tune-1") == "job-name=tune-1"
    assert INFERENCE_SERVICE.program_pod is None
