"""The Kubernetes backend against a real API server (tests/k8s/conftest.py) with the operators' CRDs.

No operator runs here, so each test writes /status the way the operator does (the server validates those writes
against the CRD's status schema) while the backend waits in another thread, or in the main thread when the test
cancels it with a real signal.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from kuberec.backends import HorovodJob, JobFailed, RayJob, ServingJob, SparkJob
from kuberec.backends.k8s.kinds import INFERENCE_GRAPH, INFERENCE_SERVICE, KINDS
from kuberec.backends.k8s.naming import CREATED_BY_POD, POD_NAME_ENV, POD_NAMESPACE_ENV
from kuberec.backends.k8s.options import ClusterOptions
from kuberec.backends.k8s.render import render as render_resource
from kuberec.backends.k8s.serving import MODEL_URI_ANNOTATION
from kuberec.backends.kubernetes import JobCancelled, JobTimeout, KubernetesBackend, KubernetesError
from kuberec.errors import KuberecError
from kuberec.settings import Settings

JOBS = {
    "spark": SparkJob("ingest fashion-mnist", "kuberec.ingest.fashion_mnist", ("--source", "/data"), executors=3),
    "horovod-cpu": HorovodJob("train similarity", "kuberec.similarity.train", ("--epochs", "2"), workers=2),
    "horovod-gpu": HorovodJob("train similarity", "kuberec.similarity.train", ("--epochs", "2"), workers=2,
                              slots_per_worker=4, gpus_per_worker=4),
    "ray": RayJob("tune widedeep", "kuberec.tuning.sweep", ("--trials", "8"), workers=3),
    "ray-gpu": RayJob("tune widedeep", "kuberec.tuning.sweep", ("--trials", "8"), workers=2, gpus_per_worker=1),
    "serving": ServingJob("similarity", "s3://kuberec/mlflow/1/abc/artifacts/model", max_replicas=3,
                          extra={"KUBEREC_TOP_K": "10"}),
}


@pytest.fixture
def backend_for(k8s_api_client, k8s_namespace, tmp_path):
    """A KubernetesBackend on the test server in this test's namespace, with an s3 lake as a cluster needs."""

    def make(**options) -> KubernetesBackend:
        settings = Settings(home=tmp_path / "home", lake_uri="s3://kuberec/lake", s3_endpoint="http://minio:9000",
                            namespace=k8s_namespace, backend="kubernetes")
        return KubernetesBackend(settings, ClusterOptions(**options), api_client=k8s_api_client)

    return make


@pytest.fixture
def backend(backend_for) -> KubernetesBackend:
    return backend_for()


@pytest.fixture
def progress_log(caplog):
    caplog.set_level(logging.INFO, logger="kuberec.backends.kubernetes")
    return caplog


