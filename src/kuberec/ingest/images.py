"""Spark job: grow the catalog with new product images (PNG/JPEG) -> appended catalog rows.

Each image becomes a 28x28 grayscale item like Fashion-MNIST's: fitted into a square on its background colour,
resized, and inverted when its background is light (Fashion-MNIST has light garments on black). Every file is
decoded before anything is written; one unreadable file fails the whole batch with its name. An image already in
the catalog (same pixels) is skipped and reported, so re-running a batch adds nothing.

A batch of any size is read and written `--chunk-size` pictures at a time (default 1,000): memory holds one chunk's
files, plus 28x28 pixels per picture in a temporary file, and each chunk is one Delta commit, logged as it lands
("chunk 3/12: 1,000 images, 3,000 of 12,000 ingested"). A batch stopped after chunk k keeps chunks 1..k; running
it again adds only the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from typing import BinaryIO, Sequence

import numpy as np

from kuberec.datasets.fashion_mnist import IMAGE_SIDE, LABEL_NAMES
from kuberec.errors import DataError
from kuberec.ingest.catalog import TABLE_NAME, UNLABELLED, catalog_frame, catalog_rows, reporting_full_disk
from kuberec.settings import load_settings

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CATALOG_SPLIT = "catalog"
# Pictures per Delta commit: memory holds this many files at once (1,000 photos of 200 KB: 200 MB), and each
# commit costs a few seconds of Spark work, so larger batches are not much faster.
DEFAULT_CHUNK_SIZE = 1000
PIXELS = IMAGE_SIDE * IMAGE_SIDE
ERRORS_NAMED = 10  # unreadable files named in the error; the rest are counted


@dataclass(frozen=True)
class CatalogAddition:
    version: int
    added: dict[str, int]  # source path -> new item_id
    skipped: dict[str, int]  # source path -> item_id of the identical image already in the catalog


def to_catalog_image(data: bytes, name: str) -> np.ndarray:
    """Decode a PNG/JPEG into a Fashion-MNIST-like uint8 [28,28] image (light item on a dark background)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened).convert("L")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{name}: not a readable PNG/JPEG image ({err})") from err
    pixels = np.asarray(image)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background = int(np.median(border))
    side = max(image.size)
    square = Image.new("L", (side, side), background)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    small = np.asarray(square.resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.LANCZOS), dtype=np.uint8)
    return 255 - small if background > 127 else small


def expand_paths(paths: Sequence[str]) -> list[str]:
    """Files named directly, plus PNG/JPEG files found under directories and object-storage prefixes (where
    `kuberec.lake.raw.stage` puts uploads for pods) (sorted, so ids are reproducible)."""
    from kuberec.lake.raw import is_remote, list_files

    files: list[str] = []
    for path in paths:
        if is_remote(path):
            found = list_files(path)  # the object store of KUBEREC_S3_ENDPOINT
            files += found if found == [path] else [f for f in found if f.lower().endswith(IMAGE_SUFFIXES)]
        elif os.path.isdir(path):
            for root, _, names in os.walk(path):
                files += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
        elif os.path.exists(path):
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or directory")
    if not files:
        raise DataError(f"no PNG/JPEG files in {', '.join(paths)}")
    return sorted(dict.fromkeys(files))


def read_files(files: list[str]) -> dict[str, bytes]:
    """File contents, local or in the lake's object store (`kuberec.lake.raw.read_bytes`)."""
    from kuberec.lake.raw import read_bytes

    contents = {}
    for name in files:
        try:
            contents[name] = read_bytes(name)
        except OSError as err:
            raise DataError(f"{name}: could not be read ({err})") from err
    return contents


def decode_all(chunks: Sequence[list[str]], pixels: BinaryIO) -> dict[str, str]:
    """Decode every file, a chunk at a time, appending each one's 28x28 pixels to `pixels` in order; returns each
    file's pixel digest. One or more unreadable files: DataError naming them (nothing has been written)."""
    errors, digests = [], {}
    total = sum(len(chunk) for chunk in chunks)
    for number, chunk in enumerate(chunks, 1):
        contents = read_files(chunk)
        for name in chunk:
            try:
                image = to_catalog_image(contents.pop(name), name)
            except DataError as err:
                errors.append(str(err))
                image = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.uint8)  # keeps the file's place; never written
            pixels.write(image.tobytes())
            digests[name] = hashlib.sha256(image.tobytes()).hexdigest()
        if len(chunks) > 1:
            log.info("decoded chunk %d/%d (%s of %s images)", number, len(chunks), f"{len(digests):,}", f"{total:,}")
    if errors:
        more = f"; and {len(errors) - ERRORS_NAMED} more" if len(errors) > ERRORS_NAMED else ""
        raise DataError(f"{len(errors)} of {total} files unreadable, nothing added: "
                        + "; ".join(errors[:ERRORS_NAMED]) + more)
    return digests


