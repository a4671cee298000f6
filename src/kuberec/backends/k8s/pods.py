"""What every pod kuberec renders gets: its environment (settings and Secret references), the security contexts and
writable volumes, resource requests and limits, and the GPU pool's placement.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from kuberec.backends.k8s.options import GPU_RESOURCE, ClusterConfigError, ClusterOptions
from kuberec.settings import Settings, has_credentials, redact_uri

# Settings that only make sense on the submitting machine (its paths, its embedded MLflow server's address).
LOCAL_ONLY_ENV = ("KUBEREC_HOME", "KUBEREC_CACHE", "KUBEREC_CONFIG", "KUBEREC_MLFLOW_HOST")
# Home of kuberec inside the images, an emptyDir in the pods (WRITABLE_DIRS).
POD_HOME = "/var/lib/kuberec"
# Pod security (docs/cluster-guide.md, "Security"): every pod kuberec renders runs as the images' non-root user
# (images/runtime: `useradd --uid 1000 kuberec`), without privilege escalation or capabilities, under the runtime's
# seccomp profile, on a read-only root file system; its programs write only to these emptyDirs: temporary files
# (Python, the JVM, Spark, Ray's session directory, OpenMPI's session directory), kuberec's home (training outputs,
# sweeps, the model server's working files) and the user's home (~/.keras, ~/.cache, ~/.config).
RUN_AS_USER = 1000
USER_HOME = "/home/kuberec"
WRITABLE_DIRS = {"kuberec-tmp": "/tmp", "kuberec-home": POD_HOME, "kuberec-user-home": USER_HOME}
# Keys the pods read from the two Secrets (optional: a MinIO without auth or an open MLflow server works too).
LAKE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
# Addresses only this machine reaches (a pod's loopback is its own).
LOOPBACK = re.compile(r"^https?://(localhost|127\.|\[::1\])")


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
    refuse_credentials(env, options)
    rendered = [{"name": k, "value": v} for k, v in sorted(env.items())]
    for secret, keys in ((options.lake_secret, LAKE_SECRET_KEYS), (options.mlflow_secret, MLFLOW_SECRET_KEYS)):
        rendered += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": True}}}
                     for key in keys]
    return rendered


def refuse_credentials(values: Mapping[str, str], options: ClusterOptions) -> None:
    """Credentials reach pods only through the Secrets: a plain value carrying one (a URI's user:password@) would
    be readable by anyone who can read the resource, and end up in logs."""
    for name, value in values.items():
        if has_credentials(value):
            raise ClusterConfigError(
                f"{name}={redact_uri(value)!r} carries credentials, which would be written into the pods' specs "
                f"in plain text: remove them from it; pods get credentials from the Secrets only "
                f"({options.lake_secret}: {', '.join(LAKE_SECRET_KEYS)}; {options.mlflow_secret}: "
                f"{', '.join(MLFLOW_SECRET_KEYS)})")


def gpu_placement(options: ClusterOptions, gpus: int) -> dict:
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


def container_resources(options: ClusterOptions, cpu: str | int, memory: str, gpus: int = 0) -> dict:
    """Limits as the job asks; requests the options' fraction of them (GPUs are requested whole)."""
    limits = {"cpu": str(cpu), "memory": memory, **({GPU_RESOURCE: str(gpus)} if gpus > 0 else {})}
    if options.request_fraction == 1:
        return {"requests": {"cpu": str(cpu), "memory": memory}, "limits": limits}
    requests = {"cpu": f"{max(1, round(cpu_millis(cpu) * options.request_fraction))}m",
                "memory": _scaled_memory(memory, options.request_fraction)}
    return {"requests": requests, "limits": limits}


def with_shared_memory(pod: dict) -> dict:
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


def secured(pod: dict) -> dict:
    """`pod` (a pod spec) with kuberec's security contexts and, in each container, the writable emptyDirs."""
    pod["securityContext"] = pod_security_context()
    pod["volumes"] = [*pod.get("volumes", []), *writable_volumes()]
    for container in pod["containers"]:
        container["securityContext"] = container_security_context()
        container["volumeMounts"] = [*container.get("volumeMounts", []), *writable_mounts()]
    return pod
