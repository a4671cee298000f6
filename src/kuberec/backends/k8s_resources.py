"""What kuberec's custom resources look like: each job type's kind, the resource a job becomes, how to read its status.

SparkJob -> SparkApplication (spark-operator), HorovodJob -> MPIJob (mpi-operator), RayJob -> RayJob (KubeRay),
ServingJob -> InferenceService (KServe). The containers run the same `python -m <module> <args>` as the local
backend, with the settings passed as environment variables and credentials from Secrets.

A resource is a plain dict (the kserve SDK does not co-install with MLServer 1.7.1) built from the job, the `Settings`
and the `ClusterOptions` alone: nothing here talks to a cluster, so `kuberec k8s render` and its tests need no API
server. `kuberec.backends.kubernetes` creates the resources and follows them.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import secrets
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

from kuberec.backends import HorovodJob, RayJob, ServingJob, SparkJob
from kuberec.errors import KuberecError
from kuberec.settings import Settings, has_credentials, redact_uri

# Where the Spark image puts kuberec/backends/run_module.py (spark-submit runs a file, not a module).
SPARK_LAUNCHER = "local:///opt/kuberec/run_module.py"
# The containers of Spark's pod templates, as spark-operator names them to spark-submit.
SPARK_DRIVER_CONTAINER, SPARK_EXECUTOR_CONTAINER = "spark-kubernetes-driver", "spark-kubernetes-executor"
# Settings that only make sense on the submitting machine (its paths, its embedded MLflow server's address).
LOCAL_ONLY_ENV = ("KUBEREC_HOME", "KUBEREC_CACHE", "KUBEREC_CONFIG", "KUBEREC_MLFLOW_HOST")
# Home of kuberec inside the images, an emptyDir in the pods (WRITABLE_DIRS).
POD_HOME = "/var/lib/kuberec"
# On an InferenceService, and (KServe copies it) on its predictor's pods: the model URI each pod serves.
MODEL_URI_ANNOTATION = "kuberec.io/model-uri"
PREDICTOR_LABEL = "serving.kserve.io/inferenceservice"  # KServe's label on the pods of a service's predictor
# Pod security (docs/cluster-guide.md, "Security"): every pod kuberec renders runs as the images' non-root user
# (images/runtime: `useradd --uid 1000 kuberec`), without privilege escalation or capabilities, under the runtime's
# seccomp profile, on a read-only root file system; its programs write only to these emptyDirs: temporary files
# (Python, the JVM, Spark, Ray's session directory, OpenMPI's session directory), kuberec's home (training outputs,
# sweeps, MLServer's metrics files) and the user's home (~/.keras, ~/.cache, ~/.config).
RUN_AS_USER = 1000
USER_HOME = "/home/kuberec"
WRITABLE_DIRS = {"kuberec-tmp": "/tmp", "kuberec-home": POD_HOME, "kuberec-user-home": USER_HOME}
# Non-root sshd for mpi-operator (images/horovod-*): port 2222 (no capability to bind 22), host key and
# authorized_keys from the keys mpi-operator mounts at <home>/.ssh (sshAuthMountPath).
SSHD_CONFIG = "/etc/ssh/kuberec_sshd_config"
SSH_DIR = f"{USER_HOME}/.ssh"
# Keys the pods read from the two Secrets (optional: a MinIO without auth or an open MLflow server works too).
LAKE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
GPU_RESOURCE = "nvidia.com/gpu"
# Addresses only this machine reaches (a pod's loopback is its own).
LOOPBACK = re.compile(r"^https?://(localhost|127\.|\[::1\])")


class ClusterConfigError(KuberecError):
    """Settings that cannot work in a cluster (a local lake, a bad node selector...)."""


# -- options -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Toleration:
    key: str
    effect: str = "NoSchedule"
    value: str = ""  # empty: tolerate any value (operator Exists)

    def to_dict(self) -> dict[str, str]:
        if self.value:
            return {"key": self.key, "operator": "Equal", "value": self.value, "effect": self.effect}
        return {"key": self.key, "operator": "Exists", "effect": self.effect}

    @classmethod
    def parse(cls, text: str) -> Toleration:
        """`key[=value]:Effect`, e.g. `nvidia.com/gpu:NoSchedule` or `pool=gpu:NoExecute`."""
        match = re.fullmatch(r"([^=:\s]+)(?:=([^:\s]*))?:(NoSchedule|PreferNoSchedule|NoExecute)", text.strip())
        if not match:
            raise ClusterConfigError(f"bad toleration {text!r}: write key[=value]:Effect with Effect one of "
                                     f"NoSchedule, PreferNoSchedule, NoExecute")
        return cls(key=match[1], value=match[2] or "", effect=match[3])


def _parse_labels(text: str, what: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClusterConfigError(f"bad {what} {item!r}: write key=value[,key=value...]")
        labels[key] = value
    return labels


# ClusterOptions field -> its variable's suffix after KUBEREC_K8S_.
_PLAIN_OPTIONS = {"spark_service_account": "SPARK_SERVICE_ACCOUNT", "job_service_account": "JOB_SERVICE_ACCOUNT",
                  "serving_service_account": "SERVING_SERVICE_ACCOUNT",
                  "lake_secret": "LAKE_SECRET", "mlflow_secret": "MLFLOW_SECRET",
                  "serving_runtime": "SERVING_RUNTIME", "image_pull_policy": "IMAGE_PULL_POLICY",
                  "on_cancel": "ON_CANCEL", "pod_mlflow_uri": "POD_MLFLOW_URI", "pod_s3_endpoint": "POD_S3_ENDPOINT",
                  "mlflow_artifacts": "MLFLOW_ARTIFACTS"}
_SECONDS_OPTIONS = {"timeout_s": "TIMEOUT", "serving_timeout_s": "SERVING_TIMEOUT"}
_NUMBER_OPTIONS = {**_SECONDS_OPTIONS, "request_fraction": "REQUEST_FRACTION"}
# Every variable ClusterOptions.from_env reads (what a ConfigMap may set for the pods that submit jobs).
OPTION_ENV_VARS: tuple[str, ...] = tuple(sorted(
    f"KUBEREC_K8S_{suffix}" for suffix in
    (*_PLAIN_OPTIONS.values(), *_NUMBER_OPTIONS.values(), "GPU_NODE_SELECTOR", "GPU_TOLERATIONS")))


@dataclass(frozen=True)
class ClusterOptions:
    """How jobs are placed and wired in the cluster. `from_env` reads the KUBEREC_K8S_* variables, which the
    manifests' `kuberec-settings` ConfigMap sets for pods that submit jobs (the GPU overlay sets the pool)."""

    # Least privilege: Spark drivers create their executor pods; MPI and Ray pods need no API access at all.
    spark_service_account: str = "kuberec-spark"
    job_service_account: str = "kuberec-job"
    serving_service_account: str = "kuberec-serving"
    lake_secret: str = "kuberec-lake"
    mlflow_secret: str = "kuberec-mlflow"
    serving_runtime: str = "kuberec-mlflow"
    gpu_node_selector: Mapping[str, str] = field(default_factory=lambda: {"kuberec.io/pool": "gpu"})
    gpu_tolerations: tuple[Toleration, ...] = (Toleration(GPU_RESOURCE),)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    on_cancel: Literal["delete", "keep"] = "delete"
    timeout_s: float = 12 * 3600  # training runs for hours; this only guards against a job stuck forever
    serving_timeout_s: float = 15 * 60
    launcher_cpu: str = "500m"
    launcher_memory: str = "1Gi"
    # Requests as a fraction of the limits (CPU and memory; GPUs are never shared): 1 reserves what a job may use;
    # a small node (the local overlay) takes less so that a whole job fits, its pods sharing the cores.
    request_fraction: float = 1.0
    # What the job pods use where the submitting process reaches MLflow or the object store another way (a
    # workstation's `kubectl port-forward` to localhost); empty: the same as the settings.
    pod_mlflow_uri: str = ""
    pod_s3_endpoint: str = ""
    # The tracking server's --artifacts-destination (manifests/base/mlflow.yaml): where a registered model's files
    # are for KServe, which reads the object store directly.
    mlflow_artifacts: str = "s3://mlflow/artifacts"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClusterOptions:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, suffix in _PLAIN_OPTIONS.items():
            if env.get(f"KUBEREC_K8S_{suffix}"):
                values[name] = env[f"KUBEREC_K8S_{suffix}"]
        for name, suffix in _NUMBER_OPTIONS.items():
            if env.get(f"KUBEREC_K8S_{suffix}"):
                try:
                    values[name] = float(env[f"KUBEREC_K8S_{suffix}"])
                except ValueError:
                    what = "a number of seconds" if name in _SECONDS_OPTIONS else "a number"
                    raise ClusterConfigError(f"KUBEREC_K8S_{suffix} must be {what}, "
                                             f"not {env[f'KUBEREC_K8S_{suffix}']!r}") from None
        if "KUBEREC_K8S_GPU_NODE_SELECTOR" in env:
            values["gpu_node_selector"] = _parse_labels(env["KUBEREC_K8S_GPU_NODE_SELECTOR"], "node selector")
        if "KUBEREC_K8S_GPU_TOLERATIONS" in env:
            values["gpu_tolerations"] = tuple(
                Toleration.parse(t) for t in env["KUBEREC_K8S_GPU_TOLERATIONS"].split(",") if t.strip())
        return cls(**values)

    def __post_init__(self) -> None:
        if self.on_cancel not in ("delete", "keep"):
            raise ClusterConfigError(f"KUBEREC_K8S_ON_CANCEL must be delete or keep, not {self.on_cancel!r}")
        if not 0 < self.request_fraction <= 1:
            raise ClusterConfigError(f"KUBEREC_K8S_REQUEST_FRACTION must be in (0, 1], not {self.request_fraction}")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise ClusterConfigError(f"KUBEREC_K8S_IMAGE_PULL_POLICY must be Always, IfNotPresent or Never, "
                                     f"not {self.image_pull_policy!r}")
        if self.timeout_s <= 0 or self.serving_timeout_s <= 0:
            raise ClusterConfigError("KUBEREC_K8S_TIMEOUT and KUBEREC_K8S_SERVING_TIMEOUT must be positive")