# -- helpers ------------------------------------------------------------------------------------------------
class InThread:
    """Runs fn in a thread and keeps its result or exception."""

    def __init__(self, fn, *args):
        self.result = self.error = None
        self.thread = threading.Thread(target=self._target, args=(fn, *args), daemon=True)
        self.thread.start()

    def _target(self, fn, *args):
        try:
            self.result = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            self.error = err

    def join(self, timeout: float = 60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the backend was still waiting"
        return self


def wait_for_log(caplog, text: str, timeout: float = 30) -> None:
    """Block until the backend has logged `text` (so it has seen that state)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in record.getMessage() for record in caplog.records):
            return
        time.sleep(0.05)
    raise AssertionError(f"no log line with {text!r}; got {[r.getMessage() for r in caplog.records]}")


def logged_states(caplog, kind: str, name: str) -> list[str]:
    prefix = f"{kind} {name}: "
    return [r.getMessage()[len(prefix):] for r in caplog.records if r.getMessage().startswith(prefix)]


def render(backend: KubernetesBackend, job) -> dict:
    """The resource the backend creates for `job`, rendered with its settings and options."""
    return render_resource(job, backend.settings, backend.options)


def write_status(backend: KubernetesBackend, kind, name: str, status: dict) -> dict:
    """What the operator does: a merge patch of the status subresource."""
    return backend.api.patch_namespaced_custom_object_status(
        kind.group, kind.version, backend.namespace, kind.plural, name, {"status": status})


def exists(backend: KubernetesBackend, kind, name: str) -> bool:
    try:
        backend.get(kind, name)
        return True
    except KubernetesError as err:
        assert "404" in str(err)
        return False


def ts(seconds: int = 0) -> str:
    return (datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc) + timedelta(seconds=seconds)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def condition(type_: str, reason: str, message: str, at: int, status: str = "True") -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": ts(at), "lastUpdateTime": ts(at)}


# What each operator writes on the way to success, and its failure status (with the operator's message).
def spark_statuses(name: str) -> tuple[list[dict], dict, str]:
    driver = {"podName": f"{name}-driver", "webUIPort": 4040, "webUIServiceName": f"{name}-ui-svc"}
    steps = [
        {"applicationState": {"state": "SUBMITTED"}, "submissionAttempts": 1, "lastSubmissionAttemptTime": ts(1),
         "sparkApplicationId": "spark-1a2b", "submissionID": "5f1c", "driverInfo": driver},
        {"applicationState": {"state": "RUNNING"}, "executorState": {f"{name}-exec-1": "RUNNING",
                                                                     f"{name}-exec-2": "PENDING"}},
        {"applicationState": {"state": "SUCCEEDING"}, "executorState": {f"{name}-exec-1": "COMPLETED",
                                                                        f"{name}-exec-2": "COMPLETED"}},
        {"applicationState": {"state": "COMPLETED"}, "terminationTime": ts(60), "executionAttempts": 1},
    ]
    message = "driver container failed with ExitCode: 1, Reason: Error"
    failed = {"applicationState": {"state": "FAILED", "errorMessage": message}, "terminationTime": ts(30)}
    return steps, failed, message


def mpijob_statuses(name: str) -> tuple[list[dict], dict, str]:
    created = condition("Created", "MPIJobCreated", f"MPIJob {name} is created.", 1)
    running = condition("Running", "MPIJobRunning", f"MPIJob {name} is running.", 5)
    steps = [
        {"conditions": [created], "startTime": ts(1), "replicaStatuses": {"Launcher": {}, "Worker": {"active": 1}}},
        {"conditions": [created, running], "replicaStatuses": {"Launcher": {"active": 1}, "Worker": {"active": 2}}},
        {"conditions": [created, {**running, "status": "False"},
                        condition("Succeeded", "MPIJobSucceeded", f"MPIJob {name} successfully completed.", 90)],
         "completionTime": ts(90), "replicaStatuses": {"Launcher": {"succeeded": 1}, "Worker": {}}},
    ]
    message = "Job has reached the specified backoff limit"
    failed = {"conditions": [created, {**running, "status": "False"},
                             condition("Failed", "BackoffLimitExceeded", message, 40)],
              "replicaStatuses": {"Launcher": {"failed": 1}, "Worker": {}}}
    return steps, failed, message


def rayjob_statuses(name: str) -> tuple[list[dict], dict, str]:
    cluster = {"rayClusterName": f"{name}-raycluster-x7k2q", "jobId": f"{name}-8fj3k", "startTime": ts(1)}
    steps = [
        {"jobDeploymentStatus": "Initializing", **cluster},
        {"jobDeploymentStatus": "Running", "jobStatus": "PENDING", **cluster},
        {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", **cluster},
        {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": ts(300), **cluster},
    ]
    message = "Job entrypoint command failed with exit code 1"
    failed = {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "reason": "AppFailed", "message": message,
              "endTime": ts(120), **cluster}
    return steps, failed, message


STATUSES = {"SparkApplication": spark_statuses, "MPIJob": mpijob_statuses, "RayJob": rayjob_statuses}
FINAL_STATE = {"SparkApplication": "COMPLETED", "MPIJob": "Succeeded", "RayJob": "Complete"}
INITIAL_STATE = {"SparkApplication": "NEW", "MPIJob": "Pending", "RayJob": "New"}


def isvc_ready(generation: int, url: str) -> dict:
    ready = {"type": "Ready", "status": "True", "lastTransitionTime": ts(20)}
    return {"observedGeneration": generation, "url": url,
            "conditions": [{"type": "PredictorReady", "status": "True", "lastTransitionTime": ts(20)}, ready],
            "modelStatus": {"transitionStatus": "UpToDate", "copies": {"failedCopies": 0, "totalCopies": 1},
                            "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"}}}


class PredictorPods:
    """The predictor's pods as KServe's Deployment and the kubelet would make them: {pod: (model URI, ready)}.
    A stand-in for the pods API, which the test API server (apiextensions only) does not have; the real pods are
    followed on the real cluster (make e2e)."""

    def __init__(self, backend: KubernetesBackend):
        self.pods: dict[str, tuple[str, bool]] = {}
        backend.predictor_pods = lambda name: list(self.pods.values())


# -- every rendered resource is accepted -------------------------------------------------------------------
@pytest.mark.parametrize("job_id", sorted(JOBS))
def test_rendered_resource_is_accepted(backend, job_id):
    body = render(backend, JOBS[job_id])
    kind = KINDS[body["kind"]]
    name = body["metadata"]["name"]
    dry = backend.create(body, dry_run=True)
    assert dry["metadata"]["name"] == name and _contains(dry["spec"], body["spec"])
    assert not exists(backend, kind, name), "a server-side dry run must not store the object"
    stored = backend.create(body)
    assert stored["metadata"]["generation"] == 1
    assert backend.get(kind, name)["metadata"]["uid"] == stored["metadata"]["uid"]
    # What was sent survives validation and pruning (defaults may be added, nothing may be dropped).
    assert _contains(stored["spec"], body["spec"]), f"the server dropped or changed fields of {job_id}"


def _contains(actual, expected) -> bool:
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and _contains(actual[k], v) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(actual) == len(expected) and all(
            _contains(a, e) for a, e in zip(actual, expected))
    return actual == expected


@pytest.mark.parametrize("where", [("spec", "driver", "coreCount"), ("spec", "bogus")])
def test_strict_validation_rejects_unknown_fields(backend, where):
    body = render(backend, JOBS["spark"])
    target = body
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = 2
    with pytest.raises(KubernetesError, match=rf"unknown field.*{where[-1]}"):
        backend.create(body, dry_run=True)


def test_server_applies_operator_defaults(backend):
    """The stored MPIJob carries the CRD's defaults: proof the server validated it against the schema."""
    stored = backend.create(render(backend, JOBS["horovod-cpu"]))
    assert stored["spec"]["sshAuthMountPath"] == "/home/kuberec/.ssh"  # kuberec's (the default is /root/.ssh)
    assert stored["spec"]["runPolicy"]["suspend"] is False


# -- waiting through the operators' status transitions -----------------------------------------------------------
@pytest.mark.parametrize("job_id", ["spark", "horovod-gpu", "ray"])
def test_wait_follows_status_to_success(backend, progress_log, job_id):
    body = render(backend, JOBS[job_id])
    kind, name = KINDS[body["kind"]], body["metadata"]["name"]
    steps, _, _ = STATUSES[kind.kind](name)
    run = InThread(backend.run, body)
    wait_for_log(progress_log, f"{kind.kind} {name}: {INITIAL_STATE[kind.kind]}")
    for status in steps[:-1]:
        write_status(backend, kind, name, status)
    assert run.thread.is_alive(), "returned before the operator reported an end state"
    write_status(backend, kind, name, steps[-1])
    run.join()
    assert run.error is None, run.error
    assert kind.progress(run.result).succeeded
    states = logged_states(progress_log, kind.kind, name)
    assert states[0] == INITIAL_STATE[kind.kind] and states[-1].startswith(FINAL_STATE[kind.kind])
    assert len(states) == len(steps) + 1, states  # every change was seen and reported once
    assert exists(backend, kind, name), "a finished resource is left to the operator's cleanup"


@pytest.mark.parametrize("job_id", ["spark", "horovod-cpu", "ray"])
def test_wait_surfaces_operator_failure(backend, progress_log, job_id):
    body = render(backend, JOBS[job_id])
    kind, name = KINDS[body["kind"]], body["metadata"]["name"]
    steps, failed, message = STATUSES[kind.kind](name)
    run = InThread(backend.run, body)
    wait_for_log(progress_log, f"{kind.kind} {name}: {INITIAL_STATE[kind.kind]}")
    write_status(backend, kind, name, steps[0])
    write_status(backend, kind, name, failed)
    run.join()
    assert isinstance(run.error, JobFailed)
    assert message in str(run.error) and name in str(run.error)
    assert exists(backend, kind, name), "a failed resource is kept for kubectl describe"


def test_rayjob_deployment_failure(backend, progress_log):
    body = render(backend, JOBS["ray"])
    name = body["metadata"]["name"]
    run = InThread(backend.run, body)
    wait_for_log(progress_log, f"RayJob {name}: New")
    write_status(backend, KINDS["RayJob"], name, {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded",
                                                  "message": "The RayJob has passed activeDeadlineSeconds"})
    run.join()
    assert isinstance(run.error, JobFailed) and "DeadlineExceeded: The RayJob has passed" in str(run.error)


def test_mpijob_restarting_is_not_final(backend, progress_log):
    body = render(backend, JOBS["horovod-cpu"])
    kind, name = KINDS["MPIJob"], body["metadata"]["name"]
    steps, _, _ = mpijob_statuses(name)
    run = InThread(backend.run, body)
    wait_for_log(progress_log, f"MPIJob {name}: Pending")
    restarting = condition("Restarting", "MPIJobRestarting", "worker pod restarted", 30)
    write_status(backend, kind, name, {"conditions": [*steps[1]["conditions"], restarting]})
    wait_for_log(progress_log, f"MPIJob {name}: Restarting")
    assert run.thread.is_alive()
    write_status(backend, kind, name, steps[-1])
    run.join()
    assert run.error is None, run.error


@pytest.mark.parametrize("on_cancel", ["delete", "keep"])
def test_timeout(backend_for, progress_log, on_cancel):
    backend = backend_for(timeout_s=2, on_cancel=on_cancel)
    body = render(backend, JOBS["spark"])
    name = body["metadata"]["name"]
    run = InThread(backend.run, body)
    wait_for_log(progress_log, f"SparkApplication {name}: NEW")
    write_status(backend, KINDS["SparkApplication"], name, spark_statuses(name)[0][0])
    run.join()
    assert isinstance(run.error, JobTimeout)
    assert "within 2 s" in str(run.error) and "last state: SUBMITTED" in str(run.error)
    assert exists(backend, KINDS["SparkApplication"], name) == (on_cancel == "keep")


@pytest.mark.parametrize(("signum", "on_cancel"), [(signal.SIGTERM, "delete"), (signal.SIGINT, "keep")])
def test_cancel_by_signal(backend_for, progress_log, signum, on_cancel):
    """A real signal to the main thread while it waits (Ctrl-C is SIGINT; a stopped pod gets SIGTERM)."""
    backend = backend_for(on_cancel=on_cancel)
    body = render(backend, JOBS["horovod-cpu"])
    name = body["metadata"]["name"]
    main = threading.main_thread().ident

    def interrupt():
        wait_for_log(progress_log, f"MPIJob {name}: Pending")
        signal.pthread_kill(main, signum)

    InThread(interrupt)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(JobCancelled) as raised:
        backend.run(body)
    assert signal.getsignal(signal.SIGTERM) is previous, "the SIGTERM handler must be restored"
    assert ("deleted it" if on_cancel == "delete" else "kept it") in str(raised.value)
    assert exists(backend, KINDS["MPIJob"], name) == (on_cancel == "keep")


def test_resource_deleted_while_waiting(backend, progress_log):
    body = render(backend, JOBS["ray"])
    name = body["metadata"]["name"]
    run = InThread(backend.run, body)
    wait_for_log(progress_log, f"RayJob {name}: New")
    backend.delete(KINDS["RayJob"], name)
    run.join()
    assert isinstance(run.error, JobFailed) and "was deleted" in str(run.error)


# -- jobs whose step has stopped --------------------------------------------------------------------------------
def test_reap_deletes_the_unfinished_jobs_whose_steps_pod_has_stopped(backend, monkeypatch, caplog):
    """What the cluster's kuberec-reaper does after a terminated Kubeflow Pipelines run. The steps' pods are a
    stand-in (`pod_phase`): the test API server has no pods API. The real reaper, pods and run are tested on the
    cluster (tests/cluster/test_kfp.py)."""
    caplog.set_level(logging.INFO, logger="kuberec.backends.kubernetes")
    phases = {"kubeflow/running-step": "Running", "kubeflow/failed-step": "Failed", "kubeflow/done-step": "Succeeded"}
    backend.pod_phase = phases.get  # "kubeflow/deleted-step" is gone

    def created_from(pod: str | None, job) -> tuple[object, str]:
        if pod:
            monkeypatch.setenv(POD_NAMESPACE_ENV, "kubeflow")
            monkeypatch.setenv(POD_NAME_ENV, pod)
        else:
            monkeypatch.delenv(POD_NAMESPACE_ENV, raising=False)
            monkeypatch.delenv(POD_NAME_ENV, raising=False)
        body = render(backend, job)
        assert body["metadata"].get("annotations") == ({CREATED_BY_POD: f"kubeflow/{pod}"} if pod else None)
        backend.create(body)
        return KINDS[body["kind"]], body["metadata"]["name"]

    orphans = [created_from(pod, JOBS[job]) for pod, job in
               (("failed-step", "horovod-cpu"), ("done-step", "spark"), ("deleted-step", "ray"))]
    waited_for = created_from("running-step", JOBS["horovod-cpu"])
    finished = created_from("failed-step", JOBS["spark"])
    steps, _, _ = spark_statuses(finished[1])
    for status in steps:
        write_status(backend, *finished, status)
    from_a_terminal = created_from(None, JOBS["ray"])  # `kuberec` run by a person: no pod to follow

    assert sorted(backend.reap()) == sorted(f"{kind.plural}/{name}" for kind, name in orphans)
    assert [exists(backend, *job) for job in orphans] == [False, False, False]
    assert all(exists(backend, *job) for job in (waited_for, finished, from_a_terminal))
    said = [record.getMessage() for record in caplog.records if record.getMessage().startswith("deleted ")]
    assert any(orphans[0][1] in line and "kubeflow/failed-step, has ended (Failed)" in line for line in said), said
    assert any(orphans[2][1] in line and "kubeflow/deleted-step, is gone" in line for line in said), said
    assert backend.reap() == []


# -- InferenceService rollout --------------------------------------------------------------------------------------
def test_deploy_then_roll_out_new_version(backend, progress_log):
    pods = PredictorPods(backend)
    job = JOBS["serving"]
    name = render(backend, job)["metadata"]["name"]
    url = f"http://{name}.{backend.namespace}.example.com"
    first = InThread(backend.deploy, job)
    wait_for_log(progress_log, f"InferenceService {name}: ")
    write_status(backend, INFERENCE_SERVICE, name, {
        "observedGeneration": 1, "conditions": [{"type": "Ready", "status": "False", "reason": "PredictorNotReady",
                                                 "lastTransitionTime": ts(1)}],
        "modelStatus": {"transitionStatus": "InProgress", "states": {"activeModelState": "Loading"}}})
    wait_for_log(progress_log, f"InferenceService {name}: NotReady (PredictorNotReady)")
    assert first.thread.is_alive()
    write_status(backend, INFERENCE_SERVICE, name, isvc_ready(1, url))
    pods.pods["old"] = (job.model_uri, True)
    first.join()
    assert first.error is None and first.result == url

    # Version 2: the old Ready status must not count for the new spec; the pods say when it serves.
    second_job = ServingJob(job.name, "s3://kuberec/mlflow/1/def/artifacts/model", extra=job.extra)
    progress_log.clear()
    second = InThread(backend.deploy, second_job)
    wait_for_log(progress_log, f"updated InferenceService {backend.namespace}/{name}")
    current = backend.get(INFERENCE_SERVICE, name)
    assert current["metadata"]["generation"] == 2
    assert current["spec"]["predictor"]["model"]["storageUri"] == second_job.model_uri
    assert current["metadata"]["annotations"]["kuberec.io/model-uri"] == second_job.model_uri
    assert second.thread.is_alive()
    # KServe keeps the service Ready during the rollout while the old pod serves: not done yet (make e2e found
    # deploy returning here, and the next requests answered by the old model).
    write_status(backend, INFERENCE_SERVICE, name, isvc_ready(2, url))
    pods.pods["new"] = (second_job.model_uri, False)  # loading the model
    time.sleep(2)
    assert second.thread.is_alive()
    pods.pods["new"] = (second_job.model_uri, True)  # loaded...
    time.sleep(2)
    assert second.thread.is_alive()
    del pods.pods["old"]  # ...and the old pod is gone
    second.join()
    assert second.error is None and second.result == url
    wait_for_log(progress_log, f"InferenceService {name}: 1 pod(s) serve {second_job.model_uri}")


def test_deploy_failed_model_load(backend, progress_log):
    job = JOBS["serving"]
    name = render(backend, job)["metadata"]["name"]
    run = InThread(backend.deploy, job)
    wait_for_log(progress_log, f"InferenceService {name}: ")
    message = "Failed to load model: mlflow.exceptions.MlflowException: Could not find an 'MLmodel' configuration file"
    write_status(backend, INFERENCE_SERVICE, name, {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "False", "reason": "ModelLoadFailed", "lastTransitionTime": ts(5)}],
        "modelStatus": {"transitionStatus": "BlockedByFailedLoad",
                        "states": {"activeModelState": "", "targetModelState": "FailedToLoad"},
                        "lastFailureInfo": {"reason": "ModelLoadFailed", "message": message, "time": ts(5)}}})
    run.join()
    assert isinstance(run.error, JobFailed)
    assert f"ModelLoadFailed: {message}" in str(run.error)


