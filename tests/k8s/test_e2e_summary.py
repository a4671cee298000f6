"""`make e2e`'s summary of what ran on the cluster, read from the real API server (tests/k8s/conftest.py): the
resources the run created, each with its operator's final state, and the failed ones named. The operators
themselves are not here, so each status is written as its operator writes it (the e2e itself runs on the real
cluster: docs/cluster-guide.md)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from kuberec.backends import HorovodJob, SparkJob
from kuberec.backends.k8s_resources import KINDS, ClusterOptions, render
from kuberec.settings import Settings
from pipelines.e2e import Outcome, created_resources, format_summary


def test_the_summary_lists_what_the_run_created_with_final_states_and_names_the_failure(k8s_api_client,
                                                                                         k8s_namespace, tmp_path):
    from kubernetes import client

    api = client.CustomObjectsApi(k8s_api_client)
    settings = Settings(home=tmp_path, lake_uri="s3://kuberec/e2e", namespace=k8s_namespace, backend="kubernetes")
    started = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
    spark = render(SparkJob("ingest-fashion-mnist", "kuberec.ingest.fashion_mnist"), settings, ClusterOptions())
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
    assert by_kind["SparkApplication"]["seconds"] > 0  # creation to the last time in its status
    assert created_resources(api, k8s_namespace, datetime.now(timezone.utc) + timedelta(hours=1)) == []

    summary = {"started": started.isoformat(), "cluster": "kubeconfig", "lake": "s3://kuberec/e2e",
               "resources": found,
               "steps": [vars(Outcome("pipeline similarity", False, 12.0, error="step 'train-similarity' failed"))]}
    text = format_summary(summary)
    assert "FAILED pipeline similarity (12 s)" in text
    assert "| step 'train-similarity' failed" in text
    failed_job = f"MPIJob {mpi['metadata']['name']} (Failed: MPIJobFailed: launcher failed)"
    assert f"FAILED: pipeline similarity; {failed_job}" in text
