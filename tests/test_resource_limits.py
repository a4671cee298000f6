"""Resource limits on the catalog's writers, produced for real: a batch of pictures ingested in bounded chunks (and a
job killed between chunks), and a disk that fills during a Delta write (a few-MB tmpfs on the lake, in a private
mount namespace so nothing is visible outside the test or left behind)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kuberec.datasets import fashion_mnist as fm
from kuberec.errors import DataError
from kuberec.ingest.fashion_mnist import ingest_fashion_mnist
from kuberec.ingest.images import decode_all, ingest_images
from kuberec.lake.delta import table_version

PER_SPLIT = 20  # Fashion-MNIST images per split in the catalogs made here


def new_pictures(count: int, offset: int = PER_SPLIT) -> np.ndarray:
    """Fashion-MNIST test images not among the first PER_SPLIT (those are in the catalogs already)."""
    spec = fm.idx_file("test", "images")
    images = fm.parse_idx(spec, fm.decompress("", (fm.DEBIAN_DIR / f"{spec.name}.gz").read_bytes()))
    return images[offset:offset + count]


def write_png(path: Path, pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return str(path)


def catalog_rows(table: str) -> list[tuple[int, str]]:
    """(item_id, image_sha256) of the catalog split's rows in the latest version, read without a JVM."""
    import pyarrow.parquet as pq

    from kuberec.lake.delta import snapshot_files

    rows = []
    for file in snapshot_files(table)[1]:
        if "/split=catalog/" in file:
            part = pq.read_table(file.removeprefix("file://"), columns=["item_id", "image_sha256"]).to_pydict()
            rows += zip(part["item_id"], part["image_sha256"])
    return sorted(rows)


@pytest.mark.fast
def test_unreadable_files_are_all_counted_and_the_first_ones_named(tmp_path):
    good = write_png(tmp_path / "good.png", new_pictures(1)[0])
    broken = []
    for i in range(12):
        (tmp_path / f"broken{i:02d}.png").write_bytes(b"\x89PNG not really")
        broken.append(str(tmp_path / f"broken{i:02d}.png"))
    with tempfile.TemporaryFile() as pixels, pytest.raises(DataError) as caught:
        decode_all([[good, *broken[:4]], broken[4:]], pixels)
    message = str(caught.value)
    assert message.startswith("12 of 13 files unreadable, nothing added: ") and message.endswith("; and 2 more")
    assert "broken00.png: not a readable PNG/JPEG image" in message and "broken11.png" not in message


@pytest.mark.faults
def test_a_batch_lands_in_chunks_and_a_job_killed_between_chunks_resumes(spark, settings, tmp_path, caplog):
    """10 new pictures and a copy of one of them, 4 per chunk: the job (a real process with its JVM) is killed with
    SIGKILL once chunk 1 is logged; whole chunks only are in the table, and running the batch again adds the rest,
    each picture exactly once with contiguous ids."""
    table = str(tmp_path / "lake" / "fashion_mnist")
    ingest_fashion_mnist(spark, str(fm.DEBIAN_DIR), table, PER_SPLIT)
    pictures = new_pictures(10)
    batch = tmp_path / "batch"
    batch.mkdir()
    for i, pixels in enumerate(pictures):
        write_png(batch / f"p{i:02d}.png", pixels)
    write_png(batch / "p99-copy-of-p00.png", pictures[0])  # sorts last: chunk 3 of 3

    job = subprocess.Popen([sys.executable, "-m", "kuberec.ingest.images", str(batch), "--table", table,
                            "--chunk-size", "4"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                           start_new_session=True)  # its own process group: the JVM goes with it
    seen = []
    try:
        for line in job.stderr:
            seen.append(line)
            if "chunk 1/3:" in line:
                os.killpg(job.pid, signal.SIGKILL)
                break
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=60)
    assert any("chunk 1/3: 4 images, 4 of 11 ingested" in line for line in seen), "".join(seen[-20:])
    kept = catalog_rows(table)
    # Whole chunks only, each one commit: chunk 1, or more that committed before the kill landed.
    assert (len(kept), table_version(table)) in ((4, 1), (8, 2), (10, 3))

    caplog.set_level("INFO", logger="kuberec.ingest.images")
    result = ingest_images(spark, [str(batch)], table, chunk_size=4)
    assert len(result.added) == 10 - len(kept) and len(result.skipped) == len(kept) + 1
    rows = catalog_rows(table)
    assert [item for item, _ in rows] == list(range(60020, 60030))  # each picture once, no gap
    assert len({digest for _, digest in rows}) == 10
    progress = [r.getMessage() for r in caplog.records if re.match(r"chunk \d/3: ", r.getMessage())]
    assert [line.split(" (")[0] for line in progress] == [
        "chunk 1/3: 4 images, 4 of 11 ingested", "chunk 2/3: 4 images, 8 of 11 ingested",
        "chunk 3/3: 3 images, 11 of 11 ingested"]
    assert table_version(table) == 3  # one version per chunk that added rows; a chunk already there commits nothing


