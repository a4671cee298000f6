"""kuberec's pipelines on a Kubeflow Pipelines server, as a dashboard user meets them: uploaded (a new version each
time), started from that version as kuberec-runner, watched to the end, and read back task by task (pod, state,
seconds). `make e2e` (tests/e2e/driver.py) and the cluster tests use it through a port-forward to KFP's UI, which
serves the API too, so the URLs it prints open in a browser on this machine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kuberec.settings import load_settings
from pipelines.run import EXPERIMENT, SERVICE_ACCOUNT, load_pipeline, upload

KFP_NAMESPACE = "kubeflow"  # standalone Kubeflow Pipelines: its server and every run's pods
UI_SERVICE, UI_PORT = "svc/ml-pipeline-ui", 80
FINAL_STATES = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELING")
# Tasks of the run graph that are KFP's own bookkeeping (the root DAG, the drivers), not a component's pod.
SYSTEM_TASK = ("root", "executor", "root-driver")


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

    def upload(self, name: str, out_dir: Path) -> dict[str, str]:
        """Pipeline `name` compiled and uploaded (a new version after the first upload), as `make pipeline-upload`."""
        return upload(name, self.host, out_dir)

    def start(self, name: str, uploaded: dict[str, str], params: dict[str, Any],
              service_account: str | None = SERVICE_ACCOUNT) -> str:
        """A run of the uploaded version in the kuberec experiment; its id."""
        experiment = self.client.create_experiment(EXPERIMENT)
        run = self.client.run_pipeline(
            experiment_id=experiment.experiment_id, job_name=f"{name}-{load_settings().image_tag}-e2e",
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

    def report(self, name: str, run_id: str, version: str) -> RunReport:
        run = self.client.get_run(run_id)
        tasks = []
        for task in (run.run_details.task_details if run.run_details else None) or []:
            if task.display_name in SYSTEM_TASK or task.display_name.endswith("-driver"):
                continue
            pods = [child.pod_name for child in (task.child_tasks or []) if child.pod_name]
            tasks.append(TaskReport(task.display_name, str(task.state), _seconds(task.start_time, task.end_time),
                                    pods, _message(task.error)))
        tasks.sort(key=lambda t: t.name)
        return RunReport(name, run_id, self.run_url(run_id), str(run.state),
                         _seconds(run.created_at, run.finished_at) or 0.0, version, tasks, _message(run.error))

    def run_url(self, run_id: str) -> str:
        return f"{self.host}/#/runs/details/{run_id}"


def pipeline_description(name: str) -> str:
    return load_pipeline(name).description or ""


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if not start or not end or end.year < 2000:  # KFP reports an unfinished end as the zero time
        return None
    return round((end - start).total_seconds(), 1)


def _message(error: Any) -> str:
    return (getattr(error, "message", None) or "") if error else ""
