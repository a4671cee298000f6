"""Names and labels of the resources kuberec creates: DNS-safe names, a fresh name per run, and the labels that
mark every resource and pod as kuberec's and say which step made it."""

from __future__ import annotations

import os
import re
import secrets

from kuberec.settings import Settings


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


def resource_metadata(settings: Settings, name: str, step: str) -> dict:
    return {"name": name, "namespace": settings.namespace, "labels": resource_labels(settings, step)}


# The pod a step runs in, when it runs in one: `configure_for_cluster` gives Kubeflow Pipelines task pods their own
# namespace and name (Downward API) in these variables. Each job the step creates is annotated with the pod, so that
# `kuberec k8s reap` can delete the jobs whose step's pod has ended: a terminated KFP run stops its pods before the
# steps can delete the jobs they were waiting for.
POD_NAMESPACE_ENV = "KUBEREC_POD_NAMESPACE"
POD_NAME_ENV = "KUBEREC_POD_NAME"
CREATED_BY_POD = "kuberec.io/created-by-pod"


def job_metadata(settings: Settings, step: str) -> dict:
    """A job's metadata: a fresh name, kuberec's labels and, from a pod, the pod it was created from."""
    metadata = resource_metadata(settings, run_name(step), step)
    namespace, pod = os.environ.get(POD_NAMESPACE_ENV), os.environ.get(POD_NAME_ENV)
    if namespace and pod:
        metadata["annotations"] = {CREATED_BY_POD: f"{namespace}/{pod}"}
    return metadata


MANAGED_BY = ("app.kubernetes.io/managed-by", "kuberec")
MANAGED_BY_SELECTOR = "=".join(MANAGED_BY)  # every resource kuberec created


def resource_labels(settings: Settings, step: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "kuberec", MANAGED_BY[0]: MANAGED_BY[1],
            "app.kubernetes.io/version": _label_value(settings.image_tag),
            "kuberec.io/step": _label_value(step)}


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return value.strip("-_.")
