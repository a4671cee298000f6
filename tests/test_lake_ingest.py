"""The real Spark job into a real Delta table on 2,000 Fashion-MNIST images: idempotency, catalog growth, the
"added since" diff, and the Petastorm feed reading exact snapshots and shards."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kuberec.datasets import fashion_mnist as fm
from kuberec.errors import DataError
from kuberec.ingest.fashion_mnist import ingest_fashion_mnist
from kuberec.ingest.images import ingest_images, to_catalog_image
from kuberec.lake import feed
from kuberec.lake.delta import history, rows_added_since, table_version

PER_SPLIT = 1000  # 1,000 train + 1,000 test = 2,000 images


@pytest.fixture(scope="module")
def source() -> str:
    return str(fm.DEBIAN_DIR)


@pytest.fixture(scope="module")
def lake(spark, source, tmp_path_factory):
    """A catalog table: v0 = first 1,000 images of each split."""
    uri = str(tmp_path_factory.mktemp("lake") / "fashion_mnist")
    assert ingest_fashion_mnist(spark, source, uri, PER_SPLIT) == 0
    return uri


def real_images(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    def read(kind: str) -> np.ndarray:
        spec = fm.idx_file(split, kind)
        return fm.parse_idx(spec, fm.decompress("", (fm.DEBIAN_DIR / f"{spec.name}.gz").read_bytes()))

    images, labels = read("images"), read("labels")
    return images[:n], labels[:n]


def test_table_has_stable_ids_labels_and_pixels(spark, lake):
    df = spark.read.format("delta").load(lake)
    assert df.count() == 2 * PER_SPLIT
    assert {r.split: r["count"] for r in df.groupBy("split").count().collect()} == {"train": PER_SPLIT,
                                                                                  "test": PER_SPLIT}
    first_test = df.where("item_id = 60000").first()
    images, labels = real_images("test", 1)
    assert first_test.split == "test" and first_test.label == labels[0]
    assert first_test.label_name == fm.LABEL_NAMES[labels[0]]
    assert bytes(first_test.image) == images[0].tobytes()
    assert first_test.source == "fashion-mnist" and first_test.ingested_at is not None


def test_rerun_is_idempotent(spark, source, lake):
    assert ingest_fashion_mnist(spark, source, lake, PER_SPLIT) == 0
    assert table_version(lake) == 0
    assert spark.read.format("delta").load(lake).count() == 2 * PER_SPLIT


def test_growth_merges_only_new_rows_and_diff_reports_them(spark, source, tmp_path):
    uri = str(tmp_path / "t")
    ingest_fashion_mnist(spark, source, uri, 100)
    assert ingest_fashion_mnist(spark, source, uri, 150) == 1
    df = spark.read.format("delta").load(uri)
    assert df.count() == 300 and df.select("item_id").distinct().count() == 300
    added = rows_added_since(uri, 0)
    assert [r["item_id"] for r in added] == list(range(100, 150)) + list(range(60100, 60150))
    assert {r["_commit_version"] for r in added} == {1}
    assert rows_added_since(uri, 1) == []
    assert history(uri)[0]["operation"] == "MERGE"
    with pytest.raises(Exception, match="cannot diff"):
        rows_added_since(uri, 5)


def png_bytes(pixels: np.ndarray, fmt: str = "PNG", size: int = 28) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).resize((size, size)).save(out, format=fmt)
    return out.getvalue()


def test_catalog_images_append_atomically_and_become_visible(spark, source, tmp_path):
    uri = str(tmp_path / "catalog")
    ingest_fashion_mnist(spark, source, uri, 50)
    before = table_version(uri)
    images, _ = real_images("test", 3)
    files = []
    for i, fmt in enumerate(["PNG", "JPEG"]):
        path = tmp_path / f"new{i}.{fmt.lower()}"
        # A product photo: dark garment on a white background, larger than 28x28.
        path.write_bytes(png_bytes(255 - images[i], fmt, size=112))
        files.append(str(path))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")

    with pytest.raises(DataError, match="broken.png"):
        ingest_images(spark, files + [str(broken)], uri, label=1)
    assert table_version(uri) == before  # nothing from the failed batch was written

    result = ingest_images(spark, files, uri, label=1)
    assert result.version == before + 1
    assert sorted(result.added.values()) == [60050, 60051]
    rows = {r.item_id: r for r in spark.read.format("delta").load(uri).where("split = 'catalog'").collect()}
    assert set(rows) == {60050, 60051} and all(r.label == 1 and r.label_name == "Trouser" for r in rows.values())
    # Inverted back to light-on-dark and close to the original pixels.
    png_row = np.frombuffer(rows[result.added[files[0]]].image, np.uint8).reshape(28, 28).astype(int)
    assert np.abs(png_row - images[0].astype(int)).mean() < 20
    assert [r["item_id"] for r in rows_added_since(uri, before)] == [60050, 60051]

    again = ingest_images(spark, files, uri)
    assert again.added == {} and set(again.skipped.values()) == {60050, 60051}
    assert table_version(uri) == before + 1


def test_concurrent_uploads_all_land_with_distinct_ids(spark, source, tmp_path, monkeypatch, caplog):
    """Three uploads to one catalog at once, each forced to read the table before any of them commits (the race
    the Delta commit settles): the losers read the winner's version again and take the next ids, so every image
    lands once; a picture two uploads share is one item."""
    import threading

    from kuberec.ingest import images as images_module

    uri = str(tmp_path / "catalog")
    ingest_fashion_mnist(spark, source, uri, 20)
    before = table_version(uri)
    pictures = real_images("test", 27)[0][20:]  # not among the 20 per split already ingested
    batches = []
    for writer in range(3):  # writer w uploads pictures 2w and 2w+1, and everyone uploads picture 6
        batch = []
        for i in (2 * writer, 2 * writer + 1, 6):
            path = tmp_path / f"writer{writer}-{i}.png"
            path.write_bytes(png_bytes(pictures[i]))
            batch.append(str(path))
        batches.append(batch)

    all_read = threading.Barrier(3, timeout=120)
    first_attempts: set[int] = set()
    real_frame = images_module.catalog_frame

    def frame_after_everyone_read(spark_session, rows):
        if threading.get_ident() not in first_attempts:  # only the first attempt waits; retries go straight on
            first_attempts.add(threading.get_ident())
            all_read.wait()
        return real_frame(spark_session, rows)

    monkeypatch.setattr(images_module, "catalog_frame", frame_after_everyone_read)
    caplog.set_level("WARNING", logger="kuberec.lake.delta")
    results, errors = [], []

    def upload(batch):
        try:
            results.append(ingest_images(spark, batch, uri))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=upload, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    rows = spark.read.format("delta").load(uri).where("split = 'catalog'").collect()
    assert any("another writer committed first" in record.getMessage() for record in caplog.records)
    assert len(rows) == 7 and len({r.item_id for r in rows}) == 7 and len({r.image_sha256 for r in rows}) == 7
    assert sorted(r.item_id for r in rows) == list(range(60020, 60027))
    added = [item for result in results for item in result.added.values()]
    assert sorted(added) == list(range(60020, 60027))  # each new item reported by exactly one upload
    assert table_version(uri) == before + 3


def test_a_write_that_keeps_losing_the_race_says_so():
    from delta.exceptions import ConcurrentAppendException

    from kuberec.lake.delta import ConcurrentWriteError, retry_on_conflict

    calls = []

    def always_conflicts():
        calls.append(1)
        raise ConcurrentAppendException("Files were added to the root of the table by a concurrent update.")

    with pytest.raises(ConcurrentWriteError, match="adding 3 images to /lake/catalog: another writer committed to "
                                                   "the table first 3 times in a row.*Run it again"):
        retry_on_conflict(always_conflicts, "adding 3 images to /lake/catalog", attempts=3, base_delay_s=0.01)
    assert len(calls) == 3


def test_an_overwrite_that_loses_the_race_keeps_the_same_content_or_says_what_conflicted():
    from delta.exceptions import ConcurrentAppendException

    from kuberec.lake.delta import ConcurrentWriteError, overwrite_table

    def loses():
        raise ConcurrentAppendException("Files were added to the root of the table by a concurrent update.")

    def never_called():
        raise AssertionError("a table that already holds the content is not written again")

    held = iter([False, True])  # not held before the write; held once the other writer's commit landed
    assert overwrite_table(lambda: None, holds_it=lambda: False, what="writing t") is True
    assert overwrite_table(never_called, holds_it=lambda: True, what="writing t") is False
    assert overwrite_table(lambda: None, holds_it=lambda: True, what="writing t", force=True) is True
    assert overwrite_table(loses, holds_it=lambda: next(held), what="writing t") is False
    with pytest.raises(ConcurrentWriteError, match="writing /lake/t from x.csv: another writer replaced the table "
                                                   "with different content.*ConcurrentAppendException.*Run it again"):
        overwrite_table(loses, holds_it=lambda: False, what="writing /lake/t from x.csv")


def test_catalog_image_normalisation_keeps_dark_backgrounds():
    dark = np.zeros((40, 20), np.uint8)
    dark[10:30, 5:15] = 200
    out = to_catalog_image(png_bytes(dark, size=40), "x.png")
    assert out.shape == (28, 28) and out[0, 0] == 0 and out[14, 14] > 150
    with pytest.raises(DataError, match="x.gif: not a readable"):
        to_catalog_image(b"GIF89a-nonsense", "x.gif")


def test_feed_reads_exact_snapshot_and_shards(spark, source, tmp_path, caplog):
    uri = str(tmp_path / "feed")
    ingest_fashion_mnist(spark, source, uri, 200)
    ingest_fashion_mnist(spark, source, uri, 300)  # v1 adds 100 per split, rewriting nothing of v0
    with caplog.at_level(logging.INFO):
        v0 = feed.load_arrays(uri, version=0, split="train")
    # Petastorm's note that a Delta table has no Petastorm schema (expected) stays out of the steps' logs.
    assert "Unischema" not in caplog.text
    latest = feed.load_arrays(uri, split="train")
    assert (v0.version, len(v0.item_ids)) == (0, 200)
    assert (latest.version, len(latest.item_ids)) == (1, 300)
    assert v0.item_ids.tolist() == list(range(200))
    images, labels = real_images("train", 200)
    assert np.array_equal(v0.images, images) and np.array_equal(v0.labels, labels)

    shards = [feed.load_arrays(uri, version=0, split="test", shard=s, num_shards=2) for s in range(2)]
    ids = [set(s.item_ids.tolist()) for s in shards]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    assert ids[0] | ids[1] == set(range(60000, 60200))

    seen = []
    for shard in range(2):
        with feed.make_dataset(uri, version=0, split="test", batch_size=64, shard=shard, num_shards=2,
                               with_item_id=True) as dataset:
            for image, label, item_id in dataset:
                assert image.dtype.name == "float32" and image.shape[1:] == (28, 28, 1)
                assert float(image.numpy().max()) <= 1.0
                seen += item_id.numpy().tolist()
    assert sorted(seen) == list(range(60000, 60200))


def test_a_grown_catalog_still_shards_evenly_over_the_horovod_ranks(spark, source, tmp_path, monkeypatch):
    """A MERGE writes one file per split and task; Petastorm deals whole files (row groups) to the ranks, so the
    uncapped file of the 270 new rows gave one of two ranks 284 of the 300 rows. The catalog caps rows per file: the
    growth lands in files of 10 rows, and each rank gets close to half (140-160 of 300 in probes; at least a third
    whichever way the file names order the small files of the first write)."""
    import pyarrow.parquet as pq

    from kuberec.ingest import catalog
    from kuberec.lake.delta import snapshot_files

    monkeypatch.setattr(catalog, "MAX_ROWS_PER_FILE", 10)
    uri = str(tmp_path / "grown")
    ingest_fashion_mnist(spark, source, uri, 30)
    ingest_fashion_mnist(spark, source, uri, 300)
    _, files = snapshot_files(uri, None)
    assert max(pq.ParquetFile(f).metadata.num_rows for f in files) <= 10
    sizes = [len(feed.load_arrays(uri, split="train", shard=s, num_shards=2).item_ids) for s in range(2)]
    assert sum(sizes) == 300 and min(sizes) >= 100, sizes
    assert spark.conf.get("spark.sql.files.maxRecordsPerFile") == "0"  # the session's own setting is back


def test_feed_errors_name_the_problem(lake):
    with pytest.raises(feed.FeedError, match="no rows in split 'catalog'"):
        feed.load_arrays(lake, split="catalog")
    with pytest.raises(feed.FeedError, match="shard 2 is outside"):
        feed.load_arrays(lake, shard=2, num_shards=2)
    with pytest.raises(Exception, match="no Delta table"):
        feed.load_arrays(lake + "-missing")


def test_cli_runs_the_job_through_the_local_backend(settings, source):
    kuberec = [sys.executable, "-m", "kuberec.cli"]
    run = subprocess.run(kuberec + ["ingest", "fashion-mnist", "--source", source, "--max-per-split", "20"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert table_version(settings.table_uri("fashion_mnist")) == 0
    bad = subprocess.run(kuberec + ["ingest", "images", str(settings.home / "nope.png")], capture_output=True,
                         text=True)
    assert bad.returncode == 2
    assert "nope.png: no such file or directory" in bad.stderr
    assert "Traceback" not in bad.stderr