def test_deploy_timeout_keeps_existing_service(backend_for, progress_log):
    backend = backend_for(serving_timeout_s=2)
    pods = PredictorPods(backend)
    job = JOBS["serving"]
    name = render(backend, job)["metadata"]["name"]
    url = f"http://{name}.example.com"
    first = InThread(backend.deploy, job)
    wait_for_log(progress_log, f"InferenceService {name}: ")
    write_status(backend, INFERENCE_SERVICE, name, isvc_ready(1, url))
    pods.pods["first"] = (job.model_uri, True)
    first.join()
    # A rollout that never gets ready: the service that was serving stays.
    with pytest.raises(JobTimeout, match="left the existing service"):
        backend.deploy(ServingJob(job.name, "s3://kuberec/models/broken"))
    assert exists(backend, INFERENCE_SERVICE, name)
    # A new service that never gets ready is removed (on_cancel=delete).
    with pytest.raises(JobTimeout, match="deleted it"):
        backend.deploy(ServingJob("other", "s3://kuberec/models/other"))
    assert not exists(backend, INFERENCE_SERVICE, "other")


class FakeKServe:
    """What KServe and the kubelet do for a canary, at once: every InferenceService and InferenceGraph generation is
    made Ready, the predictors' pods serve the stored spec's models, and the router runs the stored split. The test
    API server has no Deployments, pods or HorizontalPodAutoscalers (PredictorPods says why); the real ones are
    followed on the cluster (benchmarks/canary_rollout.py). `steps` records what was served after each change, in
    order."""

    def __init__(self, backend: KubernetesBackend):
        self.backend = backend
        self.steps: list[tuple[str, object]] = []
        self.seen: dict[str, int] = {}
        self.served: dict[str, dict[str, str]] = {}  # what each service's pods serve, as last reconciled
        self.stopping = threading.Event()
        backend.predictor_pods = self.pods
        backend.router_shares = self.shares
        self.deleted_autoscalers: list[str] = []
        backend.delete_canary_autoscaler = self.deleted_autoscalers.append
        self.thread = threading.Thread(target=self._reconcile, daemon=True)
        self.thread.start()

    def _objects(self, kind) -> list[dict]:
        return self.backend.api.list_namespaced_custom_object(
            kind.group, kind.version, self.backend.namespace, kind.plural)["items"]

    def _reconcile(self) -> None:
        while not self.stopping.is_set():
            for kind in (INFERENCE_SERVICE, INFERENCE_GRAPH):
                for obj in self._objects(kind):
                    name, generation = obj["metadata"]["name"], obj["metadata"]["generation"]
                    if self.seen.get(f"{kind.kind}/{name}") == generation:
                        continue
                    self.seen[f"{kind.kind}/{name}"] = generation
                    if kind is INFERENCE_SERVICE:
                        self.served[name] = self._served(obj)
                        self.steps.append(("serving", self.served[name]))
                        write_status(self.backend, kind, name, isvc_ready(generation, f"http://{name}.example"))
                    else:
                        self.steps.append(("split", self._split(obj)))
                        write_status(self.backend, kind, name, {"url": f"http://{name}.ns.svc.cluster.local",
                                                                "conditions": [{"type": "Ready", "status": "True"}]})
            time.sleep(0.05)

    @staticmethod
    def _served(isvc: dict) -> dict[str, str]:
        served = {"stable": isvc["spec"]["predictor"]["model"]["storageUri"]}
        for canary in isvc["spec"].get("canary") or []:
            served[canary["predictor"]["name"]] = canary["predictor"]["model"]["storageUri"]
        return served

    @staticmethod
    def _split(graph: dict) -> dict[str, int]:
        return {step["name"]: step["weight"] for step in graph["spec"]["nodes"]["root"]["steps"]}

    def pods(self, name: str) -> list[tuple[str, bool]]:
        return [(uri, True) for uri in self.served.get(name, {}).values()]

    def shares(self, name: str) -> dict[str, int] | None:
        graph = self.backend.get(INFERENCE_GRAPH, name)
        return self._split(graph) if self.seen.get(f"InferenceGraph/{name}") == graph["metadata"]["generation"] \
            else None

    def settle(self, timeout: float = 10) -> None:
        """Until every stored generation has been reconciled (the last step of a command is not waited for when
        the pods serve the same model either way: removing a canary of the stable model)."""
        deadline = time.monotonic() + timeout
        while any(self.seen.get(f"{kind.kind}/{obj['metadata']['name']}") != obj["metadata"]["generation"]
                  for kind in (INFERENCE_SERVICE, INFERENCE_GRAPH) for obj in self._objects(kind)):
            assert time.monotonic() < deadline, "not reconciled"
            time.sleep(0.05)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)


