"""Pod security: every pod of the built overlays (manifests/) and every pod kuberec renders at run time
(kuberec.backends.k8s) runs as a numeric non-root user, without privilege escalation or capabilities, under
the runtime's seccomp profile, on a read-only root file system with an emptyDir where its programs write; the images
run as the users the pods name. The justified exceptions are listed, with why, in ALLOWED below."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest
from overlays import TARGETS

from kuberec.backends import HorovodJob, RayJob, ServingJob, SparkJob
from kuberec.backends.k8s.options import ClusterOptions
from kuberec.backends.k8s.pods import RUN_AS_USER, USER_HOME, WRITABLE_DIRS
from kuberec.backends.k8s.render import SSH_DIR, SSHD_CONFIG, render
from kuberec.settings import Settings

REPO = Path(__file__).resolve().parents[2]

# (target, workload, container) -> the settings it may lack, and why. Nothing else may lack any.
ALLOWED: dict[tuple[str, str, str], tuple[set[str], str]] = {
    # Its volume is a hostPath that scripts/cluster/install.sh creates root-owned (and a hostPath ignores
    # fsGroup), so MinIO runs as root in the local overlay only; manifests/base runs it as uid 1000.
    ("overlays/local", "StatefulSet/minio", "minio"): ({"runAsNonRoot", "runAsUser"}, "root-owned hostPath volume"),
}
# Containers with a read-only root that need no /tmp emptyDir: they write only into a volume they are given.
NO_SCRATCH = {"ClusterStorageContainer/kuberec-s3/storage-initializer"}  # writes only into /mnt/models


def manifest_pods(objects: list[dict]) -> Iterator[tuple[str, dict, list[dict]]]:
    """(workload, pod spec, containers) of every object that makes pods, the serving runtime's included."""
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = obj.get("spec", {})
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            pod = spec["template"]["spec"]
            claims = [{"name": t["metadata"]["name"], "persistentVolumeClaim": {}}
                      for t in spec.get("volumeClaimTemplates", [])]  # a StatefulSet's own volumes
            pod = {**pod, "volumes": [*pod.get("volumes", []), *claims]}
            yield name, pod, [*pod.get("initContainers", []), *pod["containers"]]
        elif obj["kind"] == "ClusterServingRuntime":  # merged by KServe into each predictor pod
            yield name, spec, spec["containers"]
        elif obj["kind"] == "ClusterStorageContainer":  # KServe's init container of predictor pods
            yield name, {}, [spec["container"]]


def rendered_pods(settings: Settings, options: ClusterOptions, runtime: dict) -> Iterator[tuple[str, dict, list]]:
    """(role, pod spec, containers) of every pod the backend's resources make."""
    spark = render(SparkJob("ingest", "kuberec.ingest.fashion_mnist"), settings, options)["spec"]
    for role in ("driver", "executor"):  # the pod templates Spark starts its pods from
        pod = spark[role]["template"]["spec"]
        yield f"SparkApplication {role}", pod, pod["containers"]
    for gpus in (0, 1):
        mpi = render(HorovodJob("train", "m", workers=2, gpus_per_worker=gpus), settings, options)["spec"]
        for role, spec in mpi["mpiReplicaSpecs"].items():
            pod = spec["template"]["spec"]
            yield f"MPIJob {role} (gpus {gpus})", pod, pod["containers"]
        ray = render(RayJob("tune", "m", workers=2, gpus_per_worker=gpus), settings, options)["spec"]
        cluster = ray["rayClusterSpec"]
        for role, template in (("head", cluster["headGroupSpec"]["template"]),
                               ("worker", cluster["workerGroupSpecs"][0]["template"]),
                               ("submitter", ray["submitterPodTemplate"])):
            yield f"RayJob {role} (gpus {gpus})", template["spec"], template["spec"]["containers"]
    predictor = render(ServingJob("similarity", "s3://mlflow/artifacts/1/m"), settings, options)["spec"]["predictor"]
    # KServe merges the runtime's container into the model's, and the runtime's volumes into the pod.
    container = {**runtime["containers"][0], **predictor["model"],
                 "securityContext": {**runtime["containers"][0]["securityContext"],
                                     **predictor["model"]["securityContext"]}}
    pod = {**{k: v for k, v in predictor.items() if k != "model"}, "volumes": runtime.get("volumes", [])}
    yield "InferenceService predictor", pod, [container]


