"""The jobs a step runs as: each a typed description (module + arguments + resources) that a backend turns into
processes (local) or a custom resource (Kubernetes). The module is always a `python -m` entrypoint of kuberec, so the
code that runs is the same everywhere, and a job that fails raises the same JobFailed on either backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kuberec.errors import KuberecError
from kuberec.settings import Settings


class JobFailed(KuberecError):
    """A step's job failed: its process exited with an error (local: its own output above says why) or the operator
    reported its resource as failed (Kubernetes: the message is the operator's)."""


@dataclass(frozen=True)
class SparkJob:
    """A Spark job: `python -m <module> <args>` on a driver with a SparkSession (kuberec.lake.spark.spark_session)."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    executors: int = 2
    executor_cores: int = 1
    executor_memory: str = "2g"
    driver_memory: str = "2g"


@dataclass(frozen=True)
class HorovodJob:
    """Data-parallel training: `workers` processes of `python -m <module> <args>` joined by Horovod."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    workers: int = 1
    slots_per_worker: int = 1
    gpus_per_worker: int = 0
    cpu_per_worker: str = "2"
    memory_per_worker: str = "8Gi"


@dataclass(frozen=True)
class RayJob:
    """A Ray program (a Tune sweep): `python -m <module> <args>` as the driver of a Ray cluster."""

    name: str
    module: str
    args: tuple[str, ...] = ()
    workers: int = 1
    cpus_per_worker: int = 2
    gpus_per_worker: int = 0
    memory_per_worker: str = "8Gi"


@dataclass(frozen=True)
class ServingJob:
    """A registered MLflow model served over the Open Inference Protocol (V2)."""

    name: str
    model_uri: str  # storage URI of the MLflow model directory (s3://... in a cluster, a path locally)
    min_replicas: int = 1
    max_replicas: int = 1
    cpu_target: int = 80  # between min and max replicas: the pods' CPU, percent of their request (KServe's default)
    extra: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    settings: Settings

    def run_spark(self, job: SparkJob) -> None: ...

    def run_horovod(self, job: HorovodJob) -> None: ...

    def run_ray(self, job: RayJob) -> None: ...
