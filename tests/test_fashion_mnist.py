"""IDX parsing and verification: the real files pass; corrupt, truncated and mismatched ones fail by name."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from kuberec.datasets import fashion_mnist as fm
from kuberec.errors import DataError

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`

LABELS_SPEC = fm.IdxFile("tiny-labels", "train", "labels", 3, "")
IMAGES_SPEC = fm.IdxFile("tiny-images", "train", "images", 2, "")


def idx_labels(values: list[int], magic: int = fm.LABELS_MAGIC, count: int | None = None) -> bytes:
    return struct.pack(">II", magic, len(values) if count is None else count) + bytes(values)


def idx_images(n: int, side: int = 28) -> bytes:
    return struct.pack(">IIII", fm.IMAGES_MAGIC, n, side, side) + bytes(range(256)) * (n * side * side // 256) + \
        bytes(n * side * side % 256)


@pytest.fixture(scope="module")
def real_dir() -> Path:
    if not fm.DEBIAN_DIR.exists():
        pytest.fail("Debian package dataset-fashion-mnist is missing; `make setup` installs it")
    return fm.DEBIAN_DIR


def test_parses_labels_and_images():
    assert fm.parse_idx(LABELS_SPEC, idx_labels([3, 0, 9]), check_sha256=False).tolist() == [3, 0, 9]
    images = fm.parse_idx(IMAGES_SPEC, idx_images(2), check_sha256=False)
    assert images.shape == (2, 28, 28) and images.dtype == np.uint8
    assert images[0, 0, :3].tolist() == [0, 1, 2]


@pytest.mark.parametrize("data, message", [
    (idx_labels([1, 2, 3], magic=2051), "magic 2051 is not 2049"),
    (idx_labels([1, 2], count=2), "header says 2 items"),
    (idx_labels([1, 2, 3])[:-1], "truncated"),
    (idx_labels([1, 2, 3]) + b"\0", "trailing bytes"),
    (idx_labels([1, 2, 10]), "label 10 outside 0..9"),
    (b"\0\0", "too short"),
])
def test_rejects_bad_label_files(data, message):
    with pytest.raises(DataError, match=message) as err:
        fm.parse_idx(LABELS_SPEC, data, check_sha256=False)
    assert "tiny-labels" in str(err.value)


def test_rejects_wrong_image_shape():
    data = struct.pack(">IIII", fm.IMAGES_MAGIC, 2, 32, 32) + bytes(2 * 32 * 32)
    with pytest.raises(DataError, match="32x32, expected 28x28"):
        fm.parse_idx(IMAGES_SPEC, data, check_sha256=False)


def test_real_files_verify(real_dir):
    paths = fm.verify_dir(real_dir)
    assert len(paths) == 4
    labels = fm.parse_idx(fm.idx_file("test", "labels"),
                          fm.decompress("x", paths["t10k-labels-idx1-ubyte"].read_bytes()))
    assert np.bincount(labels).tolist() == [1000] * 10


@pytest.mark.parametrize("damage, message", [
    ("truncate_gzip", "corrupt or truncated gzip"),
    ("flip_pixel", "content checksum"),
    ("missing", "missing t10k-labels-idx1-ubyte"),
    ("swap_labels", "header says 60000 items, Fashion-MNIST test has 10000"),
])
def test_damaged_copies_fail_by_file_name(real_dir, tmp_path, damage, message):
    for path in real_dir.glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    victim = tmp_path / "t10k-labels-idx1-ubyte.gz"
    if damage == "truncate_gzip":
        victim.write_bytes(victim.read_bytes()[:-100])
    elif damage == "flip_pixel":
        images = tmp_path / "t10k-images-idx3-ubyte.gz"
        raw = bytearray(gzip.decompress(images.read_bytes()))
        raw[5000] ^= 0xFF
        images.write_bytes(gzip.compress(bytes(raw)))
    elif damage == "missing":
        victim.unlink()
    elif damage == "swap_labels":
        shutil.copy(real_dir / "train-labels-idx1-ubyte.gz", victim)
    with pytest.raises(DataError, match=message):
        fm.verify_dir(tmp_path)


def test_acquire_keeps_good_copy_when_new_source_is_bad(settings, real_dir, tmp_path):
    target = fm.acquire(settings, real_dir)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in real_dir.glob("*.gz"):
        shutil.copy(path, bad / path.name)
    (bad / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-images"):
        fm.acquire(settings, bad)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    # Uncompressed files are accepted too.
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in real_dir.glob("*.gz"):
        (plain / path.name.removesuffix(".gz")).write_bytes(gzip.decompress(path.read_bytes()))
    assert fm.acquire(settings, plain) == target