# -- the kinds and how to read their status --------------------------------------------------------------------
@dataclass(frozen=True)
class Progress:
    state: str  # what `kubectl get` would show as the phase
    detail: str = ""
    succeeded: bool = False
    failed: bool = False
    message: str = ""  # the operator's own words when failed


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str
    version: str
    plural: str
    progress: Callable[[dict], Progress]
    # Label selector of the pod whose log holds the program's own error line (the Spark driver, the MPI launcher,
    # the Ray job's submitter), given the resource's name; None: no such pod.
    program_pod: Callable[[str], str] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def _counts(states: Mapping[str, Any]) -> str:
    tally: dict[str, int] = {}
    for state in states.values():
        tally[str(state)] = tally.get(str(state), 0) + 1
    return ", ".join(f"{n} {state.lower()}" for state, n in sorted(tally.items()))


def spark_progress(obj: dict) -> Progress:
    """spark-operator: status.applicationState.state; COMPLETED and FAILED are final (a failed submission
    becomes FAILED once its retries are used up)."""
    status = obj.get("status") or {}
    app = status.get("applicationState") or {}
    state = app.get("state") or "NEW"
    executors = _counts(status.get("executorState") or {})
    detail = f"executors: {executors}" if executors else ""
    if state == "COMPLETED":
        return Progress(state, detail, succeeded=True)
    if state == "FAILED":
        return Progress(state, detail, failed=True, message=app.get("errorMessage") or "no error message")
    return Progress(state, detail)


