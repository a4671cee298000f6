"""Delta snapshot -> Petastorm -> tf.data (or numpy), sharded per Horovod rank.

The reader is given exactly the Parquet files of the requested table version (from the Delta log), never the
table directory: a directory also holds files of older versions, and reading it would mix snapshots. Petastorm
shards by row group; kuberec's writers write several files per split so every rank gets some.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from kuberec.datasets.fashion_mnist import IMAGE_SIDE
from kuberec.errors import KuberecError
from kuberec.lake.delta import s3_filesystem, snapshot_files

log = logging.getLogger(__name__)

FEED_COLUMNS = ("item_id", "label", "image")


class FeedError(KuberecError):
    """The requested snapshot/shard cannot be read."""


@dataclass(frozen=True)
class FeedArrays:
    images: np.ndarray  # uint8 [N,28,28]
    labels: np.ndarray  # int32 [N], -1 = unlabelled
    item_ids: np.ndarray  # int64 [N]
    version: int  # the table version these rows are from


def split_files(table_uri: str, version: int | None, split: str | None) -> tuple[int, list[str]]:
    """(version, files) of one snapshot, optionally only one split's partition."""
    version, files = snapshot_files(table_uri, version)
    if split is not None:
        files = [f for f in files if f"/split={split}/" in f]
    if not files:
        raise FeedError(f"{table_uri} v{version} has no rows" + (f" in split {split!r}" if split else ""))
    return version, files


def _register_s3_paths() -> None:
    import fsspec

    class _S3Paths(fsspec.AbstractFileSystem):
        """Only strips `s3://` from paths for Petastorm; the reading goes through the pyarrow filesystem."""

        protocol = ("s3", "s3a")

    try:
        fsspec.get_filesystem_class("s3")
    except ImportError:  # no s3fs: nothing else in this process reads s3:// through fsspec
        fsspec.register_implementation("s3", _S3Paths, clobber=True)


@contextlib.contextmanager
def _reader(files: list[str], shard: int, num_shards: int, num_epochs: int | None, shuffle: bool, seed: int | None,
            columns: Sequence[str] = FEED_COLUMNS):
    from petastorm import make_batch_reader

    # Petastorm 0.13 calls pyarrow APIs that pyarrow 14 deprecates; the calls work, the warnings are noise.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"petastorm\..*")
    warnings.filterwarnings("ignore", message="schema_fields behavior has changed")
    warnings.filterwarnings("ignore", message="The pyarrow.filesystem.DaskFileSystem/S3FSWrapper are deprecated")
    # Delta's Parquet files carry no Petastorm schema, so every reader logs "Failed loading Unischema from metadata
    # in %s" (unformatted) before it reads the Parquet schema, as intended: in a pipeline task's log it reads as an
    # error dozens of times.
    logging.getLogger("petastorm.etl.dataset_metadata").setLevel(logging.WARNING)
    if not 0 <= shard < num_shards:
        raise FeedError(f"shard {shard} is outside 0..{num_shards - 1}")
    # Petastorm 0.13.1's thread pool sometimes drops the last row group of an epoch (a race between its
    # ventilator finishing and a worker picking the item up: seen here losing whole files), so rows are read by
    # the synchronous "dummy" pool; see benchmarks/feed_bench.py for its throughput.
    # s3:// files: pyarrow's own S3 client (Petastorm's default for s3 is s3fs, which conflicts with the pinned
    # botocore), wrapped the way Petastorm wraps s3fs: as an fsspec filesystem in pyarrow's legacy filesystem API,
    # the only one Petastorm 0.13 reads with. It still asks fsspec to turn the URLs into bucket/key paths, which
    # _S3Paths answers.
    filesystem = None
    if files and files[0].startswith("s3://"):
        from fsspec.implementations.arrow import ArrowFSWrapper
        from pyarrow.filesystem import S3FSWrapper

        _register_s3_paths()
        filesystem = S3FSWrapper(ArrowFSWrapper(s3_filesystem()))
    reader = make_batch_reader(
        files, schema_fields=list(columns), cur_shard=shard if num_shards > 1 else None,
        shard_count=num_shards if num_shards > 1 else None, num_epochs=num_epochs,
        shuffle_row_groups=shuffle, seed=seed, reader_pool_type="dummy", filesystem=filesystem)
    try:
        yield reader
    finally:
        reader.stop()
        reader.join()


def load_arrays(table_uri: str, *, version: int | None = None, split: str | None = None, shard: int = 0,
                num_shards: int = 1) -> FeedArrays:
    """All rows of one snapshot (one shard of it) as numpy arrays, sorted by item_id."""
    version, files = split_files(table_uri, version, split)
    images, labels, ids = [], [], []
    with _reader(files, shard, num_shards, num_epochs=1, shuffle=False, seed=None) as reader:
        for batch in reader:
            ids.append(np.asarray(batch.item_id, dtype=np.int64))
            labels.append(np.asarray(batch.label, dtype=np.int32))
            images.append(_decode_images(batch.image))
    if not ids:
        raise FeedError(f"shard {shard}/{num_shards} of {table_uri} v{version} is empty: the snapshot has fewer "
                        "Parquet row groups than shards")
    item_ids = np.concatenate(ids)
    order = np.argsort(item_ids, kind="stable")
    return FeedArrays(np.concatenate(images)[order], np.concatenate(labels)[order], item_ids[order], version)


def _decode_images(column) -> np.ndarray:
    raw = b"".join(column)
    if len(raw) != len(column) * IMAGE_SIDE * IMAGE_SIDE:
        raise FeedError("an image in the table is not 784 bytes; the table is not a kuberec catalog table")
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(column), IMAGE_SIDE, IMAGE_SIDE)