@pytest.fixture
def kserve(backend):
    fake = FakeKServe(backend)
    yield fake
    fake.stop()


def test_canary_then_promote(backend, kserve, progress_log):
    stable, new = "s3://kuberec/m/1", "s3://kuberec/m/2"
    backend.deploy(ServingJob("similarity", stable, extra={"KUBEREC_TOP_K": "10"}))
    url = backend.deploy(ServingJob("similarity", new), canary_percent=10)
    assert url == f"http://similarity-split.{backend.namespace}.svc.cluster.local"
    isvc = backend.get(INFERENCE_SERVICE, "similarity")
    assert isvc["spec"]["canary"][0]["trafficPercent"] == 10
    # The stable model keeps its settings; the canary gets the same ones.
    assert isvc["spec"]["canary"][0]["predictor"]["model"]["env"] == [{"name": "KUBEREC_TOP_K", "value": "10"}]
    graph = backend.get(INFERENCE_GRAPH, "similarity-split")
    assert graph["metadata"]["ownerReferences"][0]["uid"] == isvc["metadata"]["uid"]
    backend.deploy(ServingJob("similarity", new), canary_percent=30)  # a bigger share, the same canary
    assert kserve.steps[-1] == ("split", {"stable": 70, "canary": 30})
    with pytest.raises(KuberecError, match="has a canary .*promote it or roll it back first"):
        backend.deploy(ServingJob("similarity", "s3://kuberec/m/3"))
    with pytest.raises(KuberecError, match="has a canary of s3://kuberec/m/2"):
        backend.deploy(ServingJob("similarity", "s3://kuberec/m/3"), canary_percent=10)

    kserve.steps.clear()
    backend.promote("similarity")
    kserve.settle()
    # Every request goes to the canary before the stable pods change model, and back only once they serve it.
    assert kserve.steps == [
        ("split", {"canary": 100}),
        ("serving", {"stable": new, "canary": new}),
        ("split", {"stable": 100}),
        ("serving", {"stable": new}),
    ]
    isvc = backend.get(INFERENCE_SERVICE, "similarity")
    assert "canary" not in isvc["spec"] and isvc["metadata"]["annotations"][MODEL_URI_ANNOTATION] == new
    assert kserve.deleted_autoscalers == ["similarity"]  # the one KServe leaves behind
    assert isvc["spec"]["predictor"]["model"]["env"] == [{"name": "KUBEREC_TOP_K", "value": "10"}]
    with pytest.raises(KuberecError, match="has no canary to promote"):
        backend.promote("similarity")