def mpijob_progress(obj: dict) -> Progress:
    """mpi-operator v2: conditions Created/Running/Restarting/Succeeded/Suspended/Failed, final when Succeeded
    or Failed is True; status.replicaStatuses counts launcher and worker pods."""
    status = obj.get("status") or {}
    true = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    by_type = {c.get("type"): c for c in true}
    replicas = status.get("replicaStatuses") or {}
    detail = "; ".join(
        f"{role.lower()}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if isinstance(v, int))
        for role, counts in sorted(replicas.items()) if counts)
    if "Failed" in by_type:
        cond = by_type["Failed"]
        return Progress("Failed", detail, failed=True,
                        message=f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": "))
    if "Succeeded" in by_type:
        return Progress("Succeeded", detail, succeeded=True)
    # The newest true condition is the current phase (Running after Created, Restarting after Running...).
    latest = max(true, key=lambda c: c.get("lastTransitionTime") or "", default=None)
    return Progress(latest["type"] if latest else "Pending", detail)


def rayjob_progress(obj: dict) -> Progress:
    """KubeRay: status.jobDeploymentStatus (Complete/Failed final) and status.jobStatus (SUCCEEDED/FAILED/
    STOPPED); a Complete deployment whose job did not succeed is a failure."""
    status = obj.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or "New"
    job = status.get("jobStatus") or ""
    detail = f"job {job}" if job else ""
    message = ": ".join(x for x in (status.get("reason"), status.get("message")) if x)
    if deployment == "Failed":
        return Progress(deployment, detail, failed=True, message=message or f"job status {job or 'unknown'}")
    if deployment == "Complete":
        if job == "SUCCEEDED":
            return Progress(deployment, detail, succeeded=True)
        return Progress(deployment, detail, failed=True, message=message or f"job status {job or 'unknown'}")
    return Progress(deployment, detail)


