"""`make e2e`: both pipelines end to end on a real cluster, then both models served by KServe, asked and rolled out.

    python -m tests.e2e.driver [--similarity name=value ...] [--widedeep name=value ...] [--lake s3://kuberec/e2e]
                            [--only similarity|widedeep] [--serve-only] [--runner kfp|docker|subprocess]

On the cluster of `make cluster-up` (or the one KUBECONFIG names, with kuberec and Kubeflow Pipelines installed):
MinIO, MLflow and the Kubeflow Pipelines UI are reached through `kubectl port-forward` on 127.0.0.1. By default
(`--runner kfp`) both pipelines are uploaded to the Kubeflow Pipelines server (a new version each time) and run
there from that version as kuberec-runner, every component a KFP task pod in kuberec's image with the settings of
the kuberec-settings ConfigMap (its lake, not --lake); `--runner docker` runs them with KFP's local DockerRunner
instead (each component in kuberec's runtime image on the Docker daemon that holds kuberec's images: the cluster's
own for make cluster-up, else DOCKER_HOST), for a cluster without Kubeflow Pipelines. Either way every Spark,
Horovod and Ray step is a SparkApplication, MPIJob or RayJob run by its operator. Then each registered champion is
rolled out as an InferenceService (`kuberec k8s deploy`) and asked through a port-forward to its predictor with
`kuberec recommend --url` (by item id and by image; for a user), sent the bad requests the local server refuses
(the same 4xx), and rolled back to the previous version and forward again under a load of 8 clients through the
Service (`kubectl proxy`), with no failed request.

Prints one summary (each pipeline's state, wall time and metrics, on Kubeflow Pipelines each task's state, seconds
and pod; each custom resource the run created with its final state, wall time and the operator's message when it
failed; each endpoint and its answer; the load during the rollouts), writes it as JSON to <home>/e2e/summary.json,
and exits non-zero when anything failed, naming it.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kuberec.backends.k8s.kinds import INFERENCE_SERVICE, KINDS
from kuberec.backends.k8s.naming import CREATED_BY_POD
from kuberec.models import MODELS
from kuberec.serving.refusals import bad_requests
from kuberec.settings import load_settings
from pipelines.run import RUNNERS, SUMMARY_MARK, parse_params
from tests.e2e.cluster_access import ClusterAccess
from tests.e2e.kfp_runs import KFP_NAMESPACE, UI_PORT, UI_SERVICE, KfpServer, task_pods

log = logging.getLogger("e2e")

PIPELINES = tuple(MODELS)  # each model's pipeline has the model's name
PIPELINE_TIMEOUT_S = 4 * 3600
ROLLOUT_CLIENTS = 8
ROLLOUT_PAUSE_S = 5  # of load before, between and after the two rollouts
TAIL_LINES = 8  # of a failed command's error lines, in the summary
# The lines of a command's output that say what failed, at any indentation (a component's log comes indented by
# KFP's local runner): an exception's last line, a program's `<prog>: error:` line, KFP's failed-task line.
FAILURE_LINE = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception): |[\w.]+: error: |.*Task .* finished "
                          r"with status FAILURE)")
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Outcome:
    """One thing the run did (a pipeline, a deployment, a query): ok, how long, what it said."""

    what: str
    ok: bool
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def run_command(what: str, args: list[str], env: dict[str, str], timeout: float) -> tuple[Outcome, str]:
    """Run `args`, passing its output (the steps' logs) on to ours as it comes; (outcome, its stdout). A failure's
    error is the last lines of its output that say what failed (FAILURE_LINE: the step's and the operator's
    words), or its last lines when none does."""
    started = time.monotonic()
    log.info("%s: %s", what, " ".join(args))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    failures: deque[str] = deque(maxlen=TAIL_LINES)
    last: deque[str] = deque(maxlen=3)
    stdout: list[str] = []

    def relay(stream, to, keep: list[str] | None) -> None:
        for line in stream:
            to.write(line)
            if keep is not None:
                keep.append(line)
            plain = ANSI_CODE.sub("", line).strip()
            if plain:
                last.append(plain)
                if FAILURE_LINE.match(plain) and plain not in failures:
                    failures.append(plain)

    relays = [threading.Thread(target=relay, args=(proc.stdout, sys.stdout, stdout), daemon=True),
              threading.Thread(target=relay, args=(proc.stderr, sys.stderr, None), daemon=True)]
    for thread in relays:
        thread.start()
    # SIGTERM when over time: the Kubernetes backend then deletes (or keeps, as configured) the running resource.
    expired = threading.Timer(timeout, proc.terminate)
    expired.start()
    proc.wait()
    expired.cancel()
    for thread in relays:
        thread.join(timeout=10)
    seconds = round(time.monotonic() - started, 1)
    tail = list(failures or last)
    if seconds >= timeout:
        tail.append(f"timed out after {timeout:.0f} s")
    if proc.returncode != 0:
        return Outcome(what, False, seconds, error="\n".join(tail)), "".join(stdout)
    return Outcome(what, True, seconds), "".join(stdout)


def run_pipeline(name: str, params: list[str], env: dict[str, str], runner: str) -> Outcome:
    args = [sys.executable, "-m", "pipelines.run", name, f"--runner={runner}", *(f"--param={p}" for p in params)]
    outcome, stdout = run_command(f"pipeline {name}", args, env, PIPELINE_TIMEOUT_S)
    if SUMMARY_MARK in stdout:
        text = stdout.split(SUMMARY_MARK, 1)[1]
        outcome.detail = json.loads(text[:text.rindex("}") + 1]).get(name, {})
    return outcome


def run_on_kfp(server: KfpServer, access: ClusterAccess, name: str, params: list[str], env: dict[str, str]) -> Outcome:
    """Upload pipeline `name` to Kubeflow Pipelines, start a run of that version as kuberec-runner and wait for it;
    the outcome lists every task (state, seconds, pod)."""
    started = time.monotonic()
    what = f"pipeline {name} on Kubeflow Pipelines"
    try:
        uploaded = server.upload(name, env)
        run_id = server.start(name, uploaded, parse_params(name, params))
    except Exception as err:  # noqa: BLE001  (the summary names whatever stopped the upload or the start)
        return Outcome(what, False, round(time.monotonic() - started, 1), error=f"{type(err).__name__}: {err}")
    log.info("%s: run %s (%s)", what, run_id, server.run_url(run_id))
    state = server.wait(run_id, PIPELINE_TIMEOUT_S)
    report = server.report(name, run_id, uploaded["version"], task_pods(access, run_id))
    detail = {"run": report.url, "version": report.version, "state": state,
              "tasks (state, seconds, pod)": [f"{t.name}: {t.state} {t.seconds} s {' '.join(t.pods)}"
                                              for t in report.tasks]}
    failed = [f"{t.name}: {t.state} {t.error}" for t in report.tasks if t.state == "FAILED"]
    return Outcome(what, state == "SUCCEEDED", round(time.monotonic() - started, 1), detail,
                   "" if state == "SUCCEEDED" else "\n".join([f"run {state}: {report.error}", *failed]))


def created_resources(api, namespace: str, since: datetime) -> list[dict[str, Any]]:
    """Every kuberec custom resource in `namespace` created at or after `since` (through `api`, a kubernetes
    CustomObjectsApi): kind, name, step, the pod that created it (a KFP task's), state (the operator's, read as the
    backend reads it), seconds from creation to the last time in its status, and the operator's message when it
    failed."""
    from kubernetes.client.rest import ApiException

    found = []
    for kind in KINDS.values():
        try:
            items = api.list_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural,
                                                      label_selector="app.kubernetes.io/part-of=kuberec")["items"]
        except ApiException as err:
            if err.status != 404:  # 404: the cluster has no such kind (e.g. no KubeRay), so the run made none
                raise
            continue
        for obj in items:
            created = _timestamp(obj["metadata"]["creationTimestamp"])
            last = max((_timestamp(t) for t in _timestamps(obj.get("status") or {})), default=created)
            # An InferenceService that existed is rolled to the new model: listed, its time is the deploy step's.
            rolled = kind is INFERENCE_SERVICE and created < since <= last
            if created < since and not rolled:
                continue
            progress = kind.progress(obj)
            found.append({"kind": kind.kind, "name": obj["metadata"]["name"],
                          "step": obj["metadata"]["labels"].get("kuberec.io/step", ""),
                          "pod": (obj["metadata"].get("annotations") or {}).get(CREATED_BY_POD, ""),
                          "state": progress.state,
                          "succeeded": progress.succeeded, "failed": progress.failed,
                          "seconds": None if rolled else round((last - created).total_seconds()),
                          "message": progress.message, "created": obj["metadata"]["creationTimestamp"]})
    return sorted(found, key=lambda r: r["created"])


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _timestamps(value: Any):
    """Every RFC 3339 time in a resource's status (conditions, start/end/termination times)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _timestamps(item)
    elif isinstance(value, list):
        for item in value:
            yield from _timestamps(item)
    elif isinstance(value, str) and len(value) >= 20 and value[4] == "-" and value[10] == "T" and value[-1] == "Z":
        yield value


def serve_and_ask(access: ClusterAccess, pipeline: str, env: dict[str, str], scratch: Path) -> list[Outcome]:
    """Roll the pipeline's champion out as an InferenceService named after the registered model, then ask it."""
    name = MODELS[pipeline].registered_name
    kuberec = [str(Path(sys.executable).parent / "kuberec")]  # the console script of this venv
    deployed, _ = run_command(f"deploy {name}", [*kuberec, "k8s", "deploy", name, "--model-uri",
                                                 f"models:/{name}@champion"], env, 1800)
    outcomes = [deployed]
    if not deployed.ok:
        return outcomes
    # The record's probe as `kuberec recommend` options; a model that takes pictures is asked with one too.
    serving = MODELS[pipeline].serving
    queries = {f"by {column}": [f"--{column.replace('_', '-')}", str(values[0])]
               for column, values in serving.probe.items()}
    if any(option.flag == "--image" for option in serving.query_options):
        queries["by image"] = ["--image", str(_query_image(scratch))]
    with access.forward(f"svc/{name}-predictor", 80) as predictor:
        deployed.detail = {"endpoint": f"{predictor.url} (kubectl port-forward svc/{name}-predictor)"}
        for label, args in queries.items():
            asked, answer = run_command(f"ask {name} {label}", [*kuberec, "recommend", "--url", predictor.url,
                                                                *args], env, 300)
            asked.detail = {"answer": answer.strip().splitlines()[:6]}
            outcomes.append(asked)
        outcomes.append(check_refusals(name, predictor.url))
        with access.forward(f"svc/{name}-predictor", GRPC_PORT) as grpc_port:
            outcomes.append(ask_over_grpc(name, pipeline, predictor.url, f"127.0.0.1:{grpc_port.port}"))
    return outcomes


GRPC_PORT = 8081  # the serving runtime's second port, which KServe's RawDeployment Service exposes as it is


def ask_over_grpc(name: str, pipeline: str, http_url: str, grpc_address: str) -> Outcome:
    """The InferenceService over gRPC with NVIDIA's standard client (tritonclient): the same answer as over REST."""
    import numpy as np
    import tritonclient.grpc as triton

    from kuberec import inference

    started = time.monotonic()
    columns, ids = MODELS[pipeline].serving.probe, MODELS[pipeline].serving.answer_column
    try:
        server = triton.InferenceServerClient(grpc_address)
        inputs = []
        for column, values in columns.items():
            tensor = triton.InferInput(column, [len(values)], "INT64")
            tensor.set_data_from_numpy(np.asarray(values, np.int64))
            inputs.append(tensor)
        over_grpc = server.infer(name, inputs, parameters={"k": 5}).as_numpy(ids).tolist()
        over_rest = inference.infer(http_url, name, columns, {"k": 5})[ids]
    except Exception as err:  # noqa: BLE001  (the step's outcome says what went wrong)
        return Outcome(f"ask {name} over gRPC", False, round(time.monotonic() - started, 1), {}, f"{err}"[:500])
    return Outcome(f"ask {name} over gRPC", over_grpc == over_rest, round(time.monotonic() - started, 1),
                   {ids: over_grpc, "same as over REST": over_grpc == over_rest},
                   "" if over_grpc == over_rest else f"REST answered {over_rest}")


def check_refusals(name: str, url: str) -> Outcome:
    """The bad requests the local server's tests send (kuberec.serving.refusals), sent to the InferenceService:
    each must get the same 4xx with the same words."""
    started = time.monotonic()
    requests = bad_requests(name)
    failures = [problem for problem in (request.check(url) for request in requests) if problem]
    return Outcome(f"refusals {name}", not failures, round(time.monotonic() - started, 1),
                   {"refused as locally": f"{len(requests) - len(failures)} of {len(requests)} bad requests"},
                   "\n".join(failures))


def answer_key(data: bytes | str) -> str:
    """A V2 response's outputs, as one string: they show which model version answered."""
    return json.dumps(json.loads(data)["outputs"], sort_keys=True)


class ContinuousLoad:
    """`clients` threads asking `url` + `path` the same question, one request after another (`pause_s` apart),
    until the block ends; every status, latency and answer (`answer_key`)."""

    def __init__(self, url: str, path: str, body: str, clients: int, pause_s: float = 0.0):
        self.url, self.path, self.body, self.pause_s = url, path, body, pause_s
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.answers: dict[str, int] = {}  # answer -> requests that got it, in the order first seen
        self.last_answer = ""
        self.threads = [threading.Thread(target=self._ask, daemon=True) for _ in range(clients)]

    def _ask(self) -> None:
        from kuberec import inference

        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                status, data = inference.post(self.url, self.path, self.body, timeout=30)
                answer = answer_key(data) if status == 200 else ""
                error = "" if status == 200 else f"{status}: {inference.error_message(data)[:200]}"
            except Exception as err:  # noqa: BLE001  (any failure of a request is what this counts)
                answer, error = "", f"{type(err).__name__}: {err}"[:200]
            with self.lock:
                self.latencies.append(time.monotonic() - started)
                if error:
                    self.errors.append(error)
                else:
                    self.answers[answer] = self.answers.get(answer, 0) + 1
                    self.last_answer = answer
            self.stopping.wait(self.pause_s)

    def __enter__(self) -> "ContinuousLoad":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def summary(self) -> dict[str, Any]:
        import numpy as np

        ms = np.asarray(self.latencies) * 1000
        return {"clients": len(self.threads), "requests": len(self.latencies), "errors": len(self.errors),
                "first errors": self.errors[:3], "p50 ms": round(float(np.percentile(ms, 50)), 1),
                "p99 ms": round(float(np.percentile(ms, 99)), 1),
                "answers (distinct, requests each, in order)": list(self.answers.values()),
                "the last answer was the first": bool(self.answers) and self.last_answer == next(iter(self.answers))}


def rollout_under_load(access: ClusterAccess, pipeline: str, env: dict[str, str], proxy_url: str) -> list[Outcome]:
    """Under a continuous load of ROLLOUT_CLIENTS clients through the Service (`kubectl proxy`), roll the model's
    InferenceService back to the previous registered version, then forward to the champion again: no request may
    fail. Skipped (and said) when the model has one version only."""
    from mlflow import MlflowClient

    name = MODELS[pipeline].registered_name
    registry = MlflowClient(env["MLFLOW_TRACKING_URI"])
    champion = int(registry.get_model_version_by_alias(name, "champion").version)
    others = [int(v.version) for v in registry.search_model_versions(f"name='{name}'") if int(v.version) != champion]
    what = f"rollout {name} under load"
    if not others:
        return [Outcome(what, True, 0, {"skipped": "one registered version; a rollout needs two (run make e2e "
                                                    "again)"})]
    previous = max((v for v in others if v < champion), default=max(others))
    kuberec = str(Path(sys.executable).parent / "kuberec")
    from kuberec import inference

    started = time.monotonic()
    with ContinuousLoad(proxy_url + access.service_path(f"{name}-predictor", 80), f"/v2/models/{name}/infer",
                        inference.body_text(MODELS[pipeline].serving.probe, {"k": 5}), ROLLOUT_CLIENTS) as load:
        time.sleep(ROLLOUT_PAUSE_S)
        back, _ = run_command(f"roll {name} back to version {previous}", [
            kuberec, "k8s", "deploy", name, "--model-uri", f"models:/{name}/{previous}"], env, 1800)
        time.sleep(ROLLOUT_PAUSE_S)
        forward, _ = run_command(f"roll {name} forward to version {champion} (champion)", [
            kuberec, "k8s", "deploy", name, "--model-uri", f"models:/{name}@champion"], env, 1800)
        time.sleep(ROLLOUT_PAUSE_S)
    summary = load.summary()
    # The same model before and after (the champion): the last answer must be the first one seen.
    ok = back.ok and forward.ok and not summary["errors"] and summary["the last answer was the first"]
    error = ""
    if summary["errors"]:
        error = f"{summary['errors']} of {summary['requests']} requests failed: {summary['first errors']}"
    elif not ok:
        error = ("the last answer was not the champion's" if not summary["the last answer was the first"]
                 else "a rollout command failed (above)")
    return [back, forward, Outcome(what, ok, round(time.monotonic() - started, 1), summary, error)]


def env_image(env: dict[str, str]) -> str:
    """The runtime image the components run in, as pipelines.run names it from these settings."""
    return load_settings(image_registry=env.get("KUBEREC_IMAGE_REGISTRY"),
                         image_tag=env.get("KUBEREC_IMAGE_TAG")).image("runtime")


def _query_image(scratch: Path) -> Path:
    """A Fashion-MNIST test image as a PNG file, as a user would upload one."""
    from PIL import Image

    from kuberec.datasets import fashion_mnist as fm

    spec = fm.idx_file("test", "images")
    path = fm.find_file(fm.DEBIAN_DIR, spec)
    images = fm.parse_idx(spec, fm.decompress(str(path), path.read_bytes()), check_sha256=False)
    target = scratch / "query.png"
    Image.fromarray(images[0]).save(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.driver", description=__doc__.splitlines()[0])
    for name in PIPELINES:
        parser.add_argument(f"--{name}", action="append", default=[], metavar="NAME=VALUE",
                            help=f"a parameter of the {name} pipeline (as pipelines.run --param)")
    parser.add_argument("--lake", default="s3://kuberec/e2e", help="the lake the run's tables go to")
    parser.add_argument("--only", choices=PIPELINES, help="run one pipeline")
    parser.add_argument("--serve-only", action="store_true",
                        help="run no pipeline: serve, ask and roll out the champions already registered")
    parser.add_argument("--runner", choices=("kfp", *RUNNERS), default="kfp",
                        help="where the components run: as task pods of the Kubeflow Pipelines server (default), "
                             "with the KFP local runner in kuberec's runtime image on the Docker daemon with "
                             "kuberec's images (docker), or as subprocesses of this venv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    access = ClusterAccess.from_settings(settings)
    started = datetime.now(timezone.utc).replace(microsecond=0)
    outcomes: list[Outcome] = []
    with access.forward("svc/minio", 9000) as minio, access.forward("svc/mlflow", 5000) as mlflow, \
            tempfile.TemporaryDirectory(prefix="kuberec-e2e-") as scratch:
        env = access.client_env(minio.url, mlflow.url, args.lake)
        kfp_ui = None
        if args.runner == "kfp" and not args.serve_only:
            kfp_ui = access.forward(UI_SERVICE, UI_PORT, namespace=KFP_NAMESPACE)
            server = KfpServer(kfp_ui.url)
        for name in [args.only] if args.only else PIPELINES:
            if not args.serve_only:
                outcome = (run_on_kfp(server, access, name, getattr(args, name), env) if kfp_ui
                           else run_pipeline(name, getattr(args, name), env, args.runner))
                outcomes.append(outcome)
                if not outcome.ok:
                    continue
            served = serve_and_ask(access, name, env, Path(scratch))
            outcomes.extend(served)
            if served[0].ok:
                with access.proxy() as proxy:
                    outcomes.extend(rollout_under_load(access, name, env, proxy.url))
        if kfp_ui:
            kfp_ui.stop()
        from kubernetes import client, config

        api = client.CustomObjectsApi(config.new_client_from_config(str(access.kubeconfig)))
        resources = created_resources(api, access.namespace, started)
    components = {"subprocess": "as subprocesses of this venv",
                  "docker": f"in {env_image(env)} (KFP DockerRunner, Docker daemon "
                            f"{env.get('DOCKER_HOST', 'default')})",
                  "kfp": f"as Kubeflow Pipelines task pods in {env_image(env)} (namespace {KFP_NAMESPACE}, lake of "
                         f"the kuberec-settings ConfigMap)"}[args.runner]
    summary = {"started": started.isoformat(), "cluster": str(access.kubeconfig), "lake": args.lake,
               "components": "none (--serve-only)" if args.serve_only else components,
               "steps": [asdict(o) for o in outcomes], "resources": resources}
    out = settings.home / "e2e" / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2, default=str))
    print(format_summary(summary))
    print(f"(as JSON: {out})")
    return 0 if all(o.ok for o in outcomes) and not any(r["failed"] for r in resources) else 1


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["", "== kuberec e2e summary ==", f"cluster {summary['cluster']}, lake {summary['lake']}, "
             f"started {summary['started']}", f"components: {summary['components']}", "",
             "custom resources (kind, name, step, final state, seconds; '-': an existing service rolled out):"]
    for r in summary["resources"]:
        seconds = "-" if r["seconds"] is None else r["seconds"]
        lines.append(f"  {r['kind']:<17} {r['name']:<44} {r['step']:<22} {r['state']:<10} {seconds:>6}"
                     + (f"  from pod {r['pod']}" if r["pod"] else "") + (f"  {r['message']}" if r["failed"] else ""))
    lines += ["", "steps:"]
    for step in summary["steps"]:
        lines.append(f"  {'ok    ' if step['ok'] else 'FAILED'} {step['what']} ({step['seconds']:.0f} s)")
        for key, value in step["detail"].items():
            shown = value if isinstance(value, str) else json.dumps(value, default=str)
            lines.append(f"         {key}: {shown}")
        if step["error"]:
            lines += [f"         | {line}" for line in step["error"].splitlines()]
    failed = [s["what"] for s in summary["steps"] if not s["ok"]] + [
        f"{r['kind']} {r['name']} ({r['state']}: {r['message']})" for r in summary["resources"] if r["failed"]]
    lines += ["", f"FAILED: {'; '.join(failed)}" if failed else "all steps succeeded"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