def test_canary_rolled_back(backend, kserve):
    stable = "s3://kuberec/m/1"
    backend.deploy(ServingJob("widedeep", stable, max_replicas=2))
    backend.deploy(ServingJob("widedeep", "s3://kuberec/m/2"), canary_percent=10)
    kserve.steps.clear()
    backend.rollback("widedeep")
    kserve.settle()
    assert kserve.steps == [("split", {"stable": 100}), ("serving", {"stable": stable})]
    isvc = backend.get(INFERENCE_SERVICE, "widedeep")
    assert "canary" not in isvc["spec"] and isvc["spec"]["predictor"]["maxReplicas"] == 2
    with pytest.raises(KuberecError, match="has no canary to roll back"):
        backend.rollback("widedeep")


def test_canary_needs_another_version_of_a_served_model(backend, kserve):
    with pytest.raises(KuberecError, match=r"no InferenceService .*/similarity: deploy a model first"):
        backend.deploy(ServingJob("similarity", "s3://kuberec/m/1"), canary_percent=10)
    backend.deploy(ServingJob("similarity", "s3://kuberec/m/1"))
    with pytest.raises(KuberecError, match="serves s3://kuberec/m/1 already"):
        backend.deploy(ServingJob("similarity", "s3://kuberec/m/1"), canary_percent=10)