def inferenceservice_progress(obj: dict) -> Progress:
    """KServe: ready when the Ready condition is True for the current generation (observedGeneration >=
    metadata.generation). KServe writes no Failed condition: a failed model load shows as
    modelStatus.transitionStatus BlockedByFailedLoad or InvalidSpec with lastFailureInfo; else it never gets ready."""
    status = obj.get("status") or {}
    current = (status.get("observedGeneration") or 0) >= (obj.get("metadata", {}).get("generation") or 0)
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    model = status.get("modelStatus") or {}
    transition = model.get("transitionStatus") or ""
    active = (model.get("states") or {}).get("activeModelState") or ""
    detail = ", ".join(x for x in (f"model {active}" if active else "", transition,
                                   f"url {status['url']}" if status.get("url") else "") if x)
    if not current:
        return Progress("Reconciling", detail)
    if transition in ("BlockedByFailedLoad", "InvalidSpec"):
        failure = model.get("lastFailureInfo") or {}
        message = ": ".join(x for x in (failure.get("reason"), failure.get("message")) if x)
        return Progress(transition, detail, failed=True, message=message or transition)
    if ready.get("status") == "True":
        return Progress("Ready", detail, succeeded=True)
    reason = ready.get("reason") or ready.get("message") or ""
    return Progress(f"NotReady ({reason})" if reason else "NotReady", detail)


SPARK_APPLICATION = Kind("SparkApplication", "sparkoperator.k8s.io", "v1beta2", "sparkapplications", spark_progress,
                         lambda name: f"sparkoperator.k8s.io/app-name={name},spark-role=driver")
MPIJOB = Kind("MPIJob", "kubeflow.org", "v2beta1", "mpijobs", mpijob_progress,
              lambda name: f"training.kubeflow.org/job-name={name},training.kubeflow.org/job-role=launcher")
RAYJOB = Kind("RayJob", "ray.io", "v1", "rayjobs", rayjob_progress, lambda name: f"job-name={name}")
INFERENCE_SERVICE = Kind("InferenceService", "serving.kserve.io", "v1beta1", "inferenceservices",
                         inferenceservice_progress)
KINDS: dict[str, Kind] = {k.kind: k for k in (SPARK_APPLICATION, MPIJOB, RAYJOB, INFERENCE_SERVICE)}


