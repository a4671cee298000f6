"""kuberec's pipelines on the Kubeflow Pipelines server of `make cluster-up`, through its API as the dashboard uses it
(a port-forward to the UI on 127.0.0.1, which serves the API as well): the runs `make e2e` started succeeded task by
task; a run fed a broken Instacart file fails in its ingest task with the program's own error line in that task's
log, still readable once its pod is gone; terminating a run stops the MPIJob it started."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid

import pytest

from tests.cluster.conftest import NAMESPACE, access, kubectl, run_kuberec
from tests.e2e.kfp_runs import KFP_NAMESPACE, UI_PORT, UI_SERVICE, KfpServer, task_pods

PIPELINES = {"similarity": "kuberec-similarity", "widedeep": "kuberec-widedeep"}
ARTIFACT_BUCKET = "mlpipeline"  # KFP's artifacts and Argo's log archive, in kuberec's MinIO (manifests/kfp)


@pytest.fixture(scope="module")
def kfp_server():
    if not kubectl("-n", KFP_NAMESPACE, "get", "service", "ml-pipeline-ui", "--ignore-not-found").strip():
        pytest.skip("no Kubeflow Pipelines on the cluster (make cluster-up installs it)")
    with access().forward(UI_SERVICE, UI_PORT, namespace=KFP_NAMESPACE) as ui:
        yield KfpServer(ui.url)


def newest_run(server: KfpServer, pipeline_name: str):
    """The newest run of the pipeline named `pipeline_name`, or None."""
    pipeline_id = server.client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        return None
    runs = server.client.list_runs(page_size=50, sort_by="created_at desc").runs or []
    for run in runs:
        ref = run.pipeline_version_reference
        if ref and ref.pipeline_id == pipeline_id:
            return run
    return None


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
def test_the_e2e_runs_succeeded_task_by_task(kfp_server, cluster_env, pipeline):
    """The newest run of each pipeline (make e2e's) succeeded, and so did each of its tasks, each in its own pod;
    the artifact each task wrote (its log) opens from the UI."""
    run = newest_run(kfp_server, PIPELINES[pipeline])
    if run is None:
        pytest.skip(f"no run of {PIPELINES[pipeline]} on the server yet: run make e2e first")
    report = kfp_server.report(pipeline, run.run_id, "", task_pods(access(), run.run_id))
    assert report.state == "SUCCEEDED", (report.url, report.error)
    assert report.tasks, report
    for task in report.tasks:
        assert task.state == "SUCCEEDED", (task, report.url)
        assert task.pods, task
        assert "[KFP Executor" in ui_artifact(kfp_server, cluster_env, PIPELINES[pipeline], run.run_id, task.name)


def pod_log(server: KfpServer, run_id: str, pod: str) -> str:
    """A task pod's log as the UI shows it (its /k8s/pod/logs endpoint: the pod's, or Argo's archive in MinIO once
    the pod is gone, found by the run's creation date)."""
    created = server.client.get_run(run_id).created_at
    query = urllib.parse.urlencode({"podname": pod, "runid": run_id, "podnamespace": KFP_NAMESPACE,
                                    "createdat": f"{created:%Y-%m-%d}"})
    with urllib.request.urlopen(f"{server.host}/k8s/pod/logs?{query}", timeout=60) as answer:
        return answer.read().decode()


def object_store(cluster_env):
    """A boto3 S3 client on the cluster's MinIO (through the port-forward cluster_env names)."""
    import boto3

    return boto3.client("s3", endpoint_url=cluster_env["KUBEREC_S3_ENDPOINT"], region_name="us-east-1",
                        aws_access_key_id=cluster_env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=cluster_env["AWS_SECRET_ACCESS_KEY"])


def ui_artifact(server: KfpServer, cluster_env, pipeline_name: str, run_id: str, task: str) -> str:
    """The text of the artifact a task wrote (KFP's launcher writes each task's log as its `executor-logs` artifact,
    in MinIO under mlpipeline/v2/artifacts/<pipeline>/<run>/<task>/), fetched as the UI's Input/Output tab opens it
    (its /artifacts/get endpoint)."""
    listed = object_store(cluster_env).list_objects_v2(Bucket=ARTIFACT_BUCKET,
                                                      Prefix=f"v2/artifacts/{pipeline_name}/{run_id}/{task}/")
    keys = [item["Key"] for item in listed.get("Contents", [])]
    assert keys, f"task {task} of run {run_id} wrote no artifact"
    query = urllib.parse.urlencode({"source": "minio", "bucket": ARTIFACT_BUCKET, "key": keys[0]})
    with urllib.request.urlopen(f"{server.host}/artifacts/get?{query}", timeout=60) as answer:
        return answer.read().decode(errors="replace")


def stage_broken_instacart(cluster_env, tmp_path) -> str:
    """Generated Instacart files with one bad eval_set, staged under a fresh prefix of the lake; the prefix."""
    source = tmp_path / "broken"
    run_kuberec(cluster_env, "data", "instacart-synth", "--users", "20", "--seed", "7", "--out", str(source))
    lines = (source / "orders.csv").read_text().splitlines()
    lines[2] = lines[2].replace(",prior,", ",someday,", 1)
    (source / "orders.csv").write_text("\n".join(lines) + "\n")
    s3 = object_store(cluster_env)
    prefix = f"raw/kfp-broken-{uuid.uuid4().hex[:8]}"
    for path in source.iterdir():
        s3.upload_file(str(path), "kuberec", f"{prefix}/{path.name}")
    return f"s3://kuberec/{prefix}"


def test_a_bad_instacart_file_fails_the_run_with_the_programs_error_in_the_task_log(kfp_server, cluster_env,
                                                                                    tmp_path):
    source = stage_broken_instacart(cluster_env, tmp_path)
    uploaded = kfp_server.upload("widedeep", cluster_env)
    run_id = kfp_server.start("widedeep", uploaded, {"source": source, "users": 20, "workers": 1})
    state = kfp_server.wait(run_id, timeout_s=1800)
    report = kfp_server.report("widedeep", run_id, uploaded["version"], task_pods(access(), run_id))
    assert state == "FAILED", report
    failed = [t for t in report.tasks if t.state == "FAILED"]
    assert [t.name for t in failed] == ["ingest-instacart"], report.tasks
    assert {t.state for t in report.tasks if t.name not in ("instacart-source", "ingest-instacart")} == {"NOT RUN"}
    error_line = "kuberec.ingest.instacart: error: orders.csv row 2 (line 3), column eval_set"
    log = "".join(pod_log(kfp_server, run_id, pod) for pod in failed[0].pods)
    assert error_line in log, log[-3000:]
    # Once the pods are gone (Argo's pod GC, a node's restart), the UI reads the log Argo archived in MinIO.
    kubectl("-n", KFP_NAMESPACE, "delete", "pods", "-l", f"pipeline/runid={run_id}", "--wait=true", timeout=180)
    archived = "".join(pod_log(kfp_server, run_id, pod) for pod in failed[0].pods)
    assert error_line in archived, archived[-3000:]


def created_by_run(run_id: str, plural: str) -> str:
    """The newest of kuberec's `plural` (mpijobs...) created by a task pod of KFP run `run_id` (the job's
    kuberec.io/created-by-pod annotation names the pod), or ""."""
    pods = set(kubectl("-n", KFP_NAMESPACE, "get", "pods", "-l", f"pipeline/runid={run_id}", "-o",
                       "jsonpath={.items[*].metadata.name}").split())
    jobs = json.loads(kubectl("-n", NAMESPACE, "get", plural, "--sort-by=.metadata.creationTimestamp", "-o",
                              "json"))["items"]
    mine = [job["metadata"]["name"] for job in jobs
            if job["metadata"].get("annotations", {}).get("kuberec.io/created-by-pod", "").split("/")[-1] in pods]
    return mine[-1] if mine else ""


def test_terminating_a_run_stops_the_mpijob_it_started(kfp_server, cluster_env):
    """Terminate (the UI's button) while the training step waits on its MPIJob: KFP stops the step's pod before
    the step can delete its MPIJob (KFP 2.17's launcher, the step's parent, exits at once on SIGTERM), so the
    cluster's kuberec-reaper deletes it; nothing of the run is left running. Started with no service account, as
    from the UI's form."""
    uploaded = kfp_server.upload("similarity", cluster_env)
    # No service account, as the UI's run form leaves it: KFP's default runner account must run kuberec's steps.
    run_id = kfp_server.start("similarity", uploaded, {"max_per_split": 2000, "config_json": json.dumps({"epochs": 50}),
                                                       "workers": 2}, service_account=None)
    deadline = time.monotonic() + 1800
    mpijob = ""
    while not mpijob and time.monotonic() < deadline:
        assert kfp_server.client.get_run(run_id).state not in ("FAILED", "SUCCEEDED"), kfp_server.report(
            "similarity", run_id, "")
        mpijob = created_by_run(run_id, "mpijobs")
        time.sleep(10)
    assert mpijob, "the training step started no MPIJob in 30 minutes"
    time.sleep(20)  # its workers start
    kfp_server.terminate(run_id)
    terminated = time.monotonic()
    deadline = terminated + 300
    while time.monotonic() < deadline:
        left = kubectl("-n", NAMESPACE, "get", "mpijob", mpijob, "--ignore-not-found", "-o", "name").strip()
        pods = kubectl("-n", NAMESPACE, "get", "pods", "-l", f"training.kubeflow.org/job-name={mpijob}", "-o",
                       "name").strip()
        if not left and not pods:
            break
        time.sleep(5)
    if left:  # this test's own MPIJob: it must not keep the node's CPUs
        kubectl("-n", NAMESPACE, "delete", "mpijob", mpijob, "--wait=false", check=False)
    assert not left and not pods, f"still there after terminating run {run_id}: {left} {pods}"
    print(f"MPIJob {mpijob} and its pods gone {time.monotonic() - terminated:.0f} s after terminating run {run_id}")
    # KFP 2.17 reports a terminated run as CANCELING for good: its report of the workflow keeps the terminating
    # state over the workflow's final phase (ReportWorkflowResource). The workflow itself ends, and so do its pods.
    assert kfp_server.wait(run_id, timeout_s=300) in ("CANCELING", "CANCELED"), kfp_server.report(
        "similarity", run_id, "")
    phases = set(kubectl("-n", KFP_NAMESPACE, "get", "pods", "-l", f"pipeline/runid={run_id}", "-o",
                         "jsonpath={.items[*].status.phase}").split())
    assert phases <= {"Succeeded", "Failed"}, phases


REFRESH_CRON = "0 */3 * * * *"  # every three minutes: two firings in one test
LAKE = "s3://kuberec/lake"  # the kuberec-settings ConfigMap's lake, where the task pods' catalog table is


def test_the_catalog_refresh_schedule_fires_with_and_without_new_images(kfp_server, cluster_env, tmp_path):
    """`python -m pipelines.run refresh --schedule CRON` on the cluster: its first run takes three images staged in
    the lake into the catalog and the champion's index, a new version that passes the gate and is served; its next
    run finds nothing, and registers nothing. The recurring run is disabled at the end (kept for the UI)."""
    import io

    import numpy as np
    from mlflow import MlflowClient
    from PIL import Image

    from kuberec.similarity.serving import recommend
    from pipelines.run import KFP_HOST_ENV, SUMMARY_MARK

    name = "kuberec-similarity"
    registry = MlflowClient(cluster_env["MLFLOW_TRACKING_URI"])
    try:
        before = registry.get_model_version_by_alias(name, "champion")
    except Exception:  # noqa: BLE001 (MLflow raises its own RestException for a missing alias)
        pytest.skip(f"no {name}@champion on the cluster yet: run make e2e first")
    batch = uuid.uuid4().hex[:8]
    store = object_store(cluster_env)
    rng = np.random.default_rng(int(batch, 16))
    pictures = []
    for number in range(3):  # new pixels (the ingestion skips a picture already in the catalog), on black
        png = io.BytesIO()
        picture = np.zeros((28, 28), np.uint8)
        picture[4:24, 4:24] = rng.integers(0, 256, (20, 20), dtype=np.uint8)
        Image.fromarray(picture).save(png, format="PNG")
        pictures.append(png.getvalue())
        store.put_object(Bucket="kuberec", Key=f"lake/staging/catalog/{batch}/{number}.png", Body=pictures[-1])

    done = subprocess.run([sys.executable, "-m", "pipelines.run", "refresh", "--schedule", REFRESH_CRON,
                           "--param", "eval_queries=1000"], capture_output=True, text=True, timeout=600,
                          env={**cluster_env, KFP_HOST_ENV: kfp_server.host})
    assert done.returncode == 0, done.stderr[-3000:]
    scheduled = json.loads(done.stdout.split(SUMMARY_MARK, 1)[1])["refresh"]
    runs = []
    try:
        deadline = time.monotonic() + 1500
        while len(runs) < 2 and time.monotonic() < deadline:
            time.sleep(20)
            listed = kfp_server.client.list_runs(page_size=20, sort_by="created_at desc").runs or []
            runs = sorted((run for run in listed if run.recurring_run_id == scheduled["recurring_run_id"]
                           and str(run.state) in ("SUCCEEDED", "FAILED")), key=lambda run: run.created_at)
    finally:
        kfp_server.client.disable_recurring_run(scheduled["recurring_run_id"])
    assert len(runs) >= 2, f"the recurring run {scheduled['url']} finished {len(runs)} runs in 25 minutes"
    first, second = runs[:2]
    assert str(first.state) == str(second.state) == "SUCCEEDED", (kfp_server.run_url(first.run_id),
                                                                    kfp_server.run_url(second.run_id))

    def registered_by(run) -> list:
        return [v for v in registry.search_model_versions(f"name='{name}'")
                if v.tags.get("kuberec.kfp.run_id") == run.run_id]

    [grown] = registered_by(first)
    assert grown.tags["kuberec.champion_gate.promote"] == "True", grown.tags
    assert int(grown.tags["kuberec.index.items"]) >= int(before.tags["kuberec.index.items"]) + 3
    assert registry.get_model_version_by_alias(name, "champion").version == grown.version
    assert registered_by(second) == []
    print(f"refresh: {kfp_server.run_url(first.run_id)} -> version {grown.version}; "
          f"{kfp_server.run_url(second.run_id)} -> nothing; schedule {scheduled['url']}")

    # Served: the champion rolled out finds a staged picture itself as the nearest item of that picture.
    run_kuberec(cluster_env, "k8s", "deploy", name, "--model-uri", f"models:/{name}@champion")
    predictor = access().forward(f"svc/{name}-predictor", 80)
    try:
        neighbours = recommend(predictor.url, model=name, image=pictures[0], k=5)
    finally:
        predictor.stop()
    assert neighbours[0]["distance"] < 1e-4, neighbours
