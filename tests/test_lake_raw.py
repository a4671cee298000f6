"""Source files staged in the lake for pods (kuberec.lake.raw) and the steps that use them on the Kubernetes backend:
generated Instacart files and catalog uploads reach object storage, and the Spark driver checks a downloaded copy.
Object storage is the session's moto S3 server (tests/conftest.py); no pod runs here (the real cluster runs these
steps in `make cluster-smoke`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kuberec.errors import DataError
from kuberec.lake import raw
from kuberec.settings import SettingsError, load_settings

pytestmark = pytest.mark.timeout(180)
BUCKET = "kuberec-raw"


@pytest.fixture
def lake(settings, s3_server, monkeypatch):
    """Settings whose lake is in S3, with the Kubernetes backend (its steps stage local files)."""
    s3 = s3_server.client()
    if BUCKET not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=BUCKET)
    prefix = f"{Path(str(settings.home)).parent.name}/lake"  # one prefix per test
    for name, value in {"KUBEREC_LAKE": f"s3://{BUCKET}/{prefix}", "KUBEREC_S3_ENDPOINT": s3_server.endpoint,
                        "KUBEREC_BACKEND": "kubernetes", "AWS_ACCESS_KEY_ID": "kuberec-test",
                        "AWS_SECRET_ACCESS_KEY": "kuberec-test-secret", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def objects(s3_server, uri: str) -> dict[str, bytes]:
    s3 = s3_server.client()
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/").get("Contents", [])
    return {item["Key"].rsplit("/", 1)[1]: s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for item in listing}


def test_staging_is_content_addressed_and_copies_once(lake, s3_server, tmp_path, caplog):
    source = tmp_path / "files"
    source.mkdir()
    (source / "a.csv").write_text("x\n1\n")
    (source / "b.csv").write_text("y\n2\n")
    first = raw.stage_directory(lake, source, "demo")
    assert first.startswith(f"{lake.table_uri('raw/demo')}/") and first.startswith("s3a://")
    assert objects(s3_server, first) == {"a.csv": b"x\n1\n", "b.csv": b"y\n2\n"}

    caplog.set_level("INFO", logger="kuberec.lake.raw")
    assert raw.stage_directory(lake, source, "demo") == first
    assert "0 of 2 files copied" in caplog.text  # the same files: nothing copied again

    (source / "a.csv").write_text("x\n9\n")  # same size, other content: another place, the first stays intact
    second = raw.stage_directory(lake, source, "demo")
    assert second != first
    assert objects(s3_server, first)["a.csv"] == b"x\n1\n" and objects(s3_server, second)["a.csv"] == b"x\n9\n"


def test_fetch_and_list_read_back_what_was_staged(lake, s3_server, tmp_path):
    source = tmp_path / "files"
    source.mkdir()
    (source / "one.png").write_bytes(b"\x89PNG one")
    (source / "notes.txt").write_text("not a picture")
    prefix = raw.stage_directory(lake, source, "images")
    assert raw.list_files(prefix) == [f"{prefix}/notes.txt", f"{prefix}/one.png"]
    assert raw.list_files(f"{prefix}/one.png") == [f"{prefix}/one.png"]
    copy = raw.fetch(prefix, tmp_path / "copy")
    assert (copy / "one.png").read_bytes() == b"\x89PNG one" and (copy / "notes.txt").read_text() == "not a picture"
    with pytest.raises(DataError, match="holds no files"):
        raw.fetch(f"{lake.table_uri('raw/nothing-here')}", tmp_path / "empty")


def test_staging_refuses_what_pods_could_not_read(settings, lake, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for directory in (a, b):
        directory.mkdir()
        (directory / "shoe.jpg").write_bytes(directory.name.encode())
    with pytest.raises(DataError, match=r"same name .*shoe\.jpg"):
        raw.stage(lake, [a / "shoe.jpg", b / "shoe.jpg"], "images")
    with pytest.raises(DataError, match="not a directory"):
        raw.stage_directory(lake, tmp_path / "missing", "x")
    local = load_settings(lake_uri=str(tmp_path / "lake"))
    with pytest.raises(SettingsError, match="pods cannot read the local lake"):
        raw.stage(local, [a / "shoe.jpg"], "images")


def test_instacart_source_is_staged_and_the_driver_checks_a_downloaded_copy(lake, s3_server, tmp_path):
    """On the Kubernetes backend the pipeline's first step hands on a place in the lake; the ingest driver, given
    that place, validates and hashes a local copy, and records the lake location as the bronze tables' source."""
    from kuberec.datasets.instacart import FILES, InstacartDataError
    from kuberec.ingest import steps
    from kuberec.ingest.instacart import plan_ingest

    location = steps.instacart_source(lake, "", users=60, seed=3)
    assert location.startswith(lake.table_uri("raw/instacart") + "/")
    assert sorted(objects(s3_server, location)) == sorted(spec.name for spec in FILES)
    assert steps.instacart_source(lake, "", users=60, seed=3) == location  # generated once, staged once

    plan = plan_ingest(lake, location, tmp_path / "scratch")
    generated = lake.data_dir / steps.SYNTH_DIR
    assert plan.location == location and plan.source == tmp_path / "scratch"
    assert plan.hashes == {spec.name: raw.file_sha256(generated / spec.name) for spec in FILES}
    assert plan.summary.users == 60 and len(plan.todo) == len(FILES)  # nothing ingested yet: every table to write

    # A broken file staged by hand: the driver's check names it, before Spark writes anything.
    broken = tmp_path / "broken"
    shutil.copytree(generated, broken, ignore=shutil.ignore_patterns("*.json"))
    lines = (broken / "orders.csv").read_text().splitlines()
    lines[2] = lines[2].replace(",prior,", ",someday,", 1)
    (broken / "orders.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(InstacartDataError, match=r"orders.csv row 2 .*eval_set"):
        plan_ingest(lake, raw.stage_directory(lake, broken, "instacart"), tmp_path / "scratch-broken")


def test_catalog_uploads_are_staged_for_the_driver(lake, s3_server, tmp_path):
    """`kuberec ingest images` on the Kubernetes backend: the pictures go to the lake, the driver finds them there."""
    from PIL import Image

    from kuberec.ingest.images import expand_paths

    shoes = tmp_path / "shoes"
    (shoes / "more").mkdir(parents=True)
    for index, path in enumerate([shoes / "a.png", shoes / "more" / "b.jpg"]):
        Image.new("L", (40, 30), 200 + index).save(path)
    (shoes / "readme.txt").write_text("skipped: not a picture")
    staged = raw.stage(lake, [Path(p) for p in expand_paths([str(shoes)])], "images")
    assert sorted(objects(s3_server, staged)) == ["a.png", "b.jpg"]
    assert expand_paths([staged]) == [f"{staged}/a.png", f"{staged}/b.jpg"]
    with pytest.raises(DataError, match="no such file"):
        expand_paths([str(tmp_path / "nope.png")])
