"""One resource per operator, created by kuberec's own commands with KUBEREC_BACKEND=kubernetes and run in
kuberec's own images: each test passes only when the real operator reports its resource finished (the backend
reads that status; nothing here writes one). In order: Spark ingests a Fashion-MNIST subset into a Delta table in
MinIO; an MPIJob trains the similarity model for one short epoch on 2 Horovod workers; a RayJob runs a 2-trial
sweep logged to the in-cluster MLflow; KServe serves the registered model and answers a V2 request, and the resource
metrics API (metrics-server) reports its pod."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from conftest import KUBEREC, NAMESPACE, PortForward, kubectl, record, run_kuberec

pytestmark = pytest.mark.timeout(3600)
PER_SPLIT = 300  # images per split in the ingest: enough for a batch of every class, quick on 2 CPUs
SERVED_NAME = "kuberec-similarity"
INSTACART_USERS = 200  # the wide & deep data steps: small enough for the Spark jobs to take a minute or two


@pytest.fixture(scope="module")
def state() -> dict:
    """What one test leaves for the next (the training run)."""
    return {}


def newest(kind: str, step: str) -> dict:
    """The most recent resource of `kind` that a kuberec step created."""
    items = json.loads(kubectl("-n", NAMESPACE, "get", kind, "-l", f"kuberec.io/step={step}", "-o", "json"))["items"]
    assert items, f"no {kind} of step {step} in namespace {NAMESPACE}"
    return max(items, key=lambda item: item["metadata"]["creationTimestamp"])


def test_spark_application_ingests_into_delta_on_minio(cluster_env, monkeypatch):
    from pyarrow import fs, parquet

    from kuberec.lake.delta import snapshot_files

    start = time.monotonic()
    run_kuberec(cluster_env, "ingest", "fashion-mnist", "--max-per-split", str(PER_SPLIT))
    app = newest("sparkapplications", "ingest-fashion-mnist")
    state = app["status"]["applicationState"]["state"]
    record("SparkApplication", state, time.monotonic() - start)
    assert state == "COMPLETED"
    # The table the driver and executors wrote, read from MinIO through the port-forward.
    for name in ("KUBEREC_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(name, cluster_env[name])
    _, files = snapshot_files(f"{cluster_env['KUBEREC_LAKE']}/fashion_mnist")
    store = fs.S3FileSystem(endpoint_override=cluster_env["KUBEREC_S3_ENDPOINT"], region="us-east-1")
    rows = {"train": 0, "test": 0}
    for file in files:  # partitioned by split: the value is in the path
        split = re.search(r"/split=(\w+)/", file)[1]
        rows[split] += parquet.ParquetFile(store.open_input_file(file.removeprefix("s3://"))).metadata.num_rows
    assert rows == {"train": PER_SPLIT, "test": PER_SPLIT}


def test_catalog_upload_is_staged_and_appended_by_a_spark_application(cluster_env, tmp_path):
    """`kuberec ingest images` from this machine: the pictures are staged in MinIO, the driver pod reads them there."""
    from PIL import Image

    for index in range(2):
        Image.new("L", (40, 30), 180 + 20 * index).save(tmp_path / f"upload-{index}.png")
    start = time.monotonic()
    out = run_kuberec(cluster_env, "ingest", "images", str(tmp_path), "--label", "7")
    app = newest("sparkapplications", "ingest-images")
    state = app["status"]["applicationState"]["state"]
    record("SparkApplication (catalog upload)", state, time.monotonic() - start)
    assert state == "COMPLETED"
    assert app["spec"]["arguments"][1].startswith(f"{cluster_env['KUBEREC_LAKE'].replace('s3://', 's3a://')}"
                                                  f"/raw/images/")
    written = re.search(r"catalog table \S+/fashion_mnist@v(\d+)", out)
    assert written and int(written[1]) >= 1, out  # a commit after the Fashion-MNIST ingest's


def test_mpijob_trains_on_two_horovod_workers(cluster_env, state):
    start = time.monotonic()
    out = run_kuberec(cluster_env, "train", "similarity", "--workers", "2", "--epochs", "1", "--steps-per-epoch", "3",
                      "--max-examples", str(PER_SPLIT), "--examples-per-class", "4")
    state["run_id"] = re.search(r"MLflow run (\w+)", out)[1]
    job = newest("mpijobs", "train-similarity")
    succeeded = [c for c in job["status"]["conditions"] if c["type"] == "Succeeded" and c["status"] == "True"]
    record("MPIJob", "Succeeded" if succeeded else str(job["status"]["conditions"]), time.monotonic() - start)
    assert succeeded
    assert job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    # mpirun gathers both ranks' output in the launcher's log: two ranks, one set of weights.
    launcher = kubectl("-n", NAMESPACE, "logs", f"job/{job['metadata']['name']}-launcher")
    checksums = dict(re.findall(r"rank (\d+): weights sha256 (\w+)", launcher))
    assert sorted(checksums) == ["0", "1"], launcher[-2000:]
    assert len(set(checksums.values())) == 1


def test_rayjob_runs_a_two_trial_sweep_into_mlflow(cluster_env):
    start = time.monotonic()
    out = run_kuberec(cluster_env, "tune", "similarity", "--trials", "2", "--concurrent", "1", "--epochs", "1",
                      "--max-examples", str(PER_SPLIT), "--json")
    result = json.loads(out[out.index("{"):])
    job = newest("rayjobs", "tune-similarity")
    status = job["status"]["jobStatus"]
    record("RayJob", status, time.monotonic() - start)
    assert status == "SUCCEEDED"
    assert result["trials_finished"] == 2 and result["trials_failed"] == 0, result
    from mlflow import MlflowClient

    children = MlflowClient(cluster_env["MLFLOW_TRACKING_URI"]).search_runs(
        [job_experiment(cluster_env, result["parent_run_id"])],
        filter_string=f"tags.mlflow.parentRunId = '{result['parent_run_id']}'")
    assert len(children) == 2 and all(run.info.status == "FINISHED" for run in children)


def job_experiment(cluster_env, run_id: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient(cluster_env["MLFLOW_TRACKING_URI"]).get_run(run_id).info.experiment_id


def test_inference_service_answers_v2_through_port_forward(cluster_env, state):
    from kuberec.similarity.serving import recommend

    # The MPIJob test's training run (or one named by KUBEREC_SMOKE_TRAINING_RUN, to rerun this test alone).
    state.setdefault("run_id", os.environ.get("KUBEREC_SMOKE_TRAINING_RUN"))
    assert state["run_id"], "needs the MPIJob test's training run"
    start = time.monotonic()
    run_kuberec(cluster_env, "index", "build", "--model", f"runs:/{state['run_id']}/train/model", "--name", SERVED_NAME,
                "--set-champion")
    run_kuberec(cluster_env, "k8s", "deploy", SERVED_NAME, "--model-uri", f"models:/{SERVED_NAME}@champion")
    isvc = json.loads(kubectl("-n", NAMESPACE, "get", "inferenceservice", SERVED_NAME, "-o", "json"))
    ready = [c for c in isvc["status"]["conditions"] if c["type"] == "Ready"]
    record("InferenceService", "Ready" if ready and ready[0]["status"] == "True" else str(ready),
           time.monotonic() - start)
    assert ready and ready[0]["status"] == "True"
    predictor = PortForward(f"svc/{SERVED_NAME}-predictor", 80)
    try:
        neighbours = recommend(predictor.url, model=SERVED_NAME, item_id=0, k=5)
    finally:
        predictor.stop()
    assert len(neighbours) == 5 and [n["rank"] for n in neighbours] == [1, 2, 3, 4, 5]


def test_metrics_api_reports_the_predictors_cpu(cluster_env):
    """metrics-server behind the API server's aggregation layer: what KServe's HPAs read (after the
    InferenceService test, whose predictor pod must show up with its CPU and memory)."""
    deadline = time.monotonic() + 120  # the pod's first samples come a scrape or two after it starts
    while True:
        out = kubectl("-n", NAMESPACE, "top", "pods", "-l", f"serving.kserve.io/inferenceservice={SERVED_NAME}",
                      "--no-headers", check=False)
        if re.search(rf"^{SERVED_NAME}-predictor-\S+\s+\d+m\s+\d+Mi", out, re.M):
            return
        assert time.monotonic() < deadline, f"kubectl top pods: {out}"
        time.sleep(5)


def test_instacart_ingest_and_features_run_as_spark_applications(cluster_env, tmp_path, monkeypatch):
    """The wide & deep data steps on the cluster: generated Instacart files staged in MinIO, bronze tables written by
    one SparkApplication, the gold tables by another; both read back from MinIO on this machine."""
    from kuberec.lake.delta import table_version

    source = tmp_path / "instacart"
    run_kuberec(cluster_env, "data", "instacart-synth", "--users", str(INSTACART_USERS), "--out", str(source))
    start = time.monotonic()
    run_kuberec(cluster_env, "ingest", "instacart", "--source", str(source))
    ingest = newest("sparkapplications", "ingest-instacart")
    record("SparkApplication (Instacart ingest)", ingest["status"]["applicationState"]["state"],
           time.monotonic() - start)
    assert ingest["status"]["applicationState"]["state"] == "COMPLETED"
    assert "/raw/instacart/" in ingest["spec"]["arguments"][2]  # python -m <module> --source <staged prefix>
    start = time.monotonic()
    out = run_kuberec(cluster_env, "features", "instacart")
    features = newest("sparkapplications", "features-instacart")
    record("SparkApplication (Instacart features)", features["status"]["applicationState"]["state"],
           time.monotonic() - start)
    assert features["status"]["applicationState"]["state"] == "COMPLETED"
    # delta-rs reads MinIO through the port-forward with these; for this test only (a `make test` with a cluster
    # up had them leak into the later tests' environment).
    for name in ("KUBEREC_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(name, cluster_env[name])
    examples = re.search(r"gold examples: (\S+)@v(\d+)", out)
    assert examples, out
    assert table_version(examples[1]) == int(examples[2])


def test_bad_instacart_input_fails_with_the_drivers_own_error(cluster_env, tmp_path):
    """A broken file reaches the driver pod, which refuses it: the SparkApplication FAILS, and the step's error
    carries the operator's message and the driver's own line naming the file, row and column."""
    source = tmp_path / "broken"
    run_kuberec(cluster_env, "data", "instacart-synth", "--users", "20", "--seed", "7", "--out", str(source))
    lines = (source / "orders.csv").read_text().splitlines()
    lines[2] = lines[2].replace(",prior,", ",someday,", 1)
    (source / "orders.csv").write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    err = run_kuberec(cluster_env, "ingest", "instacart", "--source", str(source), fails=True)
    app = newest("sparkapplications", "ingest-instacart")
    record("SparkApplication (bad Instacart input)", app["status"]["applicationState"]["state"],
           time.monotonic() - start)
    assert app["status"]["applicationState"]["state"] == "FAILED"
    last = err.strip().splitlines()[-1]
    name = app["metadata"]["name"]
    assert last.startswith(f"kuberec ingest instacart: error: SparkApplication kuberec/{name} failed: "), last
    assert "its program said: kuberec.ingest.instacart: error: orders.csv row 2 (line 3), column eval_set" in last


def test_sigterm_while_an_mpijob_runs_deletes_it(cluster_env, tmp_path):
    """SIGTERM (what KFP and Ctrl-C send) while the step waits on a running MPIJob: with KUBEREC_K8S_ON_CANCEL=delete
    the step deletes it, says so, and the operator's pods go with it."""
    import signal
    import subprocess

    env = {**cluster_env, "KUBEREC_K8S_ON_CANCEL": "delete"}
    log = tmp_path / "step.log"
    with log.open("w") as out:  # a file, not a pipe: nobody reads the step's log while it runs
        step = subprocess.Popen([str(KUBEREC), "train", "similarity", "--workers", "2", "--epochs", "30",
                                 "--max-examples", str(PER_SPLIT)], env=env, stderr=out, text=True)
        try:
            name = wait_for_mpijob(step, "Running")["metadata"]["name"]
            step.send_signal(signal.SIGTERM)
            step.wait(timeout=120)
        finally:
            step.kill()
    err = log.read_text()
    assert step.returncode != 0
    assert f"cancelled while waiting for MPIJob kuberec/{name}; deleted it (KUBEREC_K8S_ON_CANCEL=delete)" in err
    deadline = time.monotonic() + 120
    while name in kubectl("-n", NAMESPACE, "get", "mpijobs,pods", "-o", "name") and time.monotonic() < deadline:
        time.sleep(2)
    assert name not in kubectl("-n", NAMESPACE, "get", "mpijobs,pods", "-o", "name")


