"""The similarity model: a small CNN ending in TF Similarity's `MetricEmbedding`, trained with Multi-Similarity loss.

Three architectures (all take float32 images [B, 28, 28, 1] in [0, 1], as `kuberec.lake.feed` yields them):

- ``seed``: the seed article's minimal CNN (Conv2D 32 -> MaxPool -> Dropout -> Flatten -> MetricEmbedding(128)).
- ``databricks``: the Databricks notebook's deeper variant (Conv 32/64/256 blocks, each MaxPool + Dropout,
  MetricEmbedding(256)).
- ``vgg``: two VGG-style blocks with BatchNorm (2x Conv 32, 2x Conv 64), a dense layer, MetricEmbedding(128); the
  shipped default, chosen by measurement (docs/BENCHMARKS.md: precision@5 0.938 on the full protocol after 12
  epochs, where ``seed`` plateaus near 0.90 and raw pixels give 0.827).

Training needs TF Similarity; serving and indexing do not: `export_embedding_model` writes a plain TensorFlow
SavedModel whose signature maps uint8 images [N, 28, 28] to L2-normalised float32 embeddings [N, D], so
`load_embedding_model` needs only TensorFlow (no Keras custom objects, no TF Similarity classes).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from kuberec.errors import KuberecError
from kuberec.similarity.config import SimilarityConfig

log = logging.getLogger(__name__)

IMAGE_SIDE = 28
DISTANCE = "cosine"
METADATA_FILE = "kuberec-embedding.json"
EXPORT_FORMAT = "kuberec-embedding-savedmodel/1"


class ModelLoadError(KuberecError):
    """An exported embedding model is missing or unreadable."""


def resolve_precision(precision: str) -> str:
    """The compute precision to use for `precision` ("auto" looks at the hardware)."""
    if precision != "auto":
        return precision
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability", (0, 0))
        return "mixed_bfloat16" if capability >= (8, 0) else "float32"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "float32"
    return "mixed_bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"


# -- architectures ------------------------------------------------------------------------------------------------

def _seed_trunk(x, config: SimilarityConfig):
    from tensorflow.keras import layers

    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPool2D(2, 2)(x)
    x = layers.Dropout(config.dropout)(x)
    return layers.Flatten()(x)


def _databricks_trunk(x, config: SimilarityConfig):
    from tensorflow.keras import layers

    for filters in (32, 64, 256):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPool2D(2, 2)(x)
        x = layers.Dropout(config.dropout)(x)
    return layers.Flatten()(x)


def _vgg_trunk(x, config: SimilarityConfig):
    from tensorflow.keras import layers

    for filters in (32, 64):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        x = layers.MaxPool2D(2, 2)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(config.dropout)(x)
    x = layers.Dense(256, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x)


# name -> trunk builder (each architecture's default embedding size: kuberec.similarity.config)
ARCHITECTURES: dict[str, Callable[[Any, SimilarityConfig], Any]] = {
    "seed": _seed_trunk,
    "databricks": _databricks_trunk,
    "vgg": _vgg_trunk,
}


def build_model(config: SimilarityConfig):
    """A TF Similarity `SimilarityModel` (not compiled): images [B,28,28,1] in [0,1] -> L2-normalised embeddings.

    With `precision="mixed_bfloat16"` the trunk computes in bfloat16 (weights stay float32); the embedding layer
    always computes in float32 so the L2 normalisation and the loss see full-precision vectors.
    """
    import tensorflow as tf
    from tensorflow_similarity.layers import MetricEmbedding
    from tensorflow_similarity.models import SimilarityModel

    trunk = ARCHITECTURES[config.architecture]
    mixed = tf.keras.mixed_precision
    previous = mixed.global_policy()
    mixed.set_global_policy(resolve_precision(config.precision))  # layers keep the policy they were built with
    try:
        inputs = tf.keras.layers.Input(shape=(IMAGE_SIDE, IMAGE_SIDE, 1), name="image")
        features = trunk(inputs, config)
    finally:
        mixed.set_global_policy(previous)
    outputs = MetricEmbedding(config.embedding_dim, name="embedding", dtype="float32")(features)
    return SimilarityModel(inputs, outputs, name=f"similarity_{config.architecture}")


def augment_batch(x, augment: str):
    """Training-time augmentation of a float image batch [B,28,28,1]; garments look alike mirrored and shifted."""
    import tensorflow as tf

    if augment == "none":
        return x
    x = tf.image.random_flip_left_right(x)
    if augment == "flip_shift":
        # Pad 2 px and crop each image back at a random offset: shifts of up to 2 px in each direction.
        batch = tf.shape(x)[0]
        padded = tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]])
        offsets = tf.random.uniform([batch, 2], 0, 5, dtype=tf.int32)
        rows = offsets[:, :1] + tf.range(IMAGE_SIDE)[tf.newaxis, :]
        cols = offsets[:, 1:] + tf.range(IMAGE_SIDE)[tf.newaxis, :]
        x = tf.gather(padded, rows, axis=1, batch_dims=1)
        x = tf.gather(x, cols, axis=2, batch_dims=1)
    return x


def build_loss():
    """Multi-Similarity loss on cosine distance, with TF Similarity's default weights."""
    from tensorflow_similarity.losses import MultiSimilarityLoss

    return MultiSimilarityLoss(distance=DISTANCE)


