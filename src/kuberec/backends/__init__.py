"""Where a step runs: the local backend (this machine) or the Kubernetes backend (custom resources).

This is the package's face for the rest of kuberec: the job types (defined in `kuberec.backends.jobs`), `get_backend`
and `job_home`. Behind it: `local` and `kubernetes` (the two backends), `k8s/` (the custom resources the Kubernetes
backend creates), `commands` (`kuberec k8s ...`), `cluster_access`, and the launchers `horovodrun` and `run_module`.
The modules inside the package import from each other, never from this face.
"""

from __future__ import annotations

from pathlib import Path

from kuberec.backends.jobs import Backend, HorovodJob, JobFailed, RayJob, ServingJob, SparkJob
from kuberec.settings import Settings

__all__ = ["Backend", "HorovodJob", "JobFailed", "RayJob", "ServingJob", "SparkJob", "get_backend", "job_home"]


def job_home(settings: Settings) -> Path:
    """The home directory of the settings' jobs where they run: `settings.home` here, the pod's own home on a
    cluster (a path on this machine means nothing in a pod, and its files go when the pod does)."""
    if settings.backend == "kubernetes":
        from kuberec.backends.k8s.pods import POD_HOME

        return Path(POD_HOME)
    return settings.home


def get_backend(settings: Settings) -> Backend:
    """The backend the settings ask for."""
    if settings.backend == "kubernetes":
        from kuberec.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(settings)
    from kuberec.backends.local import LocalBackend

    return LocalBackend(settings)
