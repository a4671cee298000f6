"""KFP components: each a thin wrapper that calls one `kuberec.steps` function.

A component's body runs in kuberec's runtime image on a cluster (where the step launches its SparkApplication,
MPIJob or RayJob through the Kubernetes backend) and as a local subprocess under the KFP local runner. Bodies must
be self-contained (KFP ships their source), so each imports what it calls.
"""

from __future__ import annotations

from kfp import dsl

from kuberec.settings import load_settings

RUNTIME_IMAGE = load_settings().image("runtime")


def component(func):
    """A lightweight component in kuberec's runtime image (which already has kfp and kuberec installed)."""
    return dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)(func)
