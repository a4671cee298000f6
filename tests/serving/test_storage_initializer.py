"""kuberec's KServe storage initializer: what KServe passes it (URI/destination pairs, the S3 variables of the
predictor's Secrets) against moto's S3 server over real HTTP (a fake S3: no MinIO binary in `make test`; the
cluster smoke test runs it against MinIO in the pod KServe makes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kuberec.serving.storage_initializer import ModelDownloadError, download, s3_options

pytestmark = pytest.mark.timeout(120)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "kuberec-test", "AWS_SECRET_ACCESS_KEY": "kuberec-test-secret"}


@pytest.fixture(scope="module")
def s3(s3_server):
    client = s3_server.client(CREDENTIALS["AWS_ACCESS_KEY_ID"], CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket="mlflow")
    for key, body in {"artifacts/1/run/model/MLmodel": b"flavors: {}\n",
                      "artifacts/1/run/model/data/weights.bin": b"\x00\x01" * 1000,
                      "artifacts/1/run/other/file.txt": b"not the model"}.items():
        client.put_object(Bucket="mlflow", Key=key, Body=body)
    return s3_server.endpoint.removeprefix("http://")


def kserve_env(endpoint: str) -> dict[str, str]:
    """What KServe's credential builder sets from a Secret annotated s3-endpoint=<host:port>, s3-usehttps=0."""
    return {**CREDENTIALS, "S3_ENDPOINT": endpoint, "S3_USE_HTTPS": "0", "AWS_ENDPOINT_URL": f"http://{endpoint}"}


@pytest.mark.fast
def test_endpoint_options_follow_kserve_variables():
    assert s3_options({"AWS_ENDPOINT_URL": "http://minio:9000"})["scheme"] == "http"
    assert s3_options({"S3_ENDPOINT": "minio:9000", "S3_USE_HTTPS": "0"}) == {
        "region": "us-east-1", "endpoint_override": "minio:9000", "scheme": "http"}
    assert s3_options({"S3_ENDPOINT": "s3.example:443"})["scheme"] == "https"
    assert "endpoint_override" not in s3_options({})


def test_copies_the_prefix_and_only_it(s3, tmp_path, monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    count = download("s3://mlflow/artifacts/1/run/model", tmp_path, kserve_env(s3))
    assert count == 2
    assert (tmp_path / "MLmodel").read_bytes() == b"flavors: {}\n"
    assert (tmp_path / "data" / "weights.bin").read_bytes() == b"\x00\x01" * 1000
    assert not (tmp_path / "file.txt").exists()


def test_program_takes_kserve_arguments_and_names_a_missing_model(s3, tmp_path):
    env = {**kserve_env(s3), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "kuberec.serving.storage_initializer",
                         "s3://mlflow/artifacts/1/run/model/MLmodel", str(tmp_path / "one")],
                        env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "one" / "MLmodel").exists()
    missing = subprocess.run([sys.executable, "-m", "kuberec.serving.storage_initializer",
                              "s3://mlflow/artifacts/nope", str(tmp_path / "two")],
                             env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "nothing at s3://mlflow/artifacts/nope" in missing.stderr.strip().splitlines()[-1]


@pytest.mark.fast
def test_refuses_other_schemes(tmp_path):
    with pytest.raises(ModelDownloadError, match="s3:// only"):
        download("gs://bucket/model", tmp_path, {})