# -- naming --------------------------------------------------------------------------------------------------
def dns_label(text: str, max_len: int) -> str:
    """A DNS-1035 label from free text: lowercase alphanumerics and '-', starting with a letter."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if not name or not name[0].isalpha():
        name = f"k-{name}".rstrip("-")
    return name[:max_len].rstrip("-")


def run_name(job_name: str) -> str:
    """A fresh resource name per run: the step name plus a random suffix. 40 characters leaves room for the
    suffixes operators add to pod and service names (RayJob names are limited to 47)."""
    return f"{dns_label(job_name, 33)}-{secrets.token_hex(3)}"


# -- rendering -------------------------------------------------------------------------------------------------
def pod_env(settings: Settings, options: ClusterOptions) -> list[dict]:
    """Settings as environment for the pods (without the submitting machine's paths) plus credentials."""
    namespace = settings.namespace
    env = {k: v for k, v in settings.to_env().items() if k not in LOCAL_ONLY_ENV}
    if settings.lake_is_local:
        raise ClusterConfigError(
            f"the lake {settings.lake_uri!r} is a local path that pods cannot read; set KUBEREC_LAKE to "
            f"an s3:// location (and KUBEREC_S3_ENDPOINT for MinIO)")
    tracking = options.pod_mlflow_uri or settings.mlflow_tracking_uri
    if not tracking:
        # The tracking server the manifests install in the namespace.
        tracking = f"http://mlflow.{namespace}.svc.cluster.local:5000"
    elif re.match(r"^(file:|sqlite:|/|\.)", tracking) or LOOPBACK.match(tracking):
        raise ClusterConfigError(
            f"MLFLOW_TRACKING_URI={redact_uri(tracking)!r} is only reachable from this machine; point it at the "
            f"cluster's tracking server (e.g. http://mlflow.{namespace}.svc.cluster.local:5000), unset "
            f"it to use that default, or, if this machine reaches it through a port-forward, tell the pods "
            f"its in-cluster address with KUBEREC_K8S_POD_MLFLOW_URI")
    s3_endpoint = options.pod_s3_endpoint or settings.s3_endpoint
    if LOOPBACK.match(s3_endpoint):
        raise ClusterConfigError(
            f"KUBEREC_S3_ENDPOINT={redact_uri(s3_endpoint)!r} is only reachable from this machine; point it at the "
            f"cluster's object store (e.g. http://minio.{namespace}.svc.cluster.local:9000) or, if this "
            f"machine reaches it through a port-forward, tell the pods its in-cluster address with "
            f"KUBEREC_K8S_POD_S3_ENDPOINT")
    if s3_endpoint:
        env["KUBEREC_S3_ENDPOINT"] = s3_endpoint
    env.update({"MLFLOW_TRACKING_URI": tracking, "KUBEREC_HOME": POD_HOME,
                # The pod runs the step itself; it must not submit it to the cluster again.
                "KUBEREC_BACKEND": "local", "PYTHONUNBUFFERED": "1"})
    _refuse_credentials(env, options)
    rendered = [{"name": k, "value": v} for k, v in sorted(env.items())]
    for secret, keys in ((options.lake_secret, LAKE_SECRET_KEYS), (options.mlflow_secret, MLFLOW_SECRET_KEYS)):
        rendered += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
                     for key in keys]
    return rendered


def _refuse_credentials(values: Mapping[str, str], options: ClusterOptions) -> None:
    """Credentials reach pods only through the Secrets: a plain value carrying one (a URI's user:password@) would
    be readable by anyone who can read the resource, and end up in logs."""
    for name, value in values.items():
        if has_credentials(value):
            raise ClusterConfigError(
                f"{name}={redact_uri(value)!r} carries credentials, which would be written into the pods' specs "
                f"in plain text: remove them from it; pods get credentials from the Secrets only "
                f"({options.lake_secret}: {', '.join(LAKE_SECRET_KEYS)}; {options.mlflow_secret}: "
                f"{', '.join(MLFLOW_SECRET_KEYS)})")


def _metadata(settings: Settings, name: str, step: str) -> dict:
    return {"name": name, "namespace": settings.namespace, "labels": _labels(settings, step)}


def _labels(settings: Settings, step: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "kuberec", "app.kubernetes.io/managed-by": "kuberec",
            "app.kubernetes.io/version": _label_value(settings.image_tag),
            "kuberec.io/step": _label_value(step)}


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return value.strip("-_.")


def _placement(options: ClusterOptions, gpus: int) -> dict:
    """Node selector and tolerations of the GPU pool, only for pods that ask for GPUs."""
    if gpus <= 0:
        return {}
    placement: dict[str, Any] = {}
    if options.gpu_node_selector:
        placement["nodeSelector"] = dict(options.gpu_node_selector)
    if options.gpu_tolerations:
        placement["tolerations"] = [t.to_dict() for t in options.gpu_tolerations]
    return placement


_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_MEMORY_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                 "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def cpu_millis(quantity: str | int) -> int:
    """A Kubernetes CPU quantity (`2`, `0.5`, `500m`) in millicores."""
    match = _CPU.match(str(quantity))
    if not match:
        raise ClusterConfigError(f"bad CPU quantity {quantity!r}: write cores (2, 0.5) or millicores (500m)")
    return round(float(match[1]) * (1 if match[2] else 1000))


def _scaled_memory(quantity: str, fraction: float) -> str:
    match = _MEMORY.match(quantity)
    if not match:
        raise ClusterConfigError(f"bad memory quantity {quantity!r}: write e.g. 8Gi, 512Mi or 2G")
    return f"{max(1, int(float(match[1]) * _MEMORY_UNITS[match[2]] * fraction / 2**20))}Mi"


