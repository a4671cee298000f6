"""Fashion-MNIST: locate, download and verify the four IDX files, and parse them.

Sources, in order: an explicit directory, the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist), else a download of the four canonical files. Every file is checked before use:
IDX magic, item count (60,000 train / 10,000 test), 28x28 shape, exact length and the SHA-256 of the *decompressed*
bytes (Debian's packaging rewrote the gzip headers, so checksums of the .gz files differ between copies).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kuberec.errors import DataError
from kuberec.settings import Settings

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
LABEL_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot")
IMAGE_SIDE = 28
IMAGE_BYTES = IMAGE_SIDE * IMAGE_SIDE
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


@dataclass(frozen=True)
class IdxFile:
    name: str  # file name without .gz
    split: str
    kind: str  # "images" | "labels"
    count: int
    sha256: str  # of the decompressed bytes

    @property
    def size(self) -> int:
        return 16 + self.count * IMAGE_BYTES if self.kind == "images" else 8 + self.count


FILES = (
    IdxFile("train-images-idx3-ubyte", "train", "images", 60_000,
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    IdxFile("train-labels-idx1-ubyte", "train", "labels", 60_000,
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    IdxFile("t10k-images-idx3-ubyte", "test", "images", 10_000,
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    IdxFile("t10k-labels-idx1-ubyte", "test", "labels", 10_000,
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
)
SPLITS = ("train", "test")
# Stable ids: train image i is item i, test image j is item 60,000 + j; catalog additions come after.
SPLIT_ID_OFFSET = {"train": 0, "test": 60_000}


def idx_file(split: str, kind: str) -> IdxFile:
    return next(f for f in FILES if f.split == split and f.kind == kind)


def decompress(name: str, raw: bytes) -> bytes:
    """The file's bytes, gunzipped when they are gzip (magic 1f 8b); a clear error when the stream is damaged."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{name}: corrupt or truncated gzip stream ({err}); fetch the file again") from err


def parse_idx(spec: IdxFile, data: bytes, check_sha256: bool = True) -> np.ndarray:
    """Validate one decompressed IDX file against its spec and return uint8 images [N,28,28] or labels [N]."""
    where = spec.name
    header = 16 if spec.kind == "images" else 8
    if len(data) < header:
        raise DataError(f"{where}: {len(data)} bytes is too short for an IDX header; the file is truncated")
    magic, count = struct.unpack(">II", data[:8])
    expected_magic = IMAGES_MAGIC if spec.kind == "images" else LABELS_MAGIC
    if magic != expected_magic:
        raise DataError(f"{where}: IDX magic {magic} is not {expected_magic} ({spec.kind} file); "
                        "wrong file or corrupt header")
    if count != spec.count:
        raise DataError(f"{where}: header says {count} items, Fashion-MNIST {spec.split} has {spec.count}")
    if spec.kind == "images":
        rows, cols = struct.unpack(">II", data[8:16])
        if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataError(f"{where}: images are {rows}x{cols}, expected {IMAGE_SIDE}x{IMAGE_SIDE}")
    if len(data) != spec.size:
        raise DataError(f"{where}: {len(data)} bytes after decompression, expected {spec.size} "
                        f"({'truncated' if len(data) < spec.size else 'trailing bytes'})")
    if check_sha256:
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec.sha256:
            raise DataError(f"{where}: content checksum {digest[:12]}… does not match Fashion-MNIST's "
                            f"{spec.sha256[:12]}…; the file is corrupt or not the original")
    array = np.frombuffer(data, dtype=np.uint8, offset=header)
    if spec.kind == "labels":
        if array.max(initial=0) >= len(LABEL_NAMES):
            raise DataError(f"{where}: label {int(array.max())} outside 0..{len(LABEL_NAMES) - 1}")
        return array
    return array.reshape(spec.count, IMAGE_SIDE, IMAGE_SIDE)


def find_file(directory: Path, spec: IdxFile) -> Path:
    for candidate in (directory / f"{spec.name}.gz", directory / spec.name):
        if candidate.exists():
            return candidate
    raise DataError(f"{directory}: missing {spec.name}.gz (or uncompressed {spec.name})")


def verify_dir(directory: Path) -> dict[str, Path]:
    """Check all four files in `directory`; returns their paths by name. Raises DataError on the first problem."""
    paths = {}
    for spec in FILES:
        path = find_file(directory, spec)
        parse_idx(spec, decompress(str(path), path.read_bytes()))
        paths[spec.name] = path
    return paths


def _download(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for spec in FILES:
        url = f"{DOWNLOAD_URL}{spec.name}.gz"
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(target / f"{spec.name}.gz", "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as err:
            raise DataError(f"could not download {url}: {err}. Install the Debian package dataset-fashion-mnist "
                            "or pass --source DIR with the four files") from err


def acquire(settings: Settings, source: Path | None = None) -> Path:
    """Verified Fashion-MNIST under `<home>/data/fashion-mnist`; returns that directory.

    The files are verified before they are copied into place, and the copy is swapped in atomically, so a failed
    acquisition leaves an earlier good copy untouched.
    """
    target = settings.data_dir / "fashion-mnist"
    if source is None and target.exists():
        try:
            verify_dir(target)
            log.info("Fashion-MNIST already verified in %s", target)
            return target
        except DataError as err:
            log.warning("existing copy in %s is not usable (%s); acquiring again", target, err)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.data_dir, prefix=".fashion-mnist-") as tmp:
        staging = Path(tmp) / "files"
        if source is not None:
            origin = Path(source)
        elif DEBIAN_DIR.exists():
            origin = DEBIAN_DIR
        else:
            _download(staging)
            origin = staging
        log.info("verifying Fashion-MNIST files in %s", origin)
        paths = verify_dir(origin)
        staging.mkdir(parents=True, exist_ok=True)
        for name, path in paths.items():
            destination = staging / path.name
            if path.resolve() != destination.resolve():
                shutil.copyfile(path, destination)
        (staging / "MANIFEST.json").write_text(json.dumps(
            {"source": str(origin), "files": {s.name: {"split": s.split, "kind": s.kind, "count": s.count,
                                                       "sha256_decompressed": s.sha256} for s in FILES}},
            indent=2))
        backup = None
        if target.exists():
            backup = target.with_name(f".fashion-mnist-old-{os.getpid()}")
            target.rename(backup)
        staging.rename(target)
        if backup is not None:
            shutil.rmtree(backup)
    log.info("Fashion-MNIST ready in %s (from %s)", target, origin)
    return target