def test_a_replica_change_is_done_when_the_pods_serve(backend, kserve):
    """In Standard mode KServe's observedGeneration is its Deployment's, which a replica change does not move: the
    rollout is judged by the pods, not by a status that never catches up."""
    backend.deploy(ServingJob("widedeep", "s3://kuberec/m/1"))
    kserve.stop()  # no more status writes; the pods serve what they served
    backend.deploy(ServingJob("widedeep", "s3://kuberec/m/1", max_replicas=2))
    assert backend.get(INFERENCE_SERVICE, "widedeep")["spec"]["predictor"]["maxReplicas"] == 2


def test_a_canary_that_fails_to_load_fails_the_command(backend, kserve, progress_log):
    backend.deploy(ServingJob("similarity", "s3://kuberec/m/1"))
    kserve.stop()
    backend.predictor_pods = lambda name: [("s3://kuberec/m/1", True), ("s3://kuberec/m/2", False)]
    run = InThread(backend.deploy, ServingJob("similarity", "s3://kuberec/m/2"), 10)
    wait_for_log(progress_log, "InferenceService similarity: pods ready s3://kuberec/m/1; starting s3://kuberec/m/2")
    message = "Failed to load model: no MLmodel file"
    write_status(backend, INFERENCE_SERVICE, "similarity", {"modelStatus": {
        "transitionStatus": "BlockedByFailedLoad",
        "states": {"activeModelState": "", "targetModelState": "FailedToLoad"},
        "lastFailureInfo": {"reason": "ModelLoadFailed", "message": message, "time": ts(5)}}})
    run.join()
    assert isinstance(run.error, JobFailed) and f"ModelLoadFailed: {message}" in str(run.error)