def _resources(options: ClusterOptions, cpu: str | int, memory: str, gpus: int = 0) -> dict:
    """Limits as the job asks; requests the options' fraction of them (GPUs are requested whole)."""
    limits = {"cpu": str(cpu), "memory": memory, **({GPU_RESOURCE: str(gpus)} if gpus > 0 else {})}
    if options.request_fraction == 1:
        return {"requests": {"cpu": str(cpu), "memory": memory}, "limits": limits}
    requests = {"cpu": f"{max(1, round(cpu_millis(cpu) * options.request_fraction))}m",
                "memory": _scaled_memory(memory, options.request_fraction)}
    return {"requests": requests, "limits": limits}


def _with_shared_memory(pod: dict) -> dict:
    """Mount a memory-backed /dev/shm in the pod's first container (a container's default is 64 MiB)."""
    pod["volumes"] = [*pod.get("volumes", []), {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    container = pod["containers"][0]
    container["volumeMounts"] = [*container.get("volumeMounts", []), {"name": "dshm", "mountPath": "/dev/shm"}]
    return pod


def pod_security_context() -> dict:
    """The pod-level part of kuberec's pod security (see RUN_AS_USER); fsGroup makes mounted volumes its group's."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict:
    """The container-level part: the same user, no privilege escalation, no capabilities, read-only root."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER,
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
            "seccompProfile": {"type": "RuntimeDefault"}}


def writable_volumes() -> list[dict]:
    return [{"name": name, "emptyDir": {}} for name in WRITABLE_DIRS]


def writable_mounts() -> list[dict]:
    return [{"name": name, "mountPath": path} for name, path in WRITABLE_DIRS.items()]


def _secured(pod: dict) -> dict:
    """`pod` (a pod spec) with kuberec's security contexts and, in each container, the writable emptyDirs."""
    pod["securityContext"] = pod_security_context()
    pod["volumes"] = [*pod.get("volumes", []), *writable_volumes()]
    for container in pod["containers"]:
        container["securityContext"] = container_security_context()
        container["volumeMounts"] = [*container.get("volumeMounts", []), *writable_mounts()]
    return pod


def _version(dist: str) -> str:
    """The pinned version of a distribution: the images install the same pins, so CRs name the same version."""
    return importlib.metadata.version(dist)


def _spark_env_conf(env: list[dict], options: ClusterOptions) -> dict[str, str]:
    """The pods' environment as Spark's own properties, which spark-submit applies to the driver and executor pods
    itself: spark-operator applies a SparkApplication's `env` only through its mutating webhook, which a cluster may
    not run. Spark cannot mark a secret optional, so only the lake Secret (the jobs read the lake) is referenced."""
    conf = {}
    for entry in env:
        name = entry["name"]
        if "value" in entry:
            conf[f"spark.kubernetes.driverEnv.{name}"] = conf[f"spark.executorEnv.{name}"] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        if ref["name"] == options.lake_secret:
            reference = f"{ref['name']}:{ref['key']}"
            conf[f"spark.kubernetes.driver.secretKeyRef.{name}"] = reference
            conf[f"spark.kubernetes.executor.secretKeyRef.{name}"] = reference
    return conf


def render_spark(job: SparkJob, settings: Settings, options: ClusterOptions) -> dict:
    """SparkApplication running `run_module.py <module> <args>` in cluster mode on the Spark image (Delta and
    hadoop-aws jars on its classpath); kuberec.lake.spark.spark_session reads the s3a settings from the env."""
    env = [*pod_env(settings, options), {"name": "KUBEREC_DELTA_ON_CLASSPATH", "value": "1"}]
    common = {"labels": _labels(settings, job.name), "serviceAccount": options.spark_service_account}

    def core_request(cores: int) -> dict:  # Spark's pods request their cores unless told less
        if options.request_fraction == 1:
            return {}
        return {"coreRequest": f"{max(1, round(cores * 1000 * options.request_fraction))}m"}

    def template(container: str) -> dict:
        # spark-operator hands it to spark-submit as a pod template file, which Spark starts the pod from: no
        # webhook needed (driver.securityContext and the like are applied only by spark-operator's webhook).
        return {"spec": _secured({"containers": [{"name": container}]})}

    return {
        "apiVersion": SPARK_APPLICATION.api_version, "kind": SPARK_APPLICATION.kind,
        "metadata": _metadata(settings, run_name(job.name), job.name),
        "spec": {
            "type": "Python", "pythonVersion": "3", "mode": "cluster",
            "image": settings.image("spark"), "imagePullPolicy": options.image_pull_policy,
            "mainApplicationFile": SPARK_LAUNCHER, "arguments": [job.module, *job.args],
            "sparkVersion": _version("pyspark"),
            "sparkConf": _spark_env_conf(env, options),
            # One attempt: kuberec steps are idempotent, and the caller decides whether to rerun.
            "restartPolicy": {"type": "Never"},
            "driver": {**common, "cores": 1, "memory": job.driver_memory, **core_request(1),
                       "template": template(SPARK_DRIVER_CONTAINER)},
            "executor": {**common, "instances": job.executors, "cores": job.executor_cores,
                         "memory": job.executor_memory, **core_request(job.executor_cores),
                         "template": template(SPARK_EXECUTOR_CONTAINER)},
        },
    }


def render_horovod(job: HorovodJob, settings: Settings, options: ClusterOptions) -> dict:
    """MPIJob: a launcher running `mpirun ... python -m <module> <args>` over `workers` pods with
    `slots_per_worker` ranks each; GPU workers get nvidia.com/gpu limits and the GPU pool's placement."""
    env = pod_env(settings, options)
    image = settings.image("horovod-gpu" if job.gpus_per_worker > 0 else "horovod-cpu")
    ranks = job.workers * job.slots_per_worker
    # Workers are reached over ssh, which starts processes with a clean environment: forward ours with -x.
    forwarded = [arg for var in ("PATH", "LD_LIBRARY_PATH", *(e["name"] for e in env)) for arg in ("-x", var)]
    launcher_command = ["mpirun", "-np", str(ranks), "-bind-to", "none",
                        "-map-by", "slot", *forwarded, "python", "-m", job.module, *job.args]
    labels = _labels(settings, job.name)
    worker_pod: dict[str, Any] = {
        "serviceAccountName": options.job_service_account,
        "containers": [{
            "name": "worker", "image": image, "imagePullPolicy": options.image_pull_policy,
            # mpi-operator v2 reaches workers over ssh; the image's sshd serves it as the non-root user.
            "command": ["/usr/sbin/sshd", "-De", "-f", SSHD_CONFIG], "env": env,
            "resources": _resources(options, job.cpu_per_worker, job.memory_per_worker,
                                    job.gpus_per_worker),
        }],
        **_placement(options, job.gpus_per_worker),
    }
    if job.gpus_per_worker > 0:
        _with_shared_memory(worker_pod)  # NCCL needs more than a container's default 64 MiB
    _secured(worker_pod)
    launcher_pod = _secured({"serviceAccountName": options.job_service_account, "containers": [{
        "name": "launcher", "image": image, "imagePullPolicy": options.image_pull_policy,
        "command": launcher_command, "env": env,
        "resources": _resources(options, options.launcher_cpu, options.launcher_memory),
    }]})
    return {
        "apiVersion": MPIJOB.api_version, "kind": MPIJOB.kind,
        "metadata": _metadata(settings, run_name(job.name), job.name),
        "spec": {
            "slotsPerWorker": job.slots_per_worker,
            "mpiImplementation": "OpenMPI",
            # Start mpirun only once every worker's sshd is up (else the first connection can fail).
            "launcherCreationPolicy": "WaitForWorkersReady",
            # The keys go where the non-root user's ssh and sshd read them (the default is /root/.ssh).
            "sshAuthMountPath": SSH_DIR,
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0},
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "Never", "template": {
                    "metadata": {"labels": labels}, "spec": launcher_pod}},
                "Worker": {"replicas": job.workers, "restartPolicy": "Never",
                           "template": {"metadata": {"labels": labels}, "spec": worker_pod}},
            },
        },
    }


