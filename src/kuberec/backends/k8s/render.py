"""The custom resource each job becomes: a SparkApplication, an MPIJob, a RayJob, or (`serving`) an
InferenceService. `render` takes any of them.
"""

from __future__ import annotations

import importlib.metadata
import shlex
from typing import Any, Callable

from kuberec.backends.jobs import HorovodJob, RayJob, ServingJob, SparkJob
from kuberec.backends.k8s.kinds import MPIJOB, RAYJOB, SPARK_APPLICATION
from kuberec.backends.k8s.naming import job_metadata, resource_labels
from kuberec.backends.k8s.options import ClusterOptions
from kuberec.backends.k8s.pods import (
    USER_HOME,
    container_resources,
    gpu_placement,
    pod_env,
    secured,
    with_shared_memory,
)
from kuberec.backends.k8s.serving import render_inference_service
from kuberec.settings import Settings

# Where the Spark image puts kuberec/backends/run_module.py (spark-submit runs a file, not a module).
SPARK_LAUNCHER = "local:///opt/kuberec/run_module.py"
# The containers of Spark's pod templates, as spark-operator names them to spark-submit.
SPARK_DRIVER_CONTAINER, SPARK_EXECUTOR_CONTAINER = "spark-kubernetes-driver", "spark-kubernetes-executor"
# Non-root sshd for mpi-operator (images/horovod-*): port 2222 (no capability to bind 22), host key and
# authorized_keys from the keys mpi-operator mounts at <home>/.ssh (sshAuthMountPath).
SSHD_CONFIG = "/etc/ssh/kuberec_sshd_config"
SSH_DIR = f"{USER_HOME}/.ssh"


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
    common = {"labels": resource_labels(settings, job.name), "serviceAccount": options.spark_service_account}

    def core_request(cores: int) -> dict:  # Spark's pods request their cores unless told less
        if options.request_fraction == 1:
            return {}
        return {"coreRequest": f"{max(1, round(cores * 1000 * options.request_fraction))}m"}

    def template(container: str) -> dict:
        # spark-operator hands it to spark-submit as a pod template file, which Spark starts the pod from: no
        # webhook needed (driver.securityContext and the like are applied only by spark-operator's webhook).
        return {"spec": secured({"containers": [{"name": container}]})}

    return {
        "apiVersion": SPARK_APPLICATION.api_version, "kind": SPARK_APPLICATION.kind,
        "metadata": job_metadata(settings, job.name),
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
    labels = resource_labels(settings, job.name)
    worker_pod: dict[str, Any] = {
        "serviceAccountName": options.job_service_account,
        "containers": [{
            "name": "worker", "image": image, "imagePullPolicy": options.image_pull_policy,
            # mpi-operator v2 reaches workers over ssh; the image's sshd serves it as the non-root user.
            "command": ["/usr/sbin/sshd", "-De", "-f", SSHD_CONFIG], "env": env,
            "resources": container_resources(options, job.cpu_per_worker, job.memory_per_worker,
                                    job.gpus_per_worker),
        }],
        **gpu_placement(options, job.gpus_per_worker),
    }
    if job.gpus_per_worker > 0:
        with_shared_memory(worker_pod)  # NCCL needs more than a container's default 64 MiB
    secured(worker_pod)
    launcher_pod = secured({"serviceAccountName": options.job_service_account, "containers": [{
        "name": "launcher", "image": image, "imagePullPolicy": options.image_pull_policy,
        "command": launcher_command, "env": env,
        "resources": container_resources(options, options.launcher_cpu, options.launcher_memory),
    }]})
    return {
        "apiVersion": MPIJOB.api_version, "kind": MPIJOB.kind,
        "metadata": job_metadata(settings, job.name),
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
    labels = resource_labels(settings, job.name)

    def container(role: str, gpus: int) -> dict:
        # Trials train with the pipeline's training code, which runs under Horovod: the Horovod images.
        image = settings.image("horovod-gpu" if gpus > 0 else "horovod-cpu")
        return {"name": f"ray-{role}", "image": image, "imagePullPolicy": options.image_pull_policy,
                "env": env, "resources": container_resources(options, job.cpus_per_worker, job.memory_per_worker, gpus)}

    # Ray's object store lives in /dev/shm (else it falls back to slower /tmp).
    head = secured(with_shared_memory({"serviceAccountName": options.job_service_account,
                                         "containers": [container("head", 0)]}))
    head["containers"][0]["ports"] = [{"containerPort": 6379, "name": "gcs"},
                                      {"containerPort": 8265, "name": "dashboard"},
                                      {"containerPort": 10001, "name": "client"}]
    worker = secured(with_shared_memory({"serviceAccountName": options.job_service_account,
                                           "containers": [container("worker", job.gpus_per_worker)],
                                           **gpu_placement(options, job.gpus_per_worker)}))
    # The pod that runs `ray job submit` (KubeRay fills in the command): secured like the others, and sized by
    # the options rather than KubeRay's default 500m request.
    submitter = secured({"restartPolicy": "Never", "serviceAccountName": options.job_service_account,
                          "containers": [{"name": "ray-job-submitter", "image": head["containers"][0]["image"],
                                          "imagePullPolicy": options.image_pull_policy,
                                          "resources": container_resources(options, options.launcher_cpu,
                                                                  options.launcher_memory)}]})
    return {
        "apiVersion": RAYJOB.api_version, "kind": RAYJOB.kind,
        "metadata": job_metadata(settings, job.name),
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


_RENDERERS: dict[type, Callable[[Any, Settings, ClusterOptions], dict]] = {
    SparkJob: render_spark, HorovodJob: render_horovod, RayJob: render_ray, ServingJob: render_inference_service}


def render(job: SparkJob | HorovodJob | RayJob | ServingJob, settings: Settings, options: ClusterOptions) -> dict:
    """The custom resource for any job type."""
    return _RENDERERS[type(job)](job, settings, options)
