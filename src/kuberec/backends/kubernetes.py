"""Kubernetes backend: each job becomes an operator's custom resource, created and waited on to the end.

`kuberec.backends.k8s` renders the resources (plain dicts); this module is the API client side. Waiting
watches the resource and reads the status fields each operator writes; a state change is logged as it happens.
Ctrl-C or SIGTERM while waiting deletes the resource or keeps it (`KUBEREC_K8S_ON_CANCEL`); so does a timeout. A
failed resource is kept so that `kubectl describe` can show what happened.

A step in a Kubeflow Pipelines task pod gets no time for that when its run is terminated: KFP's launcher, the step's
parent, exits at once on SIGTERM and the container with it. `reap` (run in the cluster by `kuberec k8s reap`)
deletes the unfinished jobs whose step's pod has ended, whatever KUBEREC_K8S_ON_CANCEL says: nothing waits for them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import threading
import time
from typing import Any, Iterator

from kuberec.backends.jobs import HorovodJob, JobFailed, RayJob, ServingJob, SparkJob
from kuberec.backends.k8s.kinds import (
    INFERENCE_GRAPH,
    INFERENCE_SERVICE,
    JOB_KINDS,
    KINDS,
    Kind,
    Progress,
    model_load_failure,
)
from kuberec.backends.k8s.naming import CREATED_BY_POD, MANAGED_BY_SELECTOR
from kuberec.backends.k8s.options import ClusterOptions
from kuberec.backends.k8s.render import render_horovod, render_ray, render_spark
from kuberec.backends.k8s.serving import (
    CANARY,
    MODEL_URI_ANNOTATION,
    PREDICTOR_LABEL,
    Canary,
    predictor_service,
    render_inference_service,
    render_traffic_split,
    service_name,
)
from kuberec.errors import KuberecError
from kuberec.settings import Settings

log = logging.getLogger(__name__)

FIELD_MANAGER = "kuberec"
RESOURCE_KINDS = {**KINDS, INFERENCE_GRAPH.kind: INFERENCE_GRAPH}  # every kind kuberec creates
# How kuberec.entrypoint reports an error a user can fix: `<program>: error: <message>`.
PROGRAM_ERROR = re.compile(r"^[\w.-]+: error: \S")


def last_program_error(log_text: str) -> str | None:
    """The last `<program>: error: <message>` line of a pod's log (what follows it, such as Spark's or mpirun's
    shutdown lines, is passed over); None when there is none."""
    errors = [line.strip() for line in log_text.splitlines() if PROGRAM_ERROR.search(line)]
    return errors[-1] if errors else None


class KubernetesError(KuberecError):
    """The cluster refused or could not be reached; the message says what the API server answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the API server's HTTP status; None when no answer came


class JobTimeout(KuberecError):
    """The resource did not reach a final state in time."""


class JobCancelled(KuberecError):
    """Waiting was interrupted (Ctrl-C or SIGTERM); the resource was deleted or kept as configured."""


@contextlib.contextmanager
def _api_errors(what: str) -> Iterator[None]:
    """The one place where the Kubernetes client's exceptions become KubernetesError, whose message starts with
    `what`. Callers that expect some answers (404 on delete, 409 on create, 410 on watch) check its `status`."""
    from kubernetes.client.rest import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as err:
        try:  # the API server's own words are in the body (a Status object); a watch error has none
            message = json.loads(err.body).get("message") or str(err.reason)
        except (TypeError, ValueError, AttributeError):
            message = str(err.reason)
        raise KubernetesError(f"{what}: the API server answered {err.status} {err.reason}: {message}",
                              status=err.status) from None
    except HTTPError as err:
        raise KubernetesError(f"{what}: cannot reach the API server ({err})") from None
    except (ConfigException, OSError) as err:
        # Only loading credentials raises these: the client wraps a request's I/O errors in urllib3's.
        raise KubernetesError(f"{what}: not in a pod and no usable kubeconfig ({err}); set KUBECONFIG or use "
                              f"KUBEREC_BACKEND=local") from None


