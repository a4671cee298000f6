"""`make e2e`'s summary of what ran on the cluster, read from the real API server (tests/k8s/conftest.py): the
resources the run created, each with its operator's final state, and the failed ones named. The operators
themselves are not here, so each status is written as its operator writes it (the e2e itself runs on the real
cluster: docs/cluster-guide.md)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kuberec.backends import HorovodJob, SparkJob
from kuberec.backends.k8s.kinds import KINDS
from kuberec.backends.k8s.naming import POD_NAME_ENV, POD_NAMESPACE_ENV
from kuberec.backends.k8s.options import ClusterOptions
from kuberec.backends.k8s.render import render
from kuberec.settings import Settings
from tests.e2e.driver import Outcome, created_resources, format_summary


def test_the_summary_lists_what_the_run_created_with_final_states_and_names_the_failure(k8s_api_client,
                                                                                         k8s_namespace, tmp_path,
                                                                                         monkeypatch):
    from kubernetes import client

    api = client.CustomObjectsApi(k8s_api_client)
    settings = Settings(home=tmp_path, lake_uri="s3://kuberec/e2e", namespace=k8s_namespace, backend="kubernetes")
    started = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
    spark = render(SparkJob("ingest-fashion-mnist", "kuberec.ingest.fashion_mnist"), settings, ClusterOptions())
    monkeypatch.setenv(POD_NAMESPACE_ENV, "kubeflow")  # as in a KFP task pod
    monkeypatch.setenv(POD_NAME_ENV, "kuberec-similarity-x7k2q-system-container-impl-1234")
    mpi = render(HorovodJob("train-similarity", "kuberec.similarity.train", workers=2), settings, ClusterOptions())
    for body, status in (
            (spark, {"applicationState": {"state": "COMPLETED"}, "driverInfo": {},
                     "terminationTime": "2099-01-01T00:00:00Z"}),
            (mpi, {"conditions": [{"type": "Failed", "status": "True", "reason": "MPIJobFailed",
                                   "message": "launcher failed", "lastTransitionTime": "2099-01-01T00:00:00Z"}]})):
        kind = KINDS[body["kind"]]
        api.create_namespaced_custom_object(kind.group, kind.version, k8s_namespace, kind.plural, body)
        api.patch_namespaced_custom_object_status(kind.group, kind.version, k8s_namespace, kind.plural,
                                                  body["metadata"]["name"], {"status": status})

    found = created_resources(api, k8s_namespace, started)
    assert sorted((r["kind"], r["step"], r["state"], r["failed"]) for r in found) == [
        ("MPIJob", "train-similarity", "Failed", True),
        ("SparkApplication", "ingest-fashion-mnist", "COMPLETED", False)]
    by_kind = {r["kind"]: r for r in found}
    assert by_kind["MPIJob"]["message"] == "MPIJobFailed: launcher failed"
    assert (by_kind["MPIJob"]["pod"], by_kind["SparkApplication"]["pod"]) == (
        "kubeflow/kuberec-similarity-x7k2q-system-container-impl-1234", "")
    assert by_kind["SparkApplication"]["seconds"] > 0  # creation to the last time in its status
    assert created_resources(api, k8s_namespace, datetime.now(timezone.utc) + timedelta(hours=1)) == []

    summary = {"started": started.isoformat(), "cluster": "kubeconfig", "lake": "s3://kuberec/e2e",
               "components": "in kuberec/kuberec-runtime:dev (KFP DockerRunner)", "resources": found,
               "steps": [vars(Outcome("pipeline similarity", False, 12.0, error="step 'train-similarity' failed"))]}
    text = format_summary(summary)
    assert "FAILED pipeline similarity (12 s)" in text
    assert "components: in kuberec/kuberec-runtime:dev (KFP DockerRunner)" in text
    assert "| step 'train-similarity' failed" in text
    assert "from pod kubeflow/kuberec-similarity-x7k2q-system-container-impl-1234" in text
    failed_job = f"MPIJob {mpi['metadata']['name']} (Failed: MPIJobFailed: launcher failed)"
    assert f"FAILED: pipeline similarity; {failed_job}" in text


def test_the_rollout_load_counts_every_failed_request_and_which_answer_came_when():
    """ContinuousLoad (make e2e's rollout check) against a stdlib server that answers A, then B, then fails, then A."""
    import http.server
    import json
    import threading
    import time

    from tests.e2e.driver import ContinuousLoad

    phase = {"answer": "A", "status": 200}

    class Server(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802  (the stdlib's name)
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"outputs": [{"data": [phase["answer"]]}]} if phase["status"] == 200
                              else {"error": "no ready endpoint"}).encode()
            self.send_response(phase["status"])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with ContinuousLoad(f"http://127.0.0.1:{server.server_port}/proxy", "/v2/models/m/infer", "{}", 2) as load:
            for answer, status in (("A", 200), ("B", 200), ("B", 503), ("A", 200)):
                phase.update(answer=answer, status=status)
                time.sleep(0.3)
    finally:
        server.shutdown()
    summary = load.summary()
    assert summary["clients"] == 2 and summary["errors"] > 0
    assert summary["first errors"][0] == "503: no ready endpoint"
    assert len(summary["answers (distinct, requests each, in order)"]) == 2  # A first, then B
    assert summary["the last answer was the first"] is True
    assert summary["requests"] == sum(summary["answers (distinct, requests each, in order)"]) + summary["errors"]


def test_a_failed_commands_error_is_the_lines_that_say_what_failed_even_from_inside_a_component():
    """KFP's local runner indents a component's log; progress bars and CUDA notices are not the error."""
    import os
    import sys

    from tests.e2e.driver import run_command

    script = r'''
import sys
print("Downloading artifacts: 100%|##########| 10/10")
print("    E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit")
print("      File \"/usr/local/lib/python3.11/site-packages/kuberec/training/worker.py\", line 39")
print("    kuberec.training.worker.TrainingError: Horovod is not importable (No module named 'horovod')")
print("\x1b[91m06:31:11.990 - ERROR - Task 'evaluate-widedeep' finished with status FAILURE\x1b[0m", file=sys.stderr)
print("RuntimeError: Pipeline 'kuberec-widedeep' finished with status FAILURE.", file=sys.stderr)
sys.exit(1)
'''
    outcome, _ = run_command("pipeline widedeep", [sys.executable, "-c", script], dict(os.environ), 60)
    assert not outcome.ok
    # (stdout and stderr are relayed by two threads: their lines may interleave either way)
    assert sorted(outcome.error.splitlines()) == sorted([
        "kuberec.training.worker.TrainingError: Horovod is not importable (No module named 'horovod')",
        "06:31:11.990 - ERROR - Task 'evaluate-widedeep' finished with status FAILURE",
        "RuntimeError: Pipeline 'kuberec-widedeep' finished with status FAILURE."])