def problems(pod: dict, container: dict) -> dict[str, str]:
    """What the container lacks of kuberec's pod security: {setting: what it is instead}."""
    pod_context, own = pod.get("securityContext") or {}, container.get("securityContext") or {}

    def effective(key: str):
        return own.get(key, pod_context.get(key))

    found = {}
    if effective("runAsNonRoot") is not True:
        found["runAsNonRoot"] = repr(effective("runAsNonRoot"))
    user = effective("runAsUser")
    if not isinstance(user, int) or user == 0:  # numeric: the kubelet can then check it is not root
        found["runAsUser"] = repr(user)
    if own.get("allowPrivilegeEscalation") is not False:
        found["allowPrivilegeEscalation"] = repr(own.get("allowPrivilegeEscalation"))
    capabilities = own.get("capabilities") or {}
    if "ALL" not in capabilities.get("drop", []) or capabilities.get("add"):
        found["capabilities"] = repr(capabilities)
    if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
        found["seccompProfile"] = repr(effective("seccompProfile"))
    if own.get("readOnlyRootFilesystem") is not True:
        found["readOnlyRootFilesystem"] = repr(own.get("readOnlyRootFilesystem"))
    if own.get("privileged"):
        found["privileged"] = "true"
    return found


def scratch_problems(pod: dict, container: dict) -> list[str]:
    """A read-only container needs a writable /tmp; every mount must name one of the pod's volumes."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    found = [f"mount {m['mountPath']} names no volume of the pod" for m in mounts.values()
             if m["name"] not in volumes]
    tmp = mounts.get("/tmp")
    if tmp is None or "emptyDir" not in volumes.get(tmp["name"], {}) or tmp.get("readOnly"):
        found.append("no writable emptyDir at /tmp")
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_every_manifest_pod_is_locked_down(built, target):
    checked, failures = 0, []
    for workload, pod, containers in manifest_pods(built[target]):
        if pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC"):
            failures.append(f"{workload}: shares the host's namespaces")
        for container in containers:
            allowed, _ = ALLOWED.get((target, workload, container["name"]), (set(), ""))
            lacking = {k: v for k, v in problems(pod, container).items() if k not in allowed}
            failures += [f"{workload}/{container['name']}: {key} is {value}" for key, value in lacking.items()]
            if f"{workload}/{container['name']}" not in NO_SCRATCH:
                failures += [f"{workload}/{container['name']}: {p}" for p in scratch_problems(pod, container)]
            checked += 1
    assert not failures, "\n".join(failures)
    assert checked >= 5  # MinIO, the buckets job, PostgreSQL, MLflow, the serving runtime (+ storage initializer)


def test_allowed_exceptions_are_still_needed(built):
    """An exception that no longer applies is removed from ALLOWED, so the list stays the truth."""
    for (target, workload, name), (allowed, _) in ALLOWED.items():
        pods = {w: (pod, cs) for w, pod, cs in manifest_pods(built[target])}
        pod, containers = pods[workload]
        container = next(c for c in containers if c["name"] == name)
        assert allowed <= set(problems(pod, container)), f"{workload}/{name} no longer needs {allowed}"


@pytest.mark.parametrize("target", ["overlays/dev", "overlays/gpu", "overlays/local"])
def test_every_rendered_pod_is_locked_down(built, target, tmp_path):
    """The pods of the resources the backend creates, with each overlay's settings and options."""
    env = next(o for o in built[target] if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "kuberec-settings")
    settings = Settings(home=tmp_path, lake_uri=env["data"]["KUBEREC_LAKE"],
                        s3_endpoint=env["data"]["KUBEREC_S3_ENDPOINT"], namespace=env["data"]["KUBEREC_NAMESPACE"],
                        mlflow_tracking_uri=env["data"]["MLFLOW_TRACKING_URI"], backend="kubernetes")
    runtime = next(o for o in built[target] if o["kind"] == "ClusterServingRuntime")["spec"]
    failures, roles = [], []
    for role, pod, containers in rendered_pods(settings, ClusterOptions.from_env(env["data"]), runtime):
        roles.append(role)
        for container in containers:
            failures += [f"{role}/{container['name']}: {k} is {v}" for k, v in problems(pod, container).items()]
            failures += [f"{role}/{container['name']}: {p}" for p in scratch_problems(pod, container)]
            if role != "InferenceService predictor":  # its mounts are the runtime's (checked above)
                mounted = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert set(WRITABLE_DIRS.values()) <= mounted, f"{role}: {sorted(mounted)}"
            assert pod["securityContext"]["runAsUser"] == RUN_AS_USER, role
    assert not failures, "\n".join(failures)
    assert len(roles) == 2 + 2 * (2 + 3) + 1