def test_a_timeout_keeps_the_mpijob_when_told_to(cluster_env):
    """KUBEREC_K8S_TIMEOUT runs out before the job ends: a clear error naming the resource, kept for a look."""
    env = {**cluster_env, "KUBEREC_K8S_ON_CANCEL": "keep", "KUBEREC_K8S_TIMEOUT": "15"}
    start = time.monotonic()
    err = run_kuberec(env, "train", "similarity", "--workers", "2", "--epochs", "30", "--max-examples",
                      str(PER_SPLIT), fails=True)
    assert time.monotonic() - start < 120
    job = newest("mpijobs", "train-similarity")
    name = job["metadata"]["name"]
    try:
        assert f"MPIJob kuberec/{name} did not finish within 15 s" in err, err[-2000:]
        assert f"kept it (KUBEREC_K8S_ON_CANCEL=keep): `kubectl delete mpijobs {name} -n kuberec`" in err
    finally:
        kubectl("-n", NAMESPACE, "delete", "mpijob", name, "--wait=false", check=False)


def wait_for_mpijob(step, condition: str, timeout: float = 300) -> dict:
    """The MPIJob the running `step` created, once its `condition` is True (or the step ended: an error)."""
    import json as json_module

    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert step.poll() is None, "the step ended before its MPIJob ran"
        items = json_module.loads(kubectl("-n", NAMESPACE, "get", "mpijobs", "-l", "kuberec.io/step=train-similarity",
                                          "-o", "json"))["items"]
        for job in items:
            conditions = {c["type"]: c["status"] for c in (job.get("status") or {}).get("conditions", [])}
            if job["metadata"]["creationTimestamp"] >= started and conditions.get(condition) == "True":
                return job
        time.sleep(2)
    raise AssertionError(f"no MPIJob of the step reached {condition} within {timeout:g} s")