@contextlib.contextmanager
def _sigterm_raises_interrupt() -> Iterator[None]:
    """SIGTERM (a pod or CI runner being stopped) cancels the wait like Ctrl-C does, so cleanup runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class KubernetesBackend:
    """Runs kuberec's jobs as custom resources in `settings.namespace`."""

    def __init__(self, settings: Settings, options: ClusterOptions | None = None, api_client=None) -> None:
        self.settings = settings
        self.options = options or ClusterOptions.from_env()
        self.namespace = settings.namespace
        self._api_client = api_client
        self._api = None

    # -- API access ------------------------------------------------------------------------------------------
    @property
    def api(self):
        """CustomObjectsApi on the given client, else in-cluster credentials, else the kubeconfig."""
        if self._api is None:
            from kubernetes import client, config

            if self._api_client is None:
                with _api_errors("find Kubernetes credentials"):
                    try:
                        config.load_incluster_config()
                    except config.ConfigException:  # not in a pod
                        # KUBECONFIG as it is now (the client reads it only once, at import).
                        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
                self._api_client = client.ApiClient()
            self._api = client.CustomObjectsApi(self._api_client)
        return self._api

    def create(self, body: dict, *, dry_run: bool = False) -> dict:
        """Create a rendered resource (strict field validation: an unknown field is an error, not dropped)."""
        kind = RESOURCE_KINDS[body["kind"]]
        with _api_errors(f"create {kind.kind} {self.namespace}/{body['metadata']['name']}"):
            return self.api.create_namespaced_custom_object(
                kind.group, kind.version, self.namespace, kind.plural, body,
                dry_run="All" if dry_run else None, field_manager=FIELD_MANAGER, field_validation="Strict")

    def get(self, kind: Kind, name: str) -> dict:
        with _api_errors(f"get {kind.kind} {self.namespace}/{name}"):
            return self.api.get_namespaced_custom_object(kind.group, kind.version, self.namespace, kind.plural,
                                                         name)

    def replace(self, body: dict) -> dict:
        """Replace the stored object with `body` (which carries the stored resourceVersion)."""
        kind = RESOURCE_KINDS[body["kind"]]
        name = body["metadata"]["name"]
        with _api_errors(f"update {kind.kind} {self.namespace}/{name}"):
            return self.api.replace_namespaced_custom_object(
                kind.group, kind.version, self.namespace, kind.plural, name, body,
                field_manager=FIELD_MANAGER, field_validation="Strict")

    def delete(self, kind: Kind, name: str) -> None:
        """Delete; the garbage collector removes the pods the operator made for it. Gone already is fine."""
        from kubernetes import client

        try:
            with _api_errors(f"delete {kind.kind} {self.namespace}/{name}"):
                self.api.delete_namespaced_custom_object(
                    kind.group, kind.version, self.namespace, kind.plural, name,
                    body=client.V1DeleteOptions(propagation_policy="Background"))
        except KubernetesError as err:
            if err.status != 404:
                raise

    # -- jobs ------------------------------------------------------------------------------------------------
    def run_spark(self, job: SparkJob) -> dict:
        return self.run(render_spark(job, self.settings, self.options))

    def run_horovod(self, job: HorovodJob) -> dict:
        return self.run(render_horovod(job, self.settings, self.options))

    def run_ray(self, job: RayJob) -> dict:
        return self.run(render_ray(job, self.settings, self.options))

    def run(self, body: dict) -> dict:
        """Create, wait to the end, return the final object; cancel/timeout delete or keep it."""
        kind = KINDS[body["kind"]]
        name = body["metadata"]["name"]
        with _sigterm_raises_interrupt():
            self.create(body)
            log.info("created %s %s/%s", kind.kind, self.namespace, name)
            try:
                return self.wait(kind, name, timeout=self.options.timeout_s)
            except KeyboardInterrupt:
                outcome = self._abandon(kind, name)
                raise JobCancelled(f"cancelled while waiting for {kind.kind} {self.namespace}/{name}; "
                                   f"{outcome}") from None
            except JobTimeout as err:
                raise JobTimeout(f"{err}; {self._abandon(kind, name)}") from None

    def _abandon(self, kind: Kind, name: str) -> str:
        if self.options.on_cancel == "keep":
            return (f"kept it (KUBEREC_K8S_ON_CANCEL=keep): `kubectl delete {kind.plural} {name} "
                    f"-n {self.namespace}` removes it")
        self.delete(kind, name)
        return "deleted it (KUBEREC_K8S_ON_CANCEL=delete)"

    # -- jobs whose step has stopped ------------------------------------------------------------------------
    def reap(self) -> list[str]:
        """Delete the unfinished jobs created from a pod (CREATED_BY_POD) that has ended or is gone; finished jobs
        stay for `kubectl describe`. Returns `<plural>/<name>` of each job deleted."""
        reaped = []
        for kind in JOB_KINDS:
            with _api_errors(f"list the {kind.plural} in {self.namespace}"):
                jobs = self.api.list_namespaced_custom_object(
                    kind.group, kind.version, self.namespace, kind.plural,
                    label_selector=MANAGED_BY_SELECTOR)["items"]
            for job in jobs:
                pod = (job["metadata"].get("annotations") or {}).get(CREATED_BY_POD)
                progress = kind.progress(job)
                if not pod or progress.succeeded or progress.failed:
                    continue
                phase = self.pod_phase(pod)
                if phase not in (None, "Succeeded", "Failed"):
                    continue
                name = job["metadata"]["name"]
                self.delete(kind, name)
                log.info("deleted %s %s/%s (%s): the pod of the step that created it, %s, %s", kind.kind,
                         self.namespace, name, progress.state, pod, f"has ended ({phase})" if phase else "is gone")
                reaped.append(f"{kind.plural}/{name}")
        return reaped

    def pod_phase(self, pod: str) -> str | None:
        """The phase of pod `<namespace>/<name>` (Pending, Running, Succeeded, Failed); None when it is gone."""
        from kubernetes import client

        namespace, _, name = pod.partition("/")
        try:
            with _api_errors(f"get pod {pod}"):
                return client.CoreV1Api(self.api.api_client).read_namespaced_pod(name, namespace).status.phase
        except KubernetesError as err:
            if err.status == 404:
                return None
            raise

    # -- serving ---------------------------------------------------------------------------------------------
    def deploy(self, job: ServingJob, canary_percent: int | None = None) -> str:
        """Create the InferenceService, or roll the existing one to the new model; wait until the new version is
        ready and return its URL. Cancelling a rollout of an existing service never deletes it. With
        `canary_percent` the new model is a canary beside the stable one instead (`start_canary`)."""
        if canary_percent is not None:
            return self.start_canary(job, Canary(job.model_uri, canary_percent))
        body = render_inference_service(job, self.settings, self.options)
        kind, name = INFERENCE_SERVICE, body["metadata"]["name"]
        with _sigterm_raises_interrupt():
            try:
                self.create(body)
                created = True
                log.info("created InferenceService %s/%s (%s)", self.namespace, name, job.model_uri)
            except KubernetesError as err:
                if err.status != 409:  # 409 Conflict: the service exists, roll it to the new model
                    raise
                created = False
                current = self.get(kind, name)
                if _canary(current):
                    raise KuberecError(f"InferenceService {self.namespace}/{name} has a canary "
                                       f"({_canary(current).model_uri}): promote it or roll it back first "
                                       f"(kuberec k8s promote|rollback {name})") from None
                self._update_service(body, current)
                log.info("updated InferenceService %s/%s to %s", self.namespace, name, job.model_uri)
            try:
                deadline = time.monotonic() + self.options.serving_timeout_s
                if created:  # a new service's generation is its Deployment's: its status can be followed
                    self.wait_ready(name)
                    final = self.wait_serving(name, {job.model_uri}, deadline)
                else:
                    final = self.wait_serving(name, {job.model_uri}, deadline, _failure(current))
            except (KeyboardInterrupt, JobTimeout) as err:
                if created:
                    outcome = self._abandon(kind, name)
                else:
                    outcome = "left the existing service as it is (KServe keeps serving the last ready version)"
                message = "cancelled while waiting" if isinstance(err, KeyboardInterrupt) else str(err)
                error = JobCancelled if isinstance(err, KeyboardInterrupt) else JobTimeout
                raise error(f"{message} for InferenceService {self.namespace}/{name}; {outcome}") from None
        return (final.get("status") or {}).get("url", "")

    def start_canary(self, job: ServingJob, canary: Canary) -> str:
        """Serve `canary` beside the existing service's model (KServe's canary Deployment), then send it
        `canary.percent` of the requests through the service's split (an InferenceGraph). Run again with another
        percent to change the share. Returns the split's URL."""
        name = service_name(job.name)
        current = self._serving(name)
        stable_uri = current["metadata"]["annotations"][MODEL_URI_ANNOTATION]
        if stable_uri == canary.model_uri:
            raise KuberecError(f"InferenceService {self.namespace}/{name} serves {stable_uri} already: a canary is "
                               "another model version")
        running = _canary(current)
        if running and running.model_uri != canary.model_uri:
            raise KuberecError(f"InferenceService {self.namespace}/{name} has a canary of {running.model_uri}: "
                               f"promote it or roll it back before another (kuberec k8s promote|rollback {name})")
        # Again with another percent: the canary keeps its pods, only the split changes.
        updated = self._roll_service(_serving_job(current, stable_uri), canary, {stable_uri, canary.model_uri})
        url = self._route(updated, {"": 100 - canary.percent, CANARY: canary.percent})
        log.info("InferenceService %s: the canary %s takes %d%% of the requests sent to %s", name,
                 canary.model_uri, canary.percent, url)
        return url

    def promote(self, name: str) -> str:
        """Make the canary the stable version with no request failing: all requests to the canary, the stable
        predictor rolled to the canary's model, all requests back to the stable predictor, the canary removed."""
        current = self._serving(name)
        canary = _canary(current)
        if not canary:
            raise KuberecError(f"InferenceService {self.namespace}/{name} has no canary to promote")
        self._route(current, {CANARY: 100})
        promoted = _serving_job(current, canary.model_uri)
        updated = self._roll_service(promoted, canary, {canary.model_uri})
        url = self._route(updated, {"": 100})
        self._roll_service(promoted, None, {canary.model_uri})
        self.delete_canary_autoscaler(name)
        log.info("InferenceService %s: promoted %s", name, canary.model_uri)
        return url

    def rollback(self, name: str) -> str:
        """Drop the canary: all requests to the stable predictor, then the canary's Deployment removed."""
        current = self._serving(name)
        canary = _canary(current)
        if not canary:
            raise KuberecError(f"InferenceService {self.namespace}/{name} has no canary to roll back")
        url = self._route(current, {"": 100})
        stable_uri = current["metadata"]["annotations"][MODEL_URI_ANNOTATION]
        self._roll_service(_serving_job(current, stable_uri), None, {stable_uri})
        self.delete_canary_autoscaler(name)
        log.info("InferenceService %s: rolled back the canary %s; %s serves every request", name,
                 canary.model_uri, stable_uri)
        return url

    def delete_canary_autoscaler(self, name: str) -> None:
        """KServe 0.20 deletes a removed canary's Deployment and Service but leaves the HorizontalPodAutoscaler it
        made for it, with no owner: delete it too (found on the cluster)."""
        from kubernetes import client

        try:
            with _api_errors(f"delete the canary's HorizontalPodAutoscaler of {self.namespace}/{name}"):
                client.AutoscalingV2Api(self.api.api_client).delete_namespaced_horizontal_pod_autoscaler(
                    predictor_service(name, CANARY), self.namespace)
        except KubernetesError as err:
            if err.status != 404:
                raise

    def _serving(self, name: str) -> dict:
        try:
            return self.get(INFERENCE_SERVICE, name)
        except KubernetesError as err:
            if err.status == 404:
                raise KuberecError(f"no InferenceService {self.namespace}/{name}: deploy a model first "
                                   f"(kuberec k8s deploy {name} --model-uri ...)") from None
            raise

    def _update_service(self, body: dict, current: dict) -> dict:
        """A new spec on the existing object: KServe rolls it out and bumps observedGeneration when done."""
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        body["metadata"]["annotations"] = {**current["metadata"].get("annotations", {}),
                                           **body["metadata"].get("annotations", {})}
        return self.replace(body)

    def _roll_service(self, job: ServingJob, canary: Canary | None, serving: set[str]) -> dict:
        """Give the existing service this stable model and canary; wait until its pods serve exactly `serving`."""
        body = render_inference_service(job, self.settings, self.options, canary)
        name = body["metadata"]["name"]
        current = self.get(INFERENCE_SERVICE, name)
        updated = self._update_service(body, current)
        self.wait_serving(name, serving, time.monotonic() + self.options.serving_timeout_s, _failure(current))
        return updated

    def _route(self, isvc: dict, weights: dict[str, int]) -> str:
        """Create or update the service's split with these weights; wait until its router runs them. Returns the
        split's in-cluster URL (its status URL is an ingress domain's, which there is none of in Standard mode)."""
        body = render_traffic_split(isvc, weights)
        name = body["metadata"]["name"]
        try:
            self.create(body)
        except KubernetesError as err:
            if err.status != 409:
                raise
            body["metadata"]["resourceVersion"] = self.get(INFERENCE_GRAPH, name)["metadata"]["resourceVersion"]
            self.replace(body)
        shares = {step["name"]: step["weight"] for step in body["spec"]["nodes"]["root"]["steps"]}
        deadline = time.monotonic() + self.options.serving_timeout_s
        while self.router_shares(name) != shares:
            if time.monotonic() >= deadline:
                raise JobTimeout(f"the router of InferenceGraph {self.namespace}/{name} does not run {shares} yet; "
                                 f"look at `kubectl get deployment {name} -n {self.namespace}`")
            time.sleep(1)
        log.info("InferenceGraph %s: %s", name, ", ".join(f"{step} {weight}%" for step, weight in shares.items()))
        self.wait(INFERENCE_GRAPH, name, timeout=max(deadline - time.monotonic(), 1))
        return f"http://{name}.{self.namespace}.svc.cluster.local"

    def router_shares(self, name: str) -> dict[str, int] | None:
        """{step: weight} that every pod of the InferenceGraph's router Deployment runs; None while its rollout
        is under way (KServe passes the graph to the router as an argument: a new split is a new pod)."""
        from kubernetes import client

        apps = client.AppsV1Api(self.api.api_client)
        try:
            with _api_errors(f"get the router Deployment {self.namespace}/{name}"):
                deployment = apps.read_namespaced_deployment(name, self.namespace)
        except KubernetesError as err:
            if err.status == 404:  # KServe has not made it yet
                return None
            raise
        status, want = deployment.status, deployment.spec.replicas
        rolled = ((status.observed_generation or 0) >= deployment.metadata.generation
                  and status.replicas == want and status.updated_replicas == want
                  and status.available_replicas == want)
        if not rolled:
            return None
        args = deployment.spec.template.spec.containers[0].args or []
        graph = json.loads(args[args.index("--graph-json") + 1]) if "--graph-json" in args else {}
        steps = ((graph.get("nodes") or {}).get("root") or {}).get("steps") or []
        return {step.get("name", ""): step.get("weight") for step in steps}

    def wait_ready(self, name: str, timeout: float | None = None) -> dict:
        return self.wait(INFERENCE_SERVICE, name, timeout=timeout or self.options.serving_timeout_s)

    def wait_serving(self, name: str, model_uris: set[str], deadline: float, known_failure: Any = None,
                     poll_s: float = 1.0) -> dict:
        """Wait until every pod of the InferenceService's predictors (stable and canary) is ready and serves one of
        `model_uris`, and each of them has a pod; return the service. The pods say when a rollout is done: KServe
        keeps the service Ready while the previous pods serve (Ready alone returned while the old model still
        answered every request, found with make e2e), and in Standard mode its observedGeneration is the stable
        Deployment's, which a canary or a replica change never moves (found with the canary on the cluster). The
        status still says when a model failed to load: a failure other than `known_failure` (the one before the
        update) ends the wait. Pods on their way out are not counted."""
        shown = None
        while True:
            service = self.get(INFERENCE_SERVICE, name)
            failure = model_load_failure(service)
            if failure and _failure(service) != known_failure:
                raise JobFailed(f"InferenceService {self.namespace}/{name} failed: {failure} (details: "
                                f"kubectl describe inferenceservices {name} -n {self.namespace})")
            pods = self.predictor_pods(name)
            behind = [uri for uri, ready in pods if uri not in model_uris or not ready]
            missing = model_uris - {uri for uri, ready in pods if ready}
            if pods and not behind and not missing:
                log.info("InferenceService %s: %d pod(s) serve %s", name, len(pods), ", ".join(sorted(model_uris)))
                return service
            state = sorted(pods)
            if state != shown:
                shown = state
                log.info("InferenceService %s: pods %s", name, "; ".join(
                    f"{'ready' if ready else 'starting'} {uri}" for uri, ready in state) or "none yet")
            if time.monotonic() >= deadline:
                raise JobTimeout(f"InferenceService {self.namespace}/{name} is Ready but {len(behind)} of its "
                                 f"{len(pods)} pod(s) do not serve {' or '.join(sorted(model_uris))} yet; look at "
                                 f"`kubectl get pods -l {PREDICTOR_LABEL}={name} -n {self.namespace}`, or allow "
                                 "longer with KUBEREC_K8S_SERVING_TIMEOUT")
            time.sleep(poll_s)

    def predictor_pods(self, name: str) -> list[tuple[str, bool]]:
        """(model URI it serves, ready) of each pod of the InferenceService's predictor not on its way out."""
        from kubernetes import client

        core = client.CoreV1Api(self.api.api_client)
        with _api_errors(f"list the pods of InferenceService {self.namespace}/{name}"):
            pods = core.list_namespaced_pod(self.namespace, label_selector=f"{PREDICTOR_LABEL}={name}").items
        return [((pod.metadata.annotations or {}).get(MODEL_URI_ANNOTATION, ""),
                 any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or [])))
                for pod in pods if pod.metadata.deletion_timestamp is None]

    # -- waiting ---------------------------------------------------------------------------------------------
    def wait(self, kind: Kind, name: str, *, timeout: float) -> dict:
        """Follow the resource until the operator marks it done; log each state change. Returns the final
        object, raises JobFailed with the operator's message, or JobTimeout."""
        deadline = time.monotonic() + timeout
        shown: tuple[str, str] | None = None
        progress = Progress("unknown")
        for obj in self._observe(kind, name, deadline):
            progress = kind.progress(obj)
            if (progress.state, progress.detail) != shown:
                shown = (progress.state, progress.detail)
                log.info("%s %s: %s%s", kind.kind, name, progress.state,
                         f" ({progress.detail})" if progress.detail else "")
            if progress.failed:
                said = self.program_error(kind, name)
                raise JobFailed(f"{kind.kind} {self.namespace}/{name} failed: {progress.message}"
                                f"{f'; its program said: {said}' if said else ''} "
                                f"(details: kubectl describe {kind.plural} {name} -n {self.namespace})")
            if progress.succeeded:
                return obj
        raise JobTimeout(f"{kind.kind} {self.namespace}/{name} did not finish within {timeout:g} s "
                         f"(last state: {progress.state}); look at `kubectl describe {kind.plural} {name} "
                         f"-n {self.namespace}`, or allow longer with KUBEREC_K8S_"
                         f"{'SERVING_' if kind is INFERENCE_SERVICE else ''}TIMEOUT")

    def program_error(self, kind: Kind, name: str, tail_lines: int = 200) -> str | None:
        """The last `<program>: error: <message>` line (kuberec.entrypoint's) in the log of the resource's program
        pod: the operator's message says that a pod failed, this says why. None when there is no such line or the
        log cannot be read (no pod left, no right to read logs): the operator's message then stands alone."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        if kind.program_pod is None:
            return None
        core = client.CoreV1Api(self.api.api_client)
        try:
            pods = core.list_namespaced_pod(self.namespace, label_selector=kind.program_pod(name)).items
            if not pods:
                return None
            newest = max(pods, key=lambda pod: pod.metadata.creation_timestamp)
            text = core.read_namespaced_pod_log(newest.metadata.name, self.namespace, tail_lines=tail_lines)
        except (ApiException, OSError) as err:  # a missing right or pod, or the API server gone: best effort
            log.debug("no log of %s %s's program pod: %s", kind.kind, name, err)
            return None
        return last_program_error(text)

    def _observe(self, kind: Kind, name: str, deadline: float, chunk_s: float = 30) -> Iterator[dict]:
        """The object now, then every change until the deadline (watch from its resourceVersion, resuming
        after server-side timeouts; a 410 Gone restarts from a fresh read)."""
        from kubernetes import watch

        obj = self.get(kind, name)
        yield obj
        version = obj["metadata"]["resourceVersion"]
        while (remaining := deadline - time.monotonic()) > 0:
            window = min(remaining, chunk_s)
            stream = watch.Watch()
            try:
                with _api_errors(f"watch {kind.kind} {self.namespace}/{name}"):
                    for event in stream.stream(
                            self.api.list_namespaced_custom_object, kind.group, kind.version, self.namespace,
                            kind.plural, field_selector=f"metadata.name={name}", resource_version=version,
                            timeout_seconds=max(1, round(window)), _request_timeout=window + 15):
                        if event["type"] == "DELETED":
                            raise JobFailed(f"{kind.kind} {self.namespace}/{name} was deleted while kuberec was "
                                            f"waiting for it")
                        obj = event["object"]
                        version = obj["metadata"]["resourceVersion"]
                        yield obj
                        if time.monotonic() >= deadline:
                            return
            except KubernetesError as err:
                if err.status != 410:
                    raise
                obj = self.get(kind, name)
                version = obj["metadata"]["resourceVersion"]
                yield obj
            finally:
                stream.stop()


def _canary(isvc: dict) -> Canary | None:
    """The canary an InferenceService object runs beside its stable model (kuberec's one), if any."""
    for entry in (isvc.get("spec") or {}).get("canary") or []:
        predictor = entry.get("predictor") or {}
        if predictor.get("name") == CANARY:
            return Canary(predictor["model"]["storageUri"], int(entry["trafficPercent"]))
    return None


def _failure(isvc: dict) -> Any:
    """KServe's last model-load failure of an InferenceService (None: none)."""
    return ((isvc.get("status") or {}).get("modelStatus") or {}).get("lastFailureInfo")


def _serving_job(isvc: dict, model_uri: str) -> ServingJob:
    """The ServingJob the stored InferenceService was rendered from, serving `model_uri`."""
    predictor = isvc["spec"]["predictor"]
    return ServingJob(isvc["metadata"]["name"], model_uri, min_replicas=predictor.get("minReplicas", 1),
                      max_replicas=predictor.get("maxReplicas", 1),
                      cpu_target=predictor.get("scaleTarget", ServingJob.cpu_target),
                      extra={env["name"]: env["value"] for env in predictor["model"].get("env") or []})


def reap_forever(settings: Settings, every_s: float) -> None:
    """`KubernetesBackend.reap` every `every_s` seconds until stopped; an API error is logged and tried again."""
    backend = KubernetesBackend(settings)
    log.info("deleting the unfinished jobs in %s whose step's pod has stopped, every %g s", backend.namespace,
             every_s)
    while True:
        try:
            backend.reap()
        except KubernetesError as err:
            log.warning("%s; trying again in %g s", err, every_s)
        time.sleep(every_s)