# -- export / load / embed ----------------------------------------------------------------------------------------

def export_embedding_model(model, path: str | Path, metadata: Mapping[str, Any] | None = None,
                           config: SimilarityConfig | None = None) -> Path:
    """Save `model`'s embedding function as a plain SavedModel directory at `path` (replaced atomically).

    Pass the model's `config` when it was trained in mixed precision: the export is then a float32 copy.

    The signature `serving_default(images: uint8 [N,28,28]) -> {"embeddings": float32 [N,D]}` includes the pixel
    scaling and the L2 normalisation, so whoever loads it cannot get preprocessing wrong.
    """
    import tensorflow as tf

    path = Path(path)
    embedding_dim = int(model.outputs[0].shape[-1])
    if config is not None and resolve_precision(config.precision) != "float32":
        # Serve in float32 whatever the training precision: same weights, portable to CPUs without bfloat16.
        clone = build_model(config.replace(precision="float32"))
        clone.set_weights(model.get_weights())
        model = clone

    class EmbeddingModule(tf.Module):
        def __init__(self, keras_model) -> None:
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIDE, IMAGE_SIDE], tf.uint8, name="images")])
        def embed(self, images):
            x = tf.cast(images, tf.float32)[..., tf.newaxis] / 255.0
            return {"embeddings": tf.math.l2_normalize(self.model(x, training=False), axis=1)}

    module = EmbeddingModule(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tf.saved_model.save(module, str(staging), signatures={"serving_default": module.embed})
        info = {"format": EXPORT_FORMAT, "embedding_dim": embedding_dim, "distance": DISTANCE,
                "input": {"dtype": "uint8", "shape": [None, IMAGE_SIDE, IMAGE_SIDE]}, **(metadata or {})}
        (staging / METADATA_FILE).write_text(json.dumps(info, indent=2, sort_keys=True))
        _replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported embedding model (%d-d) to %s", embedding_dim, path)
    return path


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an existing `target` is swapped out first so readers never see half a model."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)


@dataclass
class EmbeddingModel:
    """An exported embedding model loaded with plain TensorFlow."""

    path: Path
    metadata: dict[str, Any]
    _signature: Any

    @property
    def embedding_dim(self) -> int:
        return int(self.metadata["embedding_dim"])

    def __call__(self, images_uint8: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        return self._signature(images=tf.constant(images_uint8, dtype=tf.uint8))["embeddings"].numpy()


def load_embedding_model(path: str | Path) -> EmbeddingModel:
    """Load a model written by `export_embedding_model` (TensorFlow only; no TF Similarity needed)."""
    import tensorflow as tf

    path = Path(path)
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise ModelLoadError(f"{path} is not an exported kuberec embedding model (no {METADATA_FILE}); "
                             f"point at the 'model' directory that `kuberec train similarity` wrote")
    metadata = json.loads(meta_path.read_text())
    if metadata.get("format") != EXPORT_FORMAT:
        raise ModelLoadError(f"{path}: unsupported export format {metadata.get('format')!r} "
                             f"(this kuberec reads {EXPORT_FORMAT}); re-export the model")
    loaded = tf.saved_model.load(str(path))
    return EmbeddingModel(path=path, metadata=metadata, _signature=loaded.signatures["serving_default"])


def as_image_batch(images: np.ndarray) -> np.ndarray:
    """Validate pixel arrays and return uint8 [N, 28, 28] (accepts [N,28,28], [N,784] or [N,28,28,1])."""
    array = np.asarray(images)
    if array.ndim == 2 and array.shape[1] == IMAGE_SIDE * IMAGE_SIDE:
        array = array.reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    elif array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise KuberecError(f"expected images of shape [N, 28, 28] (or [N, 784]), got {list(np.shape(images))}")
    if array.dtype != np.uint8:
        if array.size and (np.nanmin(array) < 0 or np.nanmax(array) > 255 or np.isnan(array).any()):
            raise KuberecError("pixel values must be in 0..255")
        array = np.rint(array).astype(np.uint8)
    return array


# Rows per model call when a row's embedding must not depend on the rows beside it (serving: an answer must not
# change with what it was batched with). oneDNN computes a call's rows in blocks whose arithmetic depends on the
# call's size and the row's place in it: a query image's embedding moved in the 7th digit between calls of 1, 2-7 and
# 8+ rows, and a near-tie then swapped two items (tests/serving/test_batching.py). Calls of exactly 16 rows gave every
# row the same bits wherever it sat, for the test model and the default `vgg` model, with oneDNN on AVX-512, AVX2
# and AVX (ONEDNN_MAX_CPU_ISA); calls of exactly 8 did not on AVX2. Cost for the `vgg` model on this 2-core AVX-512
# VM: 1 row 1.3 ms a call, 16 rows 5.6 ms, 64 rows 15.9 ms, 4 calls of 16 23.3 ms (benchmarks/embedding_calls.py).
FIXED_CALL_ROWS = 16


def embed(model, images_uint8: np.ndarray, batch_size: int = 2048, *, fixed_calls: bool = False) -> np.ndarray:
    """Embeddings float32 [N, D], L2-normalised, for uint8 images [N, 28, 28].

    `model` is an `EmbeddingModel` (exported) or the Keras model being trained (same preprocessing applied here).
    `fixed_calls`: every model call gets exactly FIXED_CALL_ROWS rows (the last padded with blank images), so a row's
    embedding is the same bits whatever rows it comes with (`batch_size` is then ignored).
    """
    images = as_image_batch(images_uint8)
    if isinstance(model, EmbeddingModel):
        def run(chunk: np.ndarray) -> np.ndarray:
            return model(chunk)
        dim = model.embedding_dim
    else:
        def run(chunk: np.ndarray) -> np.ndarray:
            x = (chunk.astype(np.float32) / 255.0)[..., np.newaxis]
            return model(x, training=False).numpy()
        dim = int(model.outputs[0].shape[-1])
    out = np.empty((len(images), dim), dtype=np.float32)
    batch_size = FIXED_CALL_ROWS if fixed_calls else batch_size
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        padding = batch_size - len(chunk) if fixed_calls else 0
        if padding:
            chunk = np.concatenate([chunk, np.zeros((padding, *chunk.shape[1:]), dtype=chunk.dtype)])
        out[start:start + batch_size] = run(chunk)[:len(chunk) - padding]
    # Renormalise in float32 so dot products are exact cosines even after the float round trip.
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, np.maximum(norms, 1e-12), out=out)
    return out
