"""How jobs are placed and wired in the cluster: `ClusterOptions`, read from the KUBEREC_K8S_* variables."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from kuberec.errors import KuberecError

# The resource a pod requests GPUs as (and, by default, the taint of the GPU pool's nodes).
GPU_RESOURCE = "nvidia.com/gpu"


class ClusterConfigError(KuberecError):
    """Settings that cannot work in a cluster (a local lake, a bad node selector...)."""


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