@contextlib.contextmanager
def make_dataset(table_uri: str, *, version: int | None = None, split: str | None = None, batch_size: int = 256,
                 shard: int = 0, num_shards: int = 1, num_epochs: int | None = 1, shuffle: bool = False,
                 seed: int | None = None, with_item_id: bool = False) -> Iterator:
    """A tf.data.Dataset of `(image float32 [B,28,28,1] in [0,1], label int32 [B])` batches from one snapshot.

    With `with_item_id`, elements are `(image, label, item_id)`. `num_epochs=None` repeats forever (training with
    a fixed number of steps per epoch, so ranks with unequal shards stay in step). Use as a context manager: the
    Petastorm reader's threads stop when the block ends.
    """
    import tensorflow as tf
    from petastorm.tf_utils import make_petastorm_dataset

    version, files = split_files(table_uri, version, split)
    log.info("feed: %s v%d split=%s shard %d/%d (%d files)", table_uri, version, split, shard, num_shards,
             len(files))
    with _reader(files, shard, num_shards, num_epochs, shuffle, seed) as reader:
        def to_tensors(batch):
            pixels = tf.io.decode_raw(batch.image, tf.uint8)
            images = tf.reshape(tf.cast(pixels, tf.float32) / 255.0, (-1, IMAGE_SIDE, IMAGE_SIDE, 1))
            labels = tf.cast(batch.label, tf.int32)
            if with_item_id:
                return images, labels, tf.cast(batch.item_id, tf.int64)
            return images, labels

        # Petastorm yields one row group per element; rebatch() re-slices those into the requested size without
        # unbatching to single rows (measured ~2x faster than unbatch().batch(), benchmarks/feed_bench.py).
        dataset = (make_petastorm_dataset(reader).map(to_tensors, num_parallel_calls=tf.data.AUTOTUNE)
                   .rebatch(batch_size).prefetch(tf.data.AUTOTUNE))
        yield dataset


# -- any tabular table (e.g. the Instacart gold examples) ----------------------------------------------------------

@dataclass(frozen=True)
class TableArrays:
    columns: dict[str, np.ndarray]  # column name -> values [N], in the order the snapshot's files hold them
    version: int  # the table version these rows are from

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def load_table_arrays(table_uri: str, columns: Sequence[str], *, version: int | None = None,
                      split: str | None = None, shard: int = 0, num_shards: int = 1, fraction: float = 1.0,
                      seed: int = 0) -> TableArrays:
    """Scalar columns of one snapshot (one shard of it) as numpy arrays; with `fraction` < 1, a uniform sample
    that keeps each row with that probability (`seed`), taken as the rows stream by, so memory holds only the
    sample."""
    if not 0 < fraction <= 1:
        raise FeedError(f"fraction must be in (0, 1], not {fraction}")
    version, files = split_files(table_uri, version, split)
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    rng = np.random.default_rng(seed)
    with _reader(files, shard, num_shards, num_epochs=1, shuffle=False, seed=None, columns=columns) as reader:
        for batch in reader:
            keep = rng.random(len(getattr(batch, columns[0]))) < fraction if fraction < 1 else slice(None)
            for c in columns:
                parts[c].append(np.asarray(getattr(batch, c))[keep])
    if not parts[columns[0]]:
        raise FeedError(f"shard {shard}/{num_shards} of {table_uri} v{version} is empty: the snapshot has fewer "
                        "Parquet row groups than shards")
    return TableArrays({c: np.concatenate(v) for c, v in parts.items()}, version)


@contextlib.contextmanager
def make_table_dataset(table_uri: str, columns: Sequence[str], *, version: int | None = None,
                       split: str | None = None, batch_size: int = 256, shard: int = 0, num_shards: int = 1,
                       num_epochs: int | None = 1, shuffle: bool = False, seed: int | None = None,
                       shuffle_buffer: int = 0) -> Iterator:
    """A tf.data.Dataset of `{column: tensor [B]}` batches of scalar columns from one snapshot (one shard of it).

    `shuffle` shuffles the order of row groups and the rows within each row group (one vectorised gather per row
    group: a row-by-row shuffle buffer cost four fifths of wide & deep's training time), and with `shuffle_buffer`
    > `batch_size` also mixes whole batches in a buffer of about that many rows. `num_epochs=None` repeats
    forever. A context manager like `make_dataset`.
    """
    import tensorflow as tf
    from petastorm.tf_utils import make_petastorm_dataset

    columns = list(columns)
    version, files = split_files(table_uri, version, split)
    log.info("feed: %s v%d split=%s shard %d/%d (%d files, %d columns)", table_uri, version, split, shard,
             num_shards, len(files), len(columns))

    def permuted(batch):
        order = tf.random.shuffle(tf.range(tf.shape(batch[columns[0]])[0]), seed=seed)
        return {c: tf.gather(batch[c], order) for c in columns}

    with _reader(files, shard, num_shards, num_epochs, shuffle, seed, columns=columns) as reader:
        dataset = make_petastorm_dataset(reader).map(lambda batch: {c: getattr(batch, c) for c in columns},
                                                     num_parallel_calls=tf.data.AUTOTUNE)
        if shuffle:
            dataset = dataset.map(permuted)
        dataset = dataset.rebatch(batch_size)
        if shuffle and shuffle_buffer > batch_size:
            dataset = dataset.shuffle(shuffle_buffer // batch_size, seed=seed)
        yield dataset.prefetch(tf.data.AUTOTUNE)