def test_pictures_staged_in_the_lake_are_read_back(settings, s3_server, monkeypatch, tmp_path):
    """The driver of a Kubernetes job reads staged pictures from object storage, one chunk of files at a time."""
    from kuberec.lake import raw
    from kuberec.settings import load_settings

    s3_server.client().create_bucket(Bucket="pictures")
    for name, value in {"KUBEREC_LAKE": "s3://pictures/lake", "KUBEREC_S3_ENDPOINT": s3_server.endpoint,
                        "AWS_ACCESS_KEY_ID": "kuberec-test", "AWS_SECRET_ACCESS_KEY": "kuberec-test-secret",
                        "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    picture = write_png(tmp_path / "shoe.png", new_pictures(1)[0])
    staged = raw.stage(load_settings(), [Path(picture)], "images")
    assert raw.read_bytes(f"{staged}/shoe.png") == Path(picture).read_bytes()
    with pytest.raises(OSError):
        raw.read_bytes(f"{staged}/nope.png")


# --- A disk that fills during a Delta write ---------------------------------------------------------------------

LAKE_BYTES = "1m"  # the tmpfs on the lake: the 40-row table fits, 6,000 more Fashion-MNIST rows (~2.5 MB) do not
GROWN_PER_SPLIT = 3000


def table_rows(table: str) -> dict[str, int]:
    """The latest version of a table and how many rows it holds, read without a JVM."""
    import pyarrow.parquet as pq

    from kuberec.lake.delta import snapshot_files

    version, files = snapshot_files(table)
    return {"version": version, "rows": sum(pq.read_metadata(f.removeprefix("file://")).num_rows for f in files)}


def disk_full_child(home: Path, seed_table: Path) -> dict:
    """Runs as root inside `unshare --mount --propagation private` (this file's __main__): mounts a small tmpfs on
    `<home>/lake`, copies the seed table there, grows it with `kuberec ingest fashion-mnist` until the disk is full,
    reads the previous version back, frees space (a larger tmpfs), and runs the same command again."""
    lake = home / "lake"
    lake.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={LAKE_BYTES}", "tmpfs", str(lake)], check=True)
    table = lake / "fashion_mnist"
    shutil.copytree(seed_table, table)
    grow = [sys.executable, "-m", "kuberec.cli", "ingest", "fashion-mnist", "--source", str(fm.DEBIAN_DIR),
            "--max-per-split", str(GROWN_PER_SPLIT)]
    started = time.monotonic()
    full = subprocess.run(grow, capture_output=True, text=True)
    failed_after = time.monotonic() - started
    kept = table_rows(str(table))
    used_kib = shutil.disk_usage(lake).used // 1024
    subprocess.run(["mount", "-o", "remount,size=64m", str(lake)], check=True)  # space freed
    started = time.monotonic()
    rerun = subprocess.run(grow, capture_output=True, text=True)
    return {"full_status": full.returncode, "full_stderr": full.stderr, "failed_after_s": round(failed_after, 1),
            "kept": kept, "used_kib_when_full": used_kib, "rerun_status": rerun.returncode,
            "rerun_stderr": rerun.stderr[-3000:], "rerun_s": round(time.monotonic() - started, 1),
            "after": table_rows(str(table))}


@pytest.mark.faults
def test_a_full_disk_fails_the_write_with_one_line_and_keeps_the_previous_version(spark, settings, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a small tmpfs on the lake in a private mount namespace (unshare)")
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a private mount namespace")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:  # root without CAP_SYS_ADMIN, as in an unprivileged container
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.strip()}")
    seed = tmp_path / "seed" / "fashion_mnist"
    assert ingest_fashion_mnist(spark, str(fm.DEBIAN_DIR), str(seed), PER_SPLIT) == 0
    child = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, __file__,
                            str(settings.home), str(seed)], capture_output=True, text=True, timeout=900)
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    (tmp_path / "disk-full.json").write_text(json.dumps(result, indent=2))  # what happened, for a look afterwards
    table = f"{settings.home}/lake/fashion_mnist"

    assert result["full_status"] == 2, result["full_stderr"][-3000:]
    lines = result["full_stderr"].splitlines()
    # The job's own line (the table, the cause, what to do), then the launcher's; Spark's log above them may hold
    # the executor's Java stack trace, but no Python traceback ends the program.
    job_error = [line for line in lines if line.startswith("kuberec.ingest.fashion_mnist: error: ")]
    assert len(job_error) == 1, result["full_stderr"][-3000:]
    assert f"under {table} " in job_error[0] and "no space left on device" in job_error[0].lower(), job_error
    assert "still at version 0" in job_error[0] and "Free space there and run it again" in job_error[0], job_error
    assert lines[-1].startswith("kuberec ingest fashion-mnist: error: step 'ingest-fashion-mnist' failed with exit "
                                "status 2")
    assert "Traceback" not in result["full_stderr"]
    assert result["kept"] == {"version": 0, "rows": 2 * PER_SPLIT}  # the previous version, complete
    assert result["rerun_status"] == 0, result["rerun_stderr"]
    assert result["after"] == {"version": 1, "rows": 2 * GROWN_PER_SPLIT}
    # Nothing of the namespace is visible here: the lake directory is the empty mount point on the real disk.
    assert not Path(table).exists()


if __name__ == "__main__":  # the disk-full test's child, inside its private mount namespace
    print(json.dumps(disk_full_child(Path(sys.argv[1]), Path(sys.argv[2]))))
