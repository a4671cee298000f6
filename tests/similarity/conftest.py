"""Fixtures for the index, pyfunc and refresh tests: a tiny real embedding model and a slice of Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kuberec.datasets import fashion_mnist as fm

EMBEDDING_DIM = 16


@pytest.fixture(scope="module")
def registry(mlflow_server, tmp_path_factory):
    """Settings of a fresh home whose MLflow is the session's real server (one registry namespace per module)."""
    from kuberec.settings import load_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBEREC_HOME", str(tmp_path_factory.mktemp("home")))
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        yield load_settings()


@pytest.fixture(scope="session")
def fashion_mnist_slice():
    """f(split, start, stop) -> (uint8 images [N,28,28], int32 labels [N]): real Fashion-MNIST rows."""
    def read(split: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        arrays = []
        for kind in ("images", "labels"):
            spec = fm.idx_file(split, kind)
            path = fm.find_file(fm.DEBIAN_DIR, spec)
            arrays.append(fm.parse_idx(spec, fm.decompress(str(path), path.read_bytes()), check_sha256=False))
        return arrays[0][start:stop], arrays[1][start:stop].astype(np.int32)

    return read


@pytest.fixture(scope="session")
def embedding_model_dir(tmp_path_factory) -> Path:
    """A real (untrained) Keras model, Flatten -> Dense(16) -> unit norm, exported like a trained one.

    A seeded random projection keeps near-identical images near each other, which is all these tests need; the
    trained model's quality is measured elsewhere (benchmarks).
    """
    import tensorflow as tf

    from kuberec.similarity.model import export_embedding_model

    tf.keras.utils.set_random_seed(7)
    inputs = tf.keras.layers.Input(shape=(28, 28, 1))
    x = tf.keras.layers.Flatten()(inputs)
    x = tf.keras.layers.Dense(EMBEDDING_DIM)(x)
    outputs = tf.keras.layers.UnitNormalization()(x)
    return export_embedding_model(tf.keras.Model(inputs, outputs), tmp_path_factory.mktemp("model") / "embedding")


@pytest.fixture(scope="session")
def embedding_model(embedding_model_dir):
    from kuberec.similarity.model import load_embedding_model

    return load_embedding_model(embedding_model_dir)
