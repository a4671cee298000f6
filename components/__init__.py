"""KFP components: each a thin wrapper that calls one typed step function (`kuberec.<area>.steps`).

A component's body runs in kuberec's runtime image on a cluster (where the step launches its SparkApplication,
MPIJob or RayJob through the Kubernetes backend) and as a local subprocess under the KFP local runner. Bodies must
be self-contained (KFP ships their source), so each imports what it calls.

`configure_for_cluster(task)` gives a task's pod what it needs on Kubeflow Pipelines: kuberec's settings from the
`kuberec-settings` ConfigMap and credentials from the `kuberec-lake` and `kuberec-mlflow` Secrets, as environment,
and its own name (see kuberec.backends.k8s.naming.job_metadata).
The components need no GPU (the MPIJobs and RayJobs they create request GPUs for their own pods), and the service
account that may create those custom resources (`kuberec-runner`) is set per run, not per task: kfp-kubernetes
2.17 has no per-task service account (see pipelines/run.py).
"""

from __future__ import annotations

from kfp import dsl

from kuberec.backends.k8s.naming import POD_NAME_ENV, POD_NAMESPACE_ENV
from kuberec.backends.k8s.options import OPTION_ENV_VARS, ClusterOptions
from kuberec.backends.k8s.pods import LAKE_SECRET_KEYS, LOCAL_ONLY_ENV, MLFLOW_SECRET_KEYS
from kuberec.settings import ENV_VARS, load_settings

RUNTIME_IMAGE = load_settings().image("runtime")
# For a component that trains in its own process (the wide & deep evaluation trains its wide-only and deep-only
# baselines as a Horovod job of size 1): the runtime plus Horovod, the image the MPIJobs run.
TRAINING_IMAGE = load_settings().image("horovod-cpu")
IMAGES = (RUNTIME_IMAGE, TRAINING_IMAGE)

SETTINGS_CONFIG_MAP = "kuberec-settings"
# Keys every cluster's ConfigMap has (manifests/base): a pod without them would not start, rather than silently
# running its step on the local backend inside the pipeline pod.
REQUIRED_SETTINGS = ("KUBEREC_BACKEND", "KUBEREC_LAKE", "KUBEREC_NAMESPACE", "MLFLOW_TRACKING_URI")
# Keys an overlay or the user may set: the other settings and the Kubernetes backend's options.
OPTIONAL_SETTINGS = tuple(sorted(
    ({var for var in ENV_VARS.values() if var not in LOCAL_ONLY_ENV} | set(OPTION_ENV_VARS)) - set(REQUIRED_SETTINGS)))
# The Secrets' names as the manifests create them (compile-time constants: compiling must not depend on this
# machine's environment).
_DEFAULTS = ClusterOptions()
SECRETS = ((_DEFAULTS.lake_secret, LAKE_SECRET_KEYS), (_DEFAULTS.mlflow_secret, MLFLOW_SECRET_KEYS))
POD_LABELS = {"app.kubernetes.io/part-of": "kuberec"}
# The Kubeflow Pipelines run a task belongs to, for the components that create MLflow runs or model versions: they
# tag them with it (kuberec.tracking.pipeline_tags). The KFP local runner fills these in too.
KFP_RUN = {"kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER, "kfp_run_name": dsl.PIPELINE_JOB_NAME_PLACEHOLDER}


def component(func):
    """A lightweight component in kuberec's runtime image (which already has kfp and kuberec installed)."""
    return dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)(func)


def training_component(func):
    """A lightweight component that trains in its own process, in the image with Horovod."""
    return dsl.component(base_image=TRAINING_IMAGE, install_kfp_package=False)(func)


def configure_for_cluster(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Settings (ConfigMap) and credentials (Secrets, optional keys) as the task pod's environment, and kuberec's
    pod label. Returns the task, so a pipeline wraps each call: `trained = configure_for_cluster(train(...))`.
    The KFP local runner ignores all of it (the local process has its own environment).

    Caching is off: every step reads or writes state that KFP does not see (Delta tables, the MLflow registry), so
    a cached result could name a table version or model that has changed since, or skip a registration."""
    from kfp import kubernetes

    task.set_caching_options(False)

    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, {key: key for key in REQUIRED_SETTINGS})
    kubernetes.use_config_map_as_env(task, SETTINGS_CONFIG_MAP, {key: key for key in OPTIONAL_SETTINGS},
                                     optional=True)
    for secret, keys in SECRETS:
        kubernetes.use_secret_as_env(task, secret, {key: key for key in keys}, optional=True)
    for label, value in POD_LABELS.items():
        kubernetes.add_pod_label(task, label, value)
    # The pod's own name, so that the jobs the step creates name it and `kuberec k8s reap` can find them when the
    # pod stops with them unfinished (a terminated run).
    kubernetes.use_field_path_as_env(task, POD_NAMESPACE_ENV, "metadata.namespace")
    kubernetes.use_field_path_as_env(task, POD_NAME_ENV, "metadata.name")
    return task