def render_ray(job: RayJob, settings: Settings, options: ClusterOptions) -> dict:
    """RayJob: a Ray cluster (head + one worker group) whose driver runs `python -m <module> <args>`;
    KubeRay deletes the cluster when the job finishes."""
    env = pod_env(settings, options)
    labels = _labels(settings, job.name)

    def container(role: str, gpus: int) -> dict:
        # Trials train with the pipeline's training code, which runs under Horovod: the Horovod images.
        image = settings.image("horovod-gpu" if gpus > 0 else "horovod-cpu")
        return {"name": f"ray-{role}", "image": image, "imagePullPolicy": options.image_pull_policy,
                "env": env, "resources": _resources(options, job.cpus_per_worker, job.memory_per_worker, gpus)}

    # Ray's object store lives in /dev/shm (else it falls back to slower /tmp).
    head = _secured(_with_shared_memory({"serviceAccountName": options.job_service_account,
                                         "containers": [container("head", 0)]}))
    head["containers"][0]["ports"] = [{"containerPort": 6379, "name": "gcs"},
                                      {"containerPort": 8265, "name": "dashboard"},
                                      {"containerPort": 10001, "name": "client"}]
    worker = _secured(_with_shared_memory({"serviceAccountName": options.job_service_account,
                                           "containers": [container("worker", job.gpus_per_worker)],
                                           **_placement(options, job.gpus_per_worker)}))
    # The pod that runs `ray job submit` (KubeRay fills in the command): secured like the others, and sized by
    # the options rather than KubeRay's default 500m request.
    submitter = _secured({"restartPolicy": "Never", "serviceAccountName": options.job_service_account,
                          "containers": [{"name": "ray-job-submitter", "image": head["containers"][0]["image"],
                                          "imagePullPolicy": options.image_pull_policy,
                                          "resources": _resources(options, options.launcher_cpu,
                                                                  options.launcher_memory)}]})
    return {
        "apiVersion": RAYJOB.api_version, "kind": RAYJOB.kind,
        "metadata": _metadata(settings, run_name(job.name), job.name),
        "spec": {
            "entrypoint": shlex.join(["python", "-m", job.module, *job.args]),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 60,
            "backoffLimit": 0,
            "submitterPodTemplate": {"metadata": {"labels": labels}, "spec": submitter},
            "rayClusterSpec": {
                "rayVersion": _version("ray"),
                "headGroupSpec": {
                    # No trials on the head: it runs the driver and the GCS.
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": {"metadata": {"labels": labels}, "spec": head},
                },
                "workerGroupSpecs": [{
                    "groupName": "workers", "replicas": job.workers, "minReplicas": job.workers,
                    "maxReplicas": job.workers, "rayStartParams": {},
                    "template": {"metadata": {"labels": labels}, "spec": worker},
                }],
            },
        },
    }


