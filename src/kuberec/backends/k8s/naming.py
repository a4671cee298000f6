"""Names and labels of the resources kuberec creates: DNS-safe names, a fresh name per run, and the labels that
mark every resource and pod as kuberec's and say which step made it."""

from __future__ import annotations

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


def resource_labels(settings: Settings, step: str) -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "kuberec", "app.kubernetes.io/managed-by": "kuberec",
            "app.kubernetes.io/version": _label_value(settings.image_tag),
            "kuberec.io/step": _label_value(step)}


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return value.strip("-_.")
