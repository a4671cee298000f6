"""The kinds of custom resource kuberec creates, and how to read each one's status as a `Progress`.

SparkJob -> SparkApplication (spark-operator), HorovodJob -> MPIJob (mpi-operator), RayJob -> RayJob (KubeRay),
ServingJob -> InferenceService (KServe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Progress:
    state: str  # what `kubectl get` would show as the phase
    detail: str = ""
    succeeded: bool = False
    failed: bool = False
    message: str = ""  # the operator's own words when failed


@dataclass(frozen=True)
class Kind:
    kind: str
    group: str
    version: str
    plural: str
    progress: Callable[[dict], Progress]
    # Label selector of the pod whose log holds the program's own error line (the Spark driver, the MPI launcher,
    # the Ray job's submitter), given the resource's name; None: no such pod.
    program_pod: Callable[[str], str] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def _counts(states: Mapping[str, Any]) -> str:
    tally: dict[str, int] = {}
    for state in states.values():
        tally[str(state)] = tally.get(str(state), 0) + 1
    return ", ".join(f"{n} {state.lower()}" for state, n in sorted(tally.items()))


def spark_progress(obj: dict) -> Progress:
    """spark-operator: status.applicationState.state; COMPLETED and FAILED are final (a failed submission
    becomes FAILED once its retries are used up)."""
    status = obj.get("status") or {}
    app = status.get("applicationState") or {}
    state = app.get("state") or "NEW"
    executors = _counts(status.get("executorState") or {})
    detail = f"executors: {executors}" if executors else ""
    if state == "COMPLETED":
        return Progress(state, detail, succeeded=True)
    if state == "FAILED":
        return Progress(state, detail, failed=True, message=app.get("errorMessage") or "no error message")
    return Progress(state, detail)


def mpijob_progress(obj: dict) -> Progress:
    """mpi-operator v2: conditions Created/Running/Restarting/Succeeded/Suspended/Failed, final when Succeeded
    or Failed is True; status.replicaStatuses counts launcher and worker pods."""
    status = obj.get("status") or {}
    true = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
    by_type = {c.get("type"): c for c in true}
    replicas = status.get("replicaStatuses") or {}
    detail = "; ".join(
        f"{role.lower()}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if isinstance(v, int))
        for role, counts in sorted(replicas.items()) if counts)
    if "Failed" in by_type:
        cond = by_type["Failed"]
        return Progress("Failed", detail, failed=True,
                        message=f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": "))
    if "Succeeded" in by_type:
        return Progress("Succeeded", detail, succeeded=True)
    # The newest true condition is the current phase (Running after Created, Restarting after Running...).
    latest = max(true, key=lambda c: c.get("lastTransitionTime") or "", default=None)
    return Progress(latest["type"] if latest else "Pending", detail)


def rayjob_progress(obj: dict) -> Progress:
    """KubeRay: status.jobDeploymentStatus (Complete/Failed final) and status.jobStatus (SUCCEEDED/FAILED/
    STOPPED); a Complete deployment whose job did not succeed is a failure."""
    status = obj.get("status") or {}
    deployment = status.get("jobDeploymentStatus") or "New"
    job = status.get("jobStatus") or ""
    detail = f"job {job}" if job else ""
    message = ": ".join(x for x in (status.get("reason"), status.get("message")) if x)
    if deployment == "Failed":
        return Progress(deployment, detail, failed=True, message=message or f"job status {job or 'unknown'}")
    if deployment == "Complete":
        if job == "SUCCEEDED":
            return Progress(deployment, detail, succeeded=True)
        return Progress(deployment, detail, failed=True, message=message or f"job status {job or 'unknown'}")
    return Progress(deployment, detail)


def inferenceservice_progress(obj: dict) -> Progress:
    """KServe: ready when the Ready condition is True for the current generation (observedGeneration >=
    metadata.generation). KServe writes no Failed condition: a failed model load shows as
    modelStatus.transitionStatus BlockedByFailedLoad or InvalidSpec with lastFailureInfo; else it never gets ready."""
    status = obj.get("status") or {}
    current = (status.get("observedGeneration") or 0) >= (obj.get("metadata", {}).get("generation") or 0)
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    model = status.get("modelStatus") or {}
    transition = model.get("transitionStatus") or ""
    active = (model.get("states") or {}).get("activeModelState") or ""
    detail = ", ".join(x for x in (f"model {active}" if active else "", transition,
                                   f"url {status['url']}" if status.get("url") else "") if x)
    if not current:
        return Progress("Reconciling", detail)
    failure = model_load_failure(obj)
    if failure:
        return Progress(transition, detail, failed=True, message=failure)
    if ready.get("status") == "True":
        return Progress("Ready", detail, succeeded=True)
    reason = ready.get("reason") or ready.get("message") or ""
    return Progress(f"NotReady ({reason})" if reason else "NotReady", detail)


def model_load_failure(obj: dict) -> str | None:
    """KServe's words when the InferenceService's model failed to load or its spec is invalid, whatever the
    generation; None otherwise."""
    model = (obj.get("status") or {}).get("modelStatus") or {}
    transition = model.get("transitionStatus") or ""
    if transition not in ("BlockedByFailedLoad", "InvalidSpec"):
        return None
    failure = model.get("lastFailureInfo") or {}
    return ": ".join(x for x in (failure.get("reason"), failure.get("message")) if x) or transition


def inferencegraph_progress(obj: dict) -> Progress:
    """KServe's InferenceGraph: its Ready condition (the router Deployment is available)."""
    ready = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
    if ready.get("status") == "True":
        return Progress("Ready", succeeded=True)
    return Progress("NotReady", ready.get("reason") or ready.get("message") or "")


SPARK_APPLICATION = Kind("SparkApplication", "sparkoperator.k8s.io", "v1beta2", "sparkapplications", spark_progress,
                         lambda name: f"sparkoperator.k8s.io/app-name={name},spark-role=driver")
MPIJOB = Kind("MPIJob", "kubeflow.org", "v2beta1", "mpijobs", mpijob_progress,
              lambda name: f"training.kubeflow.org/job-name={name},training.kubeflow.org/job-role=launcher")
RAYJOB = Kind("RayJob", "ray.io", "v1", "rayjobs", rayjob_progress, lambda name: f"job-name={name}")
INFERENCE_SERVICE = Kind("InferenceService", "serving.kserve.io", "v1beta1", "inferenceservices",
                         inferenceservice_progress)
# The router that splits an InferenceService's requests between its stable and canary predictors.
INFERENCE_GRAPH = Kind("InferenceGraph", "serving.kserve.io", "v1alpha1", "inferencegraphs", inferencegraph_progress)
KINDS: dict[str, Kind] = {k.kind: k for k in (SPARK_APPLICATION, MPIJOB, RAYJOB, INFERENCE_SERVICE)}
# The kinds that run to an end; an InferenceService serves until it is deleted or rolled to another model.
JOB_KINDS = (SPARK_APPLICATION, MPIJOB, RAYJOB)
