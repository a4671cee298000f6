"""kuberec's pipelines on a Kubeflow Pipelines server, as a dashboard user meets them: uploaded (a new version each
time), started from that version as kuberec-runner, watched to the end, and read back task by task (pod, state,
seconds). `make e2e` (tests/e2e/driver.py) and the cluster tests use it through a port-forward to KFP's UI, which
serves the API too, so the URLs it prints open in a browser on this machine."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipelines.run import EXPERIMENT, KFP_HOST_ENV, SERVICE_ACCOUNT, SUMMARY_MARK
from tests.e2e.cluster_access import ClusterAccess

KFP_NAMESPACE = "kubeflow"  # standalone Kubeflow Pipelines: its server and every run's pods
UI_SERVICE, UI_PORT = "svc/ml-pipeline-ui", 80
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELING")
# A task's component pod in the Argo workflow: node `<workflow>(0).root(0).<task>(0).executor(0)`
EXECUTOR_NODE = re.compile(r"\.([^.()]+)(?:\(\d+\))?\.executor(?:\(\d+\))?$")


@dataclass
class TaskReport:
    """One task of a run as the KFP API reports it."""

    name: str
    state: str
    seconds: float | None
    pods: list[str] = field(default_factory=list)
    error: str = ""


@dataclass
class RunReport:
    pipeline: str
    run_id: str
    url: str
    state: str
    seconds: float
    version: str
    tasks: list[TaskReport] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "SUCCEEDED"


class KfpServer:
    """A kfp.Client on `host` (the UI's address: it proxies the API) with the calls a dashboard user makes."""

    def __init__(self, host: str):
        import kfp

        self.host = host.rstrip("/")
        self.client = kfp.Client(host=self.host)

    def upload(self, name: str, env: dict[str, str]) -> dict[str, str]:
        """Pipeline `name` compiled and uploaded (a new version after the first upload) by `make pipeline-upload`'s
        command with the environment `env`: the components' image is fixed when compiling, from its settings."""
        done = subprocess.run([sys.executable, "-m", "pipelines.run", name, "--upload"], capture_output=True,
                              text=True, env={**env, KFP_HOST_ENV: self.host}, timeout=600)
        if done.returncode != 0 or SUMMARY_MARK not in done.stdout:
            raise RuntimeError(f"uploading {name} failed: {done.stderr.strip()[-2000:]}")
        return json.loads(done.stdout.split(SUMMARY_MARK, 1)[1])[name]

    def start(self, name: str, uploaded: dict[str, str], params: dict[str, Any],
              service_account: str | None = SERVICE_ACCOUNT) -> str:
        """A run of the uploaded version in the kuberec experiment; its id."""
        experiment = self.client.create_experiment(EXPERIMENT)
        run = self.client.run_pipeline(
            experiment_id=experiment.experiment_id, job_name=f"{name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}",
            params=params, pipeline_id=uploaded["pipeline_id"], version_id=uploaded["version_id"],
            service_account=service_account)
        return run.run_id

    def wait(self, run_id: str, timeout_s: float, poll_s: float = 10) -> str:
        """The run's final state (or its state when `timeout_s` ran out)."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = str(self.client.get_run(run_id).state)
            if state in FINAL_STATES or time.monotonic() > deadline:
                return state
            time.sleep(poll_s)

    def terminate(self, run_id: str) -> None:
        self.client.terminate_run(run_id)

    def report(self, name: str, run_id: str, version: str, pods: dict[str, list[str]] | None = None) -> RunReport:
        """The run and each task of its pipeline (the tasks its spec names: the API also reports drivers, DAGs and
        Argo's nodes), with the pods `pods` maps the task names to (task_pods)."""
        run = self.client.get_run(run_id)
        details = {task.display_name: task for task in (run.run_details.task_details if run.run_details else None)
                   or []}
        tasks = []
        for task_name in self.task_names(run):
            task = details.get(task_name)
            state = str(task.state) if task and task.state else "NOT RUN"
            ran = state != "NOT RUN"
            tasks.append(TaskReport(task_name, state, _seconds(task.start_time, task.end_time) if ran else None,
                                    (pods or {}).get(task_name, []), _message(task.error) if task else ""))
        return RunReport(name, run_id, self.run_url(run_id), str(run.state),
                         _seconds(run.created_at, run.finished_at) or 0.0, version, tasks, _message(run.error))

    def task_names(self, run) -> list[str]:
        """The tasks of the run's pipeline version, in the order of its spec."""
        ref = run.pipeline_version_reference
        spec = self.client.get_pipeline_version(ref.pipeline_id, ref.pipeline_version_id).pipeline_spec or {}
        spec = spec.get("pipeline_spec", spec)  # with a platform spec, the pipeline's is one level down
        return list(spec.get("root", {}).get("dag", {}).get("tasks", {}))

    def run_url(self, run_id: str) -> str:
        return f"{self.host}/#/runs/details/{run_id}"


def task_pods(access: ClusterAccess, run_id: str) -> dict[str, list[str]]:
    """Task name -> the pods that ran its component (Argo names each pod's node `<workflow>.root.<task>.executor`)."""
    found = subprocess.run([str(access.kubectl), "--kubeconfig", str(access.kubeconfig), "-n", KFP_NAMESPACE, "get",
                            "pods", "-l", f"pipeline/runid={run_id}", "-o", "json"], capture_output=True, text=True,
                           timeout=60, check=True)
    pods: dict[str, list[str]] = {}
    for pod in json.loads(found.stdout)["items"]:
        node = pod["metadata"].get("annotations", {}).get("workflows.argoproj.io/node-name", "")
        match = EXECUTOR_NODE.search(node)
        if match:
            pods.setdefault(match[1], []).append(pod["metadata"]["name"])
    return pods


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if not start or not end or end.year < 2000:  # KFP reports an unfinished end as the zero time
        return None
    return round((end - start).total_seconds(), 1)


def _message(error: Any) -> str:
    return (getattr(error, "message", None) or "") if error else ""
