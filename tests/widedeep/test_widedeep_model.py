"""The wide & deep Keras model: variants, two optimizers on their own variables, SavedModel round trip."""

from __future__ import annotations

import numpy as np
import pytest

from kuberec.ingest.instacart_features import NUMERIC_FEATURES
from kuberec.widedeep import model as wd


def columns(n: int = 400, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {"user_id": rng.integers(1, 60, n).astype(np.int32),
            "product_id": rng.integers(1, 90, n).astype(np.int32),
            "aisle_id": rng.integers(1, 30, n).astype(np.int32), "department_id": rng.integers(1, 8, n).astype(np.int32)}
    for name in NUMERIC_FEATURES:
        cols[name] = (rng.random(n) * 20).astype(np.float32)
    # Learnable: users with an even id buy products with a small id.
    labels = ((cols["user_id"] % 2 == 0) & (cols["product_id"] < 45)).astype(np.int32)
    return cols, labels


def test_config_rejects_bad_values():
    with pytest.raises(wd.ConfigError, match="kind must be one of"):
        wd.WideDeepConfig(kind="linear")
    with pytest.raises(wd.ConfigError, match="width_decline"):
        wd.WideDeepConfig(width_decline=0)
    with pytest.raises(wd.ConfigError, match="unknown wide & deep config keys"):
        wd.WideDeepConfig.from_dict({"hidden_layer": 2})
    assert wd.WideDeepConfig(hidden_layers=3, hidden_units=100, width_decline=0.5).layer_widths == [100, 50, 25]


@pytest.mark.parametrize("kind", wd.KINDS)
def test_each_optimizer_trains_only_its_part(kind):
    cols, labels = columns()
    stats = wd.FeatureStats.from_sums(*wd.feature_sums(cols))
    config = wd.WideDeepConfig(kind=kind, hidden_units=16, hidden_layers=2, user_buckets=512, product_buckets=512,
                               cross_buckets=4096, wide_learning_rate=0.2, deep_learning_rate=0.01)
    model = wd.build_model(config, stats)
    wide_vars, deep_vars = wd.split_variables(model)
    assert len(wide_vars) + len(deep_vars) == len(model.trainable_variables)
    assert bool(wide_vars) == (kind != "deep") and bool(deep_vars) == (kind != "wide")
    wide_opt, deep_opt = wd.build_optimizers(config, model)
    assert (wide_opt is None) == (kind == "deep") and (deep_opt is None) == (kind == "wide")
    if wide_opt is not None:
        assert type(wide_opt).__name__ == "Ftrl"
    before = [v.numpy().copy() for v in model.trainable_variables]
    step = wd.make_train_step(model, wide_opt, deep_opt)
    inputs = wd.to_model_inputs(cols)
    losses = [float(step(inputs, labels)) for _ in range(30)]
    assert losses[-1] < losses[0]
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)
               if v.shape.num_elements() > 1 and "bias" not in v.name)
    for opt, own in ((wide_opt, wide_vars), (deep_opt, deep_vars)):
        if opt is not None:
            assert int(opt.iterations.numpy()) == 30
            # Its slots (beyond the iteration counter) were built for its own variables only.
            assert len(opt.variables) - 1 == 2 * len(own)  # FTRL: accumulator + linear; Adam: m + v


def test_saved_model_reloads_with_identical_predictions(tmp_path):
    cols, labels = columns()
    stats = wd.FeatureStats.from_sums(*wd.feature_sums(cols))
    config = wd.WideDeepConfig(hidden_units=16, hidden_layers=2, user_buckets=512, product_buckets=512,
                               cross_buckets=4096)
    model = wd.build_model(config, stats)
    step = wd.make_train_step(model, *wd.build_optimizers(config, model))
    for _ in range(5):
        step(wd.to_model_inputs(cols), labels)
    expected = wd.predict(model, cols)
    wd.save_model(model, tmp_path / "model", {"config": config.to_dict()})
    reloaded = wd.load_model(tmp_path / "model")
    np.testing.assert_array_equal(wd.predict(reloaded, cols), expected)
    assert wd.load_metadata(tmp_path / "model")["config"]["hidden_units"] == 16
    assert ((expected > 0) & (expected < 1)).all()
    with pytest.raises(wd.KuberecError, match="not a saved wide & deep model"):
        wd.load_model(tmp_path)