# -- the CLI ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "options"), [
    ("sparkapplication", ["--module", "kuberec.ingest.fashion_mnist", "--args", "--max-per-split 10"]),
    ("mpijob", ["--module", "kuberec.similarity.train", "--workers", "3", "--gpus-per-worker", "1"]),
    ("rayjob", ["--module", "kuberec.tuning.sweep"]),
    ("inferenceservice", ["--name", "similarity", "--model-uri", "s3://kuberec/m/1"]),
])
def test_cli_render_prints_an_accepted_resource(kind, options, backend, monkeypatch, capsys):
    import yaml

    from kuberec import cli

    monkeypatch.setenv("KUBEREC_LAKE", "s3://kuberec/lake")
    monkeypatch.setenv("KUBEREC_NAMESPACE", backend.namespace)
    assert cli.main(["k8s", "render", kind, *options]) == 0
    body = yaml.safe_load(capsys.readouterr().out)
    assert body["kind"].lower() == kind
    backend.create(body, dry_run=True)


def test_cli_deploy_uses_the_kubeconfig(apiserver, backend, progress_log, settings, monkeypatch, capsys):
    """`kuberec k8s deploy` end to end: credentials from KUBECONFIG, create, wait for Ready, print the URL."""
    from kuberec import cli

    monkeypatch.setenv("KUBECONFIG", str(apiserver.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBEREC_LAKE", "s3://kuberec/lake")
    monkeypatch.setenv("KUBEREC_NAMESPACE", backend.namespace)
    # The predictor's pod, loaded (the test API server has no pods API: PredictorPods says more).
    monkeypatch.setattr(KubernetesBackend, "predictor_pods", lambda self, name: [("s3://kuberec/m/7", True)])
    run = InThread(cli.main, ["k8s", "deploy", "widedeep", "--model-uri", "s3://kuberec/m/7"])
    wait_for_log(progress_log, "InferenceService widedeep: ")
    write_status(backend, INFERENCE_SERVICE, "widedeep", isvc_ready(1, "http://widedeep.example.com"))
    run.join()
    assert run.result == 0, run.error
    assert "InferenceService widedeep ready at http://widedeep.example.com" in capsys.readouterr().out
