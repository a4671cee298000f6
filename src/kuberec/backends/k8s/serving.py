"""A model served by KServe: the InferenceService a ServingJob becomes, the marks by which its pods are found, and the
InferenceGraph that splits its requests between the stable version and a canary.

KServe 0.20's canary for RawDeployment (`spec.canary`) runs the canary as a Deployment and Service of its own and
splits no traffic by itself: `trafficPercent` only sizes the canary's replicas, and a weighted split needs a Gateway
API implementation (Envoy-based here, which cannot run on this machine). KServe's own weighted router, an
InferenceGraph Splitter node, picks the stable or the canary Service for each request by weight: that is kuberec's
split, in front of KServe's canary Deployment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kuberec.backends.jobs import ServingJob
from kuberec.backends.k8s.kinds import INFERENCE_GRAPH, INFERENCE_SERVICE
from kuberec.backends.k8s.naming import dns_label, resource_metadata
from kuberec.backends.k8s.options import ClusterOptions
from kuberec.backends.k8s.pods import container_security_context, pod_security_context, refuse_credentials
from kuberec.errors import KuberecError
from kuberec.settings import Settings

# On an InferenceService, and (KServe copies it) on its predictor's pods: the model URI each pod serves.
MODEL_URI_ANNOTATION = "kuberec.io/model-uri"
PREDICTOR_LABEL = "serving.kserve.io/inferenceservice"  # KServe's label on the pods of a service's predictor
CANARY = "canary"  # the canary predictor's name: KServe names its Deployment and Service <service>-canary-predictor


@dataclass(frozen=True)
class Canary:
    """A new model version served beside the stable one, taking `percent` of the requests."""

    model_uri: str
    percent: int

    def __post_init__(self) -> None:
        if not 0 < self.percent < 100:
            raise KuberecError(f"a canary takes between 1 and 99 percent of the requests, not {self.percent} "
                               "(100: promote it; 0: roll it back)")


def service_name(isvc: str) -> str:
    return dns_label(isvc, 45)


def predictor_service(isvc: str, predictor: str = "") -> str:
    """KServe's Service (and Deployment) of the stable predictor, or of the canary predictor named `predictor`."""
    return f"{isvc}-{predictor}-predictor" if predictor else f"{isvc}-predictor"


def split_name(isvc: str) -> str:
    """The InferenceGraph (router Deployment and Service) that splits the service's requests."""
    return f"{isvc}-split"


def render_inference_service(job: ServingJob, settings: Settings, options: ClusterOptions,
                             canary: Canary | None = None) -> dict:
    """InferenceService serving an MLflow model over the V2 protocol on kuberec's ClusterServingRuntime, with
    KServe's HPA between min and max replicas (CPU) and, given one, a canary of another model version.
    The name is stable (the service's), so deploying again rolls out a new version."""
    if not 1 <= job.min_replicas <= job.max_replicas:
        raise KuberecError(f"replicas: need 1 <= min ({job.min_replicas}) <= max ({job.max_replicas})")
    if not 0 < job.cpu_target <= 100:
        raise KuberecError(f"the CPU target is a percent of the pod's CPU request, 1 to 100, not {job.cpu_target}")
    refuse_credentials({"storageUri": job.model_uri, **{k: str(v) for k, v in job.extra.items()}}, options)
    metadata = resource_metadata(settings, service_name(job.name), job.name)
    metadata["annotations"] = {MODEL_URI_ANNOTATION: job.model_uri}
    predictor: dict[str, Any] = {
        "serviceAccountName": options.serving_service_account,
        "securityContext": pod_security_context(),
        "minReplicas": job.min_replicas, "maxReplicas": job.max_replicas,
        "model": _model(job, job.model_uri, options),
    }
    if job.max_replicas > job.min_replicas:  # KServe makes a HorizontalPodAutoscaler on the pods' CPU
        predictor.update(scaleMetric="cpu", scaleTarget=job.cpu_target)
    spec: dict[str, Any] = {"predictor": predictor}
    if canary:
        refuse_credentials({"storageUri": canary.model_uri}, options)
        # KServe builds the canary from the stable predictor with these fields replaced; its replicas are fixed
        # (ceil(min replicas * percent / 100)). Its pods carry its own model URI, as the stable's carry theirs.
        spec["canary"] = [{"trafficPercent": canary.percent, "predictor": {
            "name": CANARY, "annotations": {MODEL_URI_ANNOTATION: canary.model_uri},
            # The CRD wants the canary's container named: KServe's own name for a model's container.
            "model": {"name": "kserve-container", **_model(job, canary.model_uri, options)}}}]
    return {"apiVersion": INFERENCE_SERVICE.api_version, "kind": INFERENCE_SERVICE.kind, "metadata": metadata,
            "spec": spec}


def _model(job: ServingJob, model_uri: str, options: ClusterOptions) -> dict[str, Any]:
    model: dict[str, Any] = {
        "modelFormat": {"name": "mlflow"}, "protocolVersion": "v2", "storageUri": model_uri,
        "runtime": options.serving_runtime,
    }
    if job.extra:  # extra model settings for the runtime (e.g. KUBEREC_TOP_K) as environment
        model["env"] = [{"name": k, "value": str(v)} for k, v in sorted(job.extra.items())]
    # The runtime (manifests/base/servingruntime.yaml) adds the writable emptyDirs its server needs.
    model["securityContext"] = container_security_context()
    return model


def render_traffic_split(isvc: dict, weights: dict[str, int]) -> dict:
    """The InferenceGraph whose Splitter router sends each V2 inference request of the InferenceService `isvc` to
    one of its predictors' Services, chosen at random by `weights` ({"": stable, CANARY: canary}, summing to 100).
    Owned by the InferenceService, so deleting the service deletes its split."""
    if sum(weights.values()) != 100 or any(w < 0 for w in weights.values()):
        raise KuberecError(f"traffic weights must be non-negative and sum to 100, not {weights}")
    metadata = isvc["metadata"]
    name, namespace = metadata["name"], metadata["namespace"]
    # kuberec's labels, not KServe's: the router's pods must not pass for the service's predictor pods.
    labels = {key: value for key, value in (metadata.get("labels") or {}).items()
              if not key.startswith("serving.kserve.io/")}
    steps = [{"name": predictor or "stable", "weight": weight,
              "serviceUrl": f"http://{predictor_service(name, predictor)}.{namespace}.svc.cluster.local"
                            f"/v2/models/{name}/infer"}
             for predictor, weight in weights.items() if weight > 0]
    return {
        "apiVersion": INFERENCE_GRAPH.api_version, "kind": INFERENCE_GRAPH.kind,
        "metadata": {"name": split_name(name), "namespace": namespace, "labels": labels,
                     "ownerReferences": [{"apiVersion": isvc["apiVersion"], "kind": isvc["kind"], "name": name,
                                          "uid": metadata["uid"]}]},
        "spec": {"nodes": {"root": {"routerType": "Splitter", "steps": steps}}},
    }