def test_mpi_jobs_use_the_images_non_root_ssh(tmp_path):
    """mpi-operator mounts the job's keys where the MPIJob says (default /root/.ssh, unreadable to the non-root
    user): there, and the images' sshd and ssh agree on the config, the port and where the keys are."""
    settings = Settings(home=tmp_path, lake_uri="s3://kuberec/lake", backend="kubernetes")
    spec = render(HorovodJob("train", "m", workers=2), settings, ClusterOptions())["spec"]
    assert spec["sshAuthMountPath"] == SSH_DIR == f"{USER_HOME}/.ssh"
    worker = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert worker["command"] == ["/usr/sbin/sshd", "-De", "-f", SSHD_CONFIG]
    assert "--allow-run-as-root" not in spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0][
        "command"]
    sshd = (REPO / "images" / "horovod-cpu" / "sshd_config").read_text()
    settings_of = dict(line.split(None, 1) for line in sshd.splitlines() if line and not line.startswith("#"))
    assert settings_of["HostKey"] == f"{SSH_DIR}/id_rsa" and settings_of["PidFile"].startswith("/tmp/")
    assert int(settings_of["Port"]) > 1024  # no capability to bind a privileged port
    for kind in ("horovod-cpu", "horovod-gpu"):
        dockerfile = (REPO / "images" / kind / "Dockerfile").read_text()
        assert f"COPY images/horovod-cpu/sshd_config {SSHD_CONFIG}" in dockerfile, kind
        assert f'echo "    Port {settings_of["Port"]}" >> /etc/ssh/ssh_config' in dockerfile, kind
        assert f'CMD ["/usr/sbin/sshd", "-De", "-f", "{SSHD_CONFIG}"]' in dockerfile, kind


# Images whose final user is root on purpose: build-stage bases that never run in a pod.
BUILD_ONLY_BASES = {"bases/python": "the runtime image's base; runtime sets USER 1000",
                    "bases/maven": "the Spark image's jar-fetching build stage"}


@pytest.mark.parametrize("dockerfile", sorted((REPO / "images").glob("**/Dockerfile")),
                         ids=lambda p: str(p.parent.relative_to(REPO / "images")))
def test_images_run_as_a_numeric_non_root_user(dockerfile):
    """The user an image's final stage runs as is numeric and not root (FROM runtime inherits runtime's 1000):
    what `runAsNonRoot` can check, and what the pods' runAsUser says."""
    name = str(dockerfile.parent.relative_to(REPO / "images"))
    if name in BUILD_ONLY_BASES:
        pytest.skip(BUILD_ONLY_BASES[name])
    final = re.split(r"^FROM ", dockerfile.read_text(), flags=re.M)[-1]
    users = re.findall(r"^USER (\S+)", final, flags=re.M)
    if not users:
        assert final.startswith("runtime"), f"{name}: no USER in the final stage"
        user = re.findall(r"^USER (\S+)", (REPO / "images" / "runtime" / "Dockerfile").read_text(), flags=re.M)[-1]
    else:
        user = users[-1]
    assert user.isdigit() and int(user) != 0, f"{name} runs as {user}"
