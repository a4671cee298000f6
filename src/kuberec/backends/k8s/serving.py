"""A model served by KServe: the InferenceService a ServingJob becomes, and the marks by which its pods are found."""

from __future__ import annotations

from typing import Any

from kuberec.backends.jobs import ServingJob
from kuberec.backends.k8s.kinds import INFERENCE_SERVICE
from kuberec.backends.k8s.naming import dns_label, resource_metadata
from kuberec.backends.k8s.options import ClusterOptions
from kuberec.backends.k8s.pods import container_security_context, pod_security_context, refuse_credentials
from kuberec.settings import Settings

# On an InferenceService, and (KServe copies it) on its predictor's pods: the model URI each pod serves.
MODEL_URI_ANNOTATION = "kuberec.io/model-uri"
PREDICTOR_LABEL = "serving.kserve.io/inferenceservice"  # KServe's label on the pods of a service's predictor


def render_inference_service(job: ServingJob, settings: Settings, options: ClusterOptions) -> dict:
    """InferenceService serving an MLflow model over the V2 protocol on kuberec's ClusterServingRuntime.
    The name is stable (the service's), so deploying again rolls out a new version."""
    model: dict[str, Any] = {
        "modelFormat": {"name": "mlflow"}, "protocolVersion": "v2", "storageUri": job.model_uri,
        "runtime": options.serving_runtime,
    }
    if job.extra:  # extra model settings for the runtime (e.g. KUBEREC_TOP_K) as environment
        model["env"] = [{"name": k, "value": str(v)} for k, v in sorted(job.extra.items())]
    refuse_credentials({"storageUri": job.model_uri, **{k: str(v) for k, v in job.extra.items()}}, options)
    # The runtime (manifests/base/servingruntime.yaml) adds the writable emptyDirs its server needs.
    model["securityContext"] = container_security_context()
    metadata = resource_metadata(settings, dns_label(job.name, 45), job.name)
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