def render_inference_service(job: ServingJob, settings: Settings, options: ClusterOptions) -> dict:
    """InferenceService serving an MLflow model over the V2 protocol on kuberec's ClusterServingRuntime.
    The name is stable (the service's), so deploying again rolls out a new version."""
    model: dict[str, Any] = {
        "modelFormat": {"name": "mlflow"}, "protocolVersion": "v2", "storageUri": job.model_uri,
        "runtime": options.serving_runtime,
    }
    if job.extra:  # extra model settings for the runtime (e.g. KUBEREC_TOP_K) as environment
        model["env"] = [{"name": k, "value": str(v)} for k, v in sorted(job.extra.items())]
    _refuse_credentials({"storageUri": job.model_uri, **{k: str(v) for k, v in job.extra.items()}}, options)
    # The runtime (manifests/base/servingruntime.yaml) adds the writable emptyDirs its server needs.
    model["securityContext"] = container_security_context()
    metadata = _metadata(settings, dns_label(job.name, 45), job.name)
    metadata["annotations"] = {MODEL_URI_ANNOTATION: job.model_uri}
    return {
        "apiVersion": INFERENCE_SERVICE.api_version, "kind": INFERENCE_SERVICE.kind,
        "metadata": metadata,
        "spec": {"predictor": {
            "serviceAccountName": options.serving_service_account,
            "securityContext": pod_security_context(),
            "minReplicas": job.min_replicas, "maxReplicas": job.max_replicas,
            "model": model,
        }},
    }


_RENDERERS: dict[type, Callable[[Any, Settings, ClusterOptions], dict]] = {
    SparkJob: render_spark, HorovodJob: render_horovod, RayJob: render_ray, ServingJob: render_inference_service}


def render(job: SparkJob | HorovodJob | RayJob | ServingJob, settings: Settings, options: ClusterOptions) -> dict:
    """The custom resource for any job type."""
    return _RENDERERS[type(job)](job, settings, options)
