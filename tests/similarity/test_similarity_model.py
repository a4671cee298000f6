"""The model builders, the config checks, and the exported embedding model (which must load without TF Similarity)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from kuberec.errors import KuberecError
from kuberec.model_config import ConfigError
from kuberec.similarity.config import ARCHITECTURE_EMBEDDING_SIZES, SimilarityConfig
from kuberec.similarity.model import (
    ARCHITECTURES,
    ModelLoadError,
    as_image_batch,
    build_model,
    embed,
    export_embedding_model,
    load_embedding_model,
)


def test_every_configurable_architecture_is_built():
    # The config (no TensorFlow) names the architectures; the model module builds them.
    assert sorted(ARCHITECTURES) == sorted(ARCHITECTURE_EMBEDDING_SIZES)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_architectures_give_unit_embeddings_of_their_size(architecture):
    config = SimilarityConfig(architecture=architecture)
    model = build_model(config)
    assert type(model).__name__ == "SimilarityModel"
    x = np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    out = embed(model, x)
    assert out.shape == (4, config.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_config_defaults_and_errors():
    assert SimilarityConfig(architecture="seed").embedding_dim == 128
    assert SimilarityConfig(architecture="databricks").embedding_dim == 256
    assert SimilarityConfig(architecture="seed", embedding_size=64).embedding_dim == 64
    assert SimilarityConfig(classes_per_batch=6, examples_per_class=4).batch_size == 24
    with pytest.raises(ConfigError, match="architecture must be one of"):
        SimilarityConfig(architecture="resnet1000")
    with pytest.raises(ConfigError, match="examples_per_class"):
        SimilarityConfig(examples_per_class=1)
    with pytest.raises(ConfigError, match="unknown similarity config keys"):
        SimilarityConfig.from_dict({"epochs": 2, "lr": 0.1})
    assert issubclass(ConfigError, KuberecError)
    config = SimilarityConfig(architecture="seed", epochs=3)
    assert SimilarityConfig.from_dict(config.to_dict()) == config


def test_export_reloads_without_tf_similarity(tmp_path):
    model = build_model(SimilarityConfig(architecture="seed", embedding_size=32))
    images = np.random.default_rng(1).integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    expected = embed(model, images)
    path = export_embedding_model(model, tmp_path / "model", {"note": "test"})
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", expected)
    # A fresh interpreter: loading and embedding must not pull in TF Similarity (serving images may lack it).
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from kuberec.similarity.model import embed, load_embedding_model
        loaded = load_embedding_model({str(path)!r})
        out = embed(loaded, np.load({str(tmp_path / 'images.npy')!r}))
        np.testing.assert_allclose(out, np.load({str(tmp_path / 'expected.npy')!r}), atol=1e-5)
        assert loaded.embedding_dim == 32 and loaded.metadata["note"] == "test"
        assert "tensorflow_similarity" not in sys.modules, "loading needed TF Similarity"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
    # Re-export over the same path replaces it whole.
    export_embedding_model(build_model(SimilarityConfig(architecture="seed", embedding_size=16)), path)
    assert load_embedding_model(path).embedding_dim == 16
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_mixed_precision_model_exports_in_float32(tmp_path):
    config = SimilarityConfig(architecture="vgg", precision="mixed_bfloat16")
    model = build_model(config)
    assert model.layers[1].compute_dtype == "bfloat16" and model.outputs[0].dtype == "float32"
    images = np.random.default_rng(2).integers(0, 256, size=(8, 28, 28), dtype=np.uint8)
    loaded = load_embedding_model(export_embedding_model(model, tmp_path / "model", config=config))
    exported = embed(loaded, images)
    # Same weights computed in float32: close to the bfloat16 forward pass, not equal to it.
    assert np.abs(exported - embed(model, images)).max() < 0.05
    float_model = build_model(config.replace(precision="float32"))
    float_model.set_weights(model.get_weights())
    np.testing.assert_allclose(exported, embed(float_model, images), atol=1e-5)


def test_augmentation_mirrors_and_shifts_by_at_most_two_pixels():
    import tensorflow as tf

    from kuberec.similarity.model import augment_batch

    x = np.zeros((64, 28, 28, 1), np.float32)
    x[:, 10, 5, 0] = 1.0
    np.testing.assert_array_equal(augment_batch(tf.constant(x), "none"), x)
    flipped = augment_batch(tf.constant(x), "flip").numpy()
    columns = {int(np.argwhere(img[..., 0])[0][1]) for img in flipped}
    assert columns == {5, 22}  # left-right mirror of column 5 is 22; some images each way (p = 2**-63 to fail)
    moved = augment_batch(tf.constant(x), "flip_shift").numpy()
    for img in moved:
        (row, col), = np.argwhere(img[..., 0])
        assert abs(row - 10) <= 2 and (abs(col - 5) <= 2 or abs(col - 22) <= 2)
    assert len({tuple(np.argwhere(img[..., 0])[0]) for img in moved}) > 5


def test_loading_something_else_fails_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="not an exported kuberec embedding model"):
        load_embedding_model(tmp_path)


def test_image_batches_are_validated():
    flat = np.full((2, 784), 255.0)
    assert as_image_batch(flat).shape == (2, 28, 28) and as_image_batch(flat).dtype == np.uint8
    assert as_image_batch(np.zeros((3, 28, 28, 1), np.uint8)).shape == (3, 28, 28)
    with pytest.raises(KuberecError, match="0..255"):
        as_image_batch(np.full((1, 28, 28), 300.0))
    with pytest.raises(KuberecError, match="expected images of shape"):
        as_image_batch(np.zeros((2, 27, 28), np.uint8))
