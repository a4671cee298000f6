"""manifests/: every overlay builds with kustomize 5, every built-in object validates against Kubernetes' own
schemas (kubernetes-validate, strict), and every custom object is accepted by the real API server (dry run)."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from overlays import TARGETS

from kuberec.backends import HorovodJob
from kuberec.backends.k8s.kinds import INFERENCE_GRAPH, KINDS
from kuberec.backends.k8s.options import ClusterOptions, Toleration
from kuberec.backends.k8s.render import render
from kuberec.settings import Settings

REPO = Path(__file__).resolve().parents[2]
# The oldest Kubernetes the cluster guide supports, and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def crd_groups() -> set[str]:
    return {kind.group for kind in KINDS.values()} | {"serving.kserve.io"}


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


@pytest.mark.parametrize("target", TARGETS)
def test_builtin_objects_validate(built, target):
    checked = 0
    for obj in built[target]:
        if obj["apiVersion"].split("/")[0] in crd_groups():
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{target}: {obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: "
                            f"{err.message} at {'.'.join(map(str, err.path))}")
        checked += 1
    assert checked >= 15


@pytest.mark.parametrize("target", TARGETS)
def test_custom_objects_accepted_by_api_server(built, target, k8s_api_client):
    from kubernetes import client

    api = client.CustomObjectsApi(k8s_api_client)
    custom = [o for o in built[target] if o["apiVersion"].split("/")[0] in crd_groups()]
    expected = ["ClusterServingRuntime", "ClusterStorageContainer"] if target == "overlays/local" else [
        "ClusterServingRuntime"]
    assert sorted(o["kind"] for o in custom) == expected
    for obj in custom:
        group, version = obj["apiVersion"].split("/")
        plural = obj["kind"].lower() + "s"
        stored = api.create_cluster_custom_object(group, version, plural, obj, dry_run="All",
                                                  field_validation="Strict")
        containers = stored["spec"]["containers"] if "containers" in stored["spec"] else [stored["spec"]["container"]]
        assert containers[0]["image"].startswith("kuberec/kuberec-serving:")


def test_runner_rbac_is_exactly_what_the_backend_uses(built):
    objects = built["base"]
    role = find(objects, "Role", "kuberec-runner")
    rules = {(r["apiGroups"][0], r["resources"][0]): set(r["verbs"]) for r in role["rules"]}
    assert all(len(r["apiGroups"]) == 1 and len(r["resources"]) == 1 for r in role["rules"])
    watch = {"create", "get", "list", "watch", "delete"}
    expected = {(k.group, k.plural): watch | ({"update"} if k.kind == "InferenceService" else set())
                for k in KINDS.values()}
    # A canary's split, and its router Deployment (router_shares)
    expected |= {(INFERENCE_GRAPH.group, INFERENCE_GRAPH.plural): watch | {"update"}, ("apps", "deployments"): {"get"},
                 ("autoscaling", "horizontalpodautoscalers"): {"delete"}}  # delete_canary_autoscaler
    expected |= {("", "pods"): {"list"}, ("", "pods/log"): {"get"}}  # a failed job's program error (program_error)
    assert rules == expected
    for obj in objects:
        for rule in obj.get("rules", []):
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], obj["metadata"]["name"]
    binding = find(objects, "RoleBinding", "kuberec-runner")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kuberec-runner", "namespace": "kuberec"}]


def test_spark_driver_role_covers_what_spark_4_calls(built):
    """The calls a Spark 4 driver makes on a real cluster (make cluster-smoke). Services deletecollection and claims
    list/deletecollection were missing at first: the driver got a 403 from them there when it stopped."""
    role = find(built["base"], "Role", "kuberec-spark")
    granted = {(resource, verb) for rule in role["rules"] if rule["apiGroups"] == [""]
               for resource in rule["resources"] for verb in rule["verbs"]}
    needed = {("pods", verb) for verb in ("create", "get", "list", "watch", "delete", "deletecollection")} | \
        {("configmaps", verb) for verb in ("create", "get", "delete", "deletecollection")} | \
        {("services", verb) for verb in ("create", "delete", "deletecollection")} | \
        {("persistentvolumeclaims", verb) for verb in ("list", "deletecollection")}
    assert needed <= granted, sorted(needed - granted)


def test_backend_defaults_match_the_manifests(built):
    """The service accounts, Secrets and serving runtime the backend names exist in (or are documented for) the
    manifests; job pods that need no API access get no token."""
    objects = built["base"]
    options = ClusterOptions()
    accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    for name in (options.spark_service_account, options.job_service_account, options.serving_service_account):
        assert name in accounts
    assert accounts[options.job_service_account]["automountServiceAccountToken"] is False
    assert find(objects, "ClusterServingRuntime", options.serving_runtime)
    assert {"name": options.lake_secret} in accounts[options.serving_service_account]["secrets"]


@pytest.mark.parametrize("target", TARGETS)
def test_serving_runtime_sizes_workers_as_kuberec_serve_does(built, target):
    """One model server process per predictor pod, which is what `kuberec serve` picks for the CPUs its container may
    use; the server is kuberec's runtime on KServe's model server over the model KServe puts in /mnt/models."""
    import math

    from kuberec.backends.k8s.pods import cpu_millis
    from kuberec.serving.server import default_workers

    container = find(built[target], "ClusterServingRuntime", "kuberec-mlflow")["spec"]["containers"][0]
    cpus = math.ceil(cpu_millis(container["resources"]["limits"]["cpu"]) / 1000)
    assert default_workers(cpus) == 1 and "--workers" not in container["args"]
    args = dict(zip(container["args"][::2], container["args"][1::2]))
    assert args["--model-dir"] == "/mnt/models" and args["--model-name"] == "{{.Name}}"


@pytest.mark.parametrize("target", TARGETS)
def test_predictors_are_ready_only_once_their_model_is_loaded(built, target):
    """The probe asks the model server whether its model is loaded, on the port it serves."""
    container = find(built[target], "ClusterServingRuntime", "kuberec-mlflow")["spec"]["containers"][0]
    args = dict(zip(container["args"][::2], container["args"][1::2]))
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/v2/health/ready"  # false while any model is loading
    assert str(probe["port"]) == args["--http-port"] == str(container["ports"][0]["containerPort"])


@pytest.mark.parametrize("target", TARGETS)
def test_a_replaced_predictor_serves_on_while_its_endpoint_is_withdrawn(built, target):
    """A rollout (kuberec k8s deploy) must not fail requests that were routed to the old pod as it stopped."""
    container = find(built[target], "ClusterServingRuntime", "kuberec-mlflow")["spec"]["containers"][0]
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] >= 5


@pytest.mark.parametrize("target", TARGETS)
def test_a_busy_predictor_stays_ready(built, target):
    """The readiness probe queues behind inference requests; a 1 s timeout took the only pod out of the Service
    under load during a rollout."""
    probe = find(built[target], "ClusterServingRuntime", "kuberec-mlflow")["spec"]["containers"][0]["readinessProbe"]
    assert probe["timeoutSeconds"] >= 5


@pytest.mark.parametrize("target", TARGETS)
def test_no_credentials_in_the_manifests(built, target):
    assert not [o for o in built[target] if o["kind"] == "Secret"], "Secrets are created by hand, not from git"
    text = yaml.safe_dump_all(built[target]).lower()
    for container in _containers(built[target]):
        for env in container.get("env", []):
            if any(word in env["name"] for word in ("PASSWORD", "SECRET", "TOKEN")):
                assert "valueFrom" in env and "value" not in env, env
    assert "minioadmin" not in text


def _containers(objects):
    for obj in objects:
        spec = obj.get("spec", {})
        pod = spec.get("template", {}).get("spec", spec)
        yield from pod.get("containers", [])


@pytest.mark.parametrize(("target", "selector", "tolerations"), [
    ("overlays/dev", {}, ()),
    ("overlays/local", {}, ()),
    ("overlays/gpu", {"kuberec.io/pool": "gpu"},
     (Toleration("nvidia.com/gpu"), Toleration("kuberec.io/pool", value="gpu"))),
])
def test_overlay_settings_place_gpu_jobs(built, target, selector, tolerations, tmp_path):
    """The settings ConfigMap is what pipeline pods get as environment: read it as they would and render a GPU
    training job from it."""
    env = find(built[target], "ConfigMap", "kuberec-settings")["data"]
    options = ClusterOptions.from_env(env)
    assert dict(options.gpu_node_selector) == selector and options.gpu_tolerations == tolerations
    settings = Settings(home=tmp_path, lake_uri=env["KUBEREC_LAKE"], s3_endpoint=env["KUBEREC_S3_ENDPOINT"],
                        mlflow_tracking_uri=env["MLFLOW_TRACKING_URI"], namespace=env["KUBEREC_NAMESPACE"],
                        image_registry=env["KUBEREC_IMAGE_REGISTRY"], image_tag=env["KUBEREC_IMAGE_TAG"],
                        backend=env["KUBEREC_BACKEND"])
    mpijob = render(HorovodJob("train", "m", workers=2, gpus_per_worker=1), settings, options)
    worker = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]
    assert worker.get("nodeSelector", {}) == selector
    assert len(worker.get("tolerations", [])) == len(tolerations)


def test_local_overlay_fits_one_small_node_and_pulls_nothing(built, tmp_path):
    """`make cluster-up`'s node has 2 CPUs and no registry: kuberec's own pods plus the largest job a step makes
    must fit in its requests, and every image is one the cluster's scripts build on the node."""
    from kuberec.backends import RayJob, SparkJob
    from kuberec.backends.k8s.pods import cpu_millis

    objects = built["overlays/local"]
    env = find(objects, "ConfigMap", "kuberec-settings")["data"]
    options = ClusterOptions.from_env(env)
    containers = list(_containers(objects)) + find(objects, "ClusterServingRuntime", "kuberec-mlflow")["spec"][
        "containers"]
    for container in containers:
        image = container["image"]
        assert image.startswith("kuberec-local/") or image.endswith(":dev"), image
    own = sum(cpu_millis(c["resources"]["requests"]["cpu"]) for c in containers)
    settings = Settings(home=tmp_path, lake_uri=env["KUBEREC_LAKE"], s3_endpoint=env["KUBEREC_S3_ENDPOINT"],
                        mlflow_tracking_uri=env["MLFLOW_TRACKING_URI"], namespace=env["KUBEREC_NAMESPACE"],
                        image_tag=env["KUBEREC_IMAGE_TAG"])
    mpijob = render(HorovodJob("train", "m", workers=2), settings, options)["spec"]["mpiReplicaSpecs"]
    horovod = sum(cpu_millis(spec["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"])
                  * spec["replicas"] for spec in mpijob.values())
    spark = render(SparkJob("ingest", "m"), settings, options)["spec"]
    spark_cpu = cpu_millis(spark["driver"]["coreRequest"]) + spark["executor"]["instances"] * cpu_millis(
        spark["executor"]["coreRequest"])
    ray = render(RayJob("tune", "m", workers=2), settings, options)["spec"]["rayClusterSpec"]
    def ray_request(group: dict) -> int:
        return cpu_millis(group["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"])

    ray_cpu = ray_request(ray["headGroupSpec"]) + 2 * ray_request(ray["workerGroupSpecs"][0])
    for job, cpu in (("MPIJob", horovod), ("SparkApplication", spark_cpu), ("RayJob", ray_cpu)):
        assert own + cpu <= 2000, f"{job}: kuberec's pods request {own}m and the job {cpu}m of the node's 2000m"
    # Limits stay what the job asks for: the fraction shrinks only what is reserved.
    worker = mpijob["Worker"]["template"]["spec"]["containers"][0]["resources"]
    assert worker["limits"] == {"cpu": "2", "memory": "8Gi"} and worker["requests"] == {"cpu": "200m",
                                                                                         "memory": "819Mi"}