def ingest_images(spark, files: Sequence[str], table_uri: str, label: int | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE) -> CatalogAddition:
    """Append new catalog items decoded from `files`, one Delta commit per `chunk_size` of them; every file is
    decoded before the first commit. Returns ids assigned and skipped.

    Concurrent uploads to one catalog all land: each takes ids after the others' (`retry_on_conflict`), and the same
    picture uploaded twice is one item."""
    from kuberec.lake.delta import retry_on_conflict, table_exists

    if label is not None and not 0 <= label < len(LABEL_NAMES):
        raise DataError(f"label {label} is outside 0..{len(LABEL_NAMES) - 1} ({', '.join(LABEL_NAMES)})")
    if chunk_size < 1:
        raise DataError(f"chunk size must be at least 1, not {chunk_size}")
    if not table_exists(table_uri):
        raise DataError(f"no catalog table at {table_uri}; run `kuberec ingest fashion-mnist` first")
    files = expand_paths(files)
    chunks = [files[start:start + chunk_size] for start in range(0, len(files), chunk_size)]
    added: dict[str, int] = {}
    skipped: dict[str, int] = {}
    version, done = -1, 0
    with tempfile.TemporaryFile(prefix="kuberec-images-") as pixels:  # the batch's pixels, off the heap
        digests = decode_all(chunks, pixels)
        pixels.seek(0)
        for number, chunk in enumerate(chunks, 1):
            images = np.frombuffer(pixels.read(len(chunk) * PIXELS), np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
            # Ids come from the table's current maximum, so a write that lost a race is computed again from the
            # new version.
            what = f"adding chunk {number}/{len(chunks)} ({len(chunk)} images) to {table_uri}"
            with reporting_full_disk(table_uri, what):
                result = retry_on_conflict(
                    partial(_add_images, spark, table_uri, chunk, dict(zip(chunk, images)),
                            {name: digests[name] for name in chunk}, label), what)
            added.update(result.added)
            skipped.update(result.skipped)
            version, done = result.version, done + len(chunk)
            log.info("chunk %d/%d: %d images, %s of %s ingested (%s at v%d)", number, len(chunks), len(chunk),
                     f"{done:,}", f"{len(files):,}", table_uri, version)
    return CatalogAddition(version, added, skipped)


def _add_images(spark, table_uri: str, files: list[str], images: dict[str, np.ndarray], digests: dict[str, str],
                label: int | None) -> CatalogAddition:
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from kuberec.lake.delta import table_version

    catalog = spark.read.format("delta").load(table_uri)
    known = {row.image_sha256: row.item_id for row in
             catalog.where(F.col("image_sha256").isin(list(set(digests.values()))))
             .select("image_sha256", "item_id").collect()}
    skipped = {name: known[d] for name, d in digests.items() if d in known}
    new_names, seen = [], set()
    for name in files:  # the same picture twice in one batch is one item
        if digests[name] not in known and digests[name] not in seen:
            new_names.append(name)
            seen.add(digests[name])
    if not new_names:
        version = table_version(table_uri)
        log.info("all %d images are already in the catalog (v%d)", len(files), version)
        return CatalogAddition(version, {}, skipped)
    next_id = (catalog.agg(F.max("item_id")).first()[0] or -1) + 1
    ids = list(range(next_id, next_id + len(new_names)))
    rows = catalog_rows(ids, CATALOG_SPLIT, [UNLABELLED if label is None else label] * len(new_names),
                        np.stack([images[n] for n in new_names]),
                        sources=[f"upload:{os.path.basename(name)}" for name in new_names])
    updates = catalog_frame(spark, rows)
    # Insert-only MERGE on the content hash: one commit, and a concurrent identical upload cannot duplicate items.
    (DeltaTable.forPath(spark, table_uri).alias("t")
     .merge(updates.alias("s"), "t.image_sha256 = s.image_sha256")
     .whenNotMatchedInsertAll().execute())
    version = table_version(table_uri)
    log.info("added %d catalog items (ids %d..%d) to %s (v%d)", len(ids), ids[0], ids[-1], table_uri, version)
    return CatalogAddition(version, dict(zip(new_names, ids)), skipped)


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m kuberec.ingest.images", description=__doc__)
    parser.add_argument("paths", nargs="+", help="PNG/JPEG files or directories (local, or s3a:// prefixes)")
    parser.add_argument("--label", type=int, default=None, help=f"class 0..9 ({', '.join(LABEL_NAMES)})")
    parser.add_argument("--table", default=settings.table_uri(TABLE_NAME))
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                        help=f"pictures per Delta commit (default {DEFAULT_CHUNK_SIZE:,})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    files = expand_paths(args.paths)  # fail on a bad path before paying for a JVM
    from kuberec.lake.spark import spark_session

    spark = spark_session(settings, app_name="kuberec-ingest-images")
    result = ingest_images(spark, files, args.table, args.label, args.chunk_size)
    for name, item_id in result.added.items():
        print(f"added    item {item_id}: {name}")
    for name, item_id in result.skipped.items():
        print(f"skipped  {name}: already in the catalog as item {item_id}")
    print(f"{args.table} is at version {result.version}")
    return 0


if __name__ == "__main__":
    from kuberec.entrypoint import run_program

    run_program("kuberec.ingest.images", main)
