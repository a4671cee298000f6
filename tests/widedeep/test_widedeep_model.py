"""The wide & deep Keras model: variants, two optimizers on their own variables, SavedModel round trip, and each
part learning what it exists for on constructed data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kuberec.ingest.instacart_features import NUMERIC_FEATURES
from kuberec.model_config import ConfigError
from kuberec.widedeep import model as wd
from kuberec.widedeep.config import MODEL_KINDS, WideDeepConfig


def columns(n: int = 400, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = {"user_id": rng.integers(1, 60, n).astype(np.int32),
            "product_id": rng.integers(1, 90, n).astype(np.int32),
            "aisle_id": rng.integers(1, 30, n).astype(np.int32),
            "department_id": rng.integers(1, 8, n).astype(np.int32)}
    for name in NUMERIC_FEATURES:
        cols[name] = (rng.random(n) * 20).astype(np.float32)
    # Learnable: users with an even id buy products with a small id.
    labels = ((cols["user_id"] % 2 == 0) & (cols["product_id"] < 45)).astype(np.int32)
    return cols, labels


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="kind must be one of"):
        WideDeepConfig(kind="linear")
    with pytest.raises(ConfigError, match="width_decline"):
        WideDeepConfig(width_decline=0)
    with pytest.raises(ConfigError, match="unknown wide & deep config keys"):
        WideDeepConfig.from_dict({"hidden_layer": 2})
    assert WideDeepConfig(hidden_layers=3, hidden_units=100, width_decline=0.5).layer_widths == [100, 50, 25]


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_each_optimizer_trains_only_its_part(kind):
    cols, labels = columns()
    stats = wd.FeatureStats.from_sums(*wd.feature_sums(cols))
    config = WideDeepConfig(kind=kind, hidden_units=16, hidden_layers=2, deep_learning_rate=0.01)
    model = wd.build_model(config, stats, wd.Vocabulary.from_columns(cols))
    wide_vars, deep_vars = wd.split_variables(model)
    assert len(wide_vars) + len(deep_vars) == len(model.trainable_variables)
    assert bool(wide_vars) == (kind != "deep") and bool(deep_vars) == (kind != "wide")
    wide_opt, deep_opt = wd.build_optimizers(config, model)
    assert (wide_opt is None) == (kind == "deep") and (deep_opt is None) == (kind == "wide")
    if wide_opt is not None:
        assert isinstance(wide_opt, tf.keras.optimizers.Ftrl)
    before = [v.numpy().copy() for v in model.trainable_variables]
    step = wd.make_train_step(model, wide_opt, deep_opt)
    inputs = wd.to_model_inputs(cols)
    losses = [float(step(inputs, labels)) for _ in range(30)]
    assert losses[-1] < losses[0]
    # Every variable moves, the wide part's bias and weights (all starting at 0) included.
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)
               if "deep" not in v.name or v.shape.num_elements() > 1)
    for opt, own in ((wide_opt, wide_vars), (deep_opt, deep_vars)):
        if opt is not None:
            assert int(opt.iterations.numpy()) == 30
            # Its slots (beyond the iteration counter) were built for its own variables only.
            assert len(opt.variables) - 1 == 2 * len(own)  # FTRL: accumulator + linear; Adam: m + v


def test_sparse_ftrl_updates_exactly_as_keras_dense_ftrl():
    """SparseFtrl touches only the rows in the gradient, and ends where Keras's Ftrl (which applies the same
    gradient densely, over every row) ends: duplicate indices summed, l1 clipping, l2, the untouched rows unmoved.
    Weights start at 0 as the wide part's do (the dense update also recomputes untouched rows from their FTRL state,
    which puts them where they are only when they start there)."""
    rng = np.random.default_rng(0)
    options = dict(learning_rate=0.3, l1_regularization_strength=0.01, l2_regularization_strength=0.5,
                   initial_accumulator_value=0.1)
    start = np.zeros((50, 1), np.float32)
    sparse_var, dense_var = tf.Variable(start), tf.Variable(start)
    sparse_opt, dense_opt = wd.SparseFtrl(**options), tf.keras.optimizers.Ftrl(**options)
    sparse_opt.build([sparse_var])
    dense_opt.build([dense_var])
    touched = set()
    for _ in range(5):
        indices = rng.integers(0, 20, size=12)  # rows 20.. never get a gradient; repeats do
        touched.update(indices.tolist())
        values = tf.constant(rng.normal(size=(12, 1)).astype(np.float32))
        gradient = tf.IndexedSlices(values, tf.constant(indices), tf.constant([50, 1]))
        sparse_opt.apply_gradients([(gradient, sparse_var)])
        dense_opt.apply_gradients([(tf.convert_to_tensor(gradient), dense_var)])
    np.testing.assert_allclose(sparse_var.numpy(), dense_var.numpy(), rtol=1e-5, atol=1e-6)
    for sparse_slot, dense_slot in zip(sparse_opt.variables, dense_opt.variables):
        np.testing.assert_allclose(sparse_slot.numpy(), dense_slot.numpy(), rtol=1e-5, atol=1e-6)
    untouched = sorted(set(range(50)) - touched)
    np.testing.assert_array_equal(sparse_var.numpy()[untouched], start[untouched])
    assert len(untouched) >= 30 and not np.allclose(sparse_var.numpy(), start)


def test_saved_model_reloads_with_identical_predictions(tmp_path):
    cols, labels = columns()
    stats = wd.FeatureStats.from_sums(*wd.feature_sums(cols))
    config = WideDeepConfig(hidden_units=16, hidden_layers=2)
    model = wd.build_model(config, stats, wd.Vocabulary.from_columns({k: v[:200] for k, v in cols.items()}))
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


def test_vocabulary_lookup_is_exact_and_unknown_ids_share_index_0():
    vocabulary = wd.Vocabulary.from_columns({"user_id": np.array([7, 3, 7, 2 ** 31 - 1]),
                                             "product_id": np.array([5, 5, 9, 1]),
                                             wd.RECENCY_FEATURE: np.array([0.0, 0.0, 3.0, 42.0])})
    assert vocabulary.sizes() == {"users": 3, "products": 3, "pairs": 4, "product_recency": 3}
    lookup = wd.IdLookup(len(vocabulary.users))
    lookup.set_vocabulary(vocabulary.users)
    assert lookup(np.array([3, 7, 2 ** 31 - 1, 4, 0, 99], np.int32)).numpy().tolist() == [1, 2, 3, 0, 0, 0]
    pairs = wd.IdLookup(len(vocabulary.pairs))
    pairs.set_vocabulary(vocabulary.pairs)
    keys = wd.PairKey()((np.array([7, 7, 3, 3]), np.array([9, 5, 5, 9])))
    assert pairs(keys).numpy().tolist() == [3, 2, 1, 0]  # (3, 9) was never seen together
    # Recency is rounded and capped at the last bucket, so any long gap shares that bucket's weight.
    recency = wd.IdLookup(len(vocabulary.product_recency))
    recency.set_vocabulary(vocabulary.product_recency)
    numeric = np.zeros((4, len(NUMERIC_FEATURES)), np.float32)
    numeric[:, NUMERIC_FEATURES.index(wd.RECENCY_FEATURE)] = [0.2, 3.4, 99.0, 1.0]
    keys = wd.ProductRecencyKey()((np.array([5, 9, 1, 5]), numeric))
    assert recency(keys).numpy().tolist() == [2, 3, 1, 0]  # (5, 1) was never seen


# -- each part learns what it exists for ------------------------------------------------------------------------

def _fit(kind: str, cols, labels, epochs: int = 12, batch_size: int = 256, **config):
    """A model of `kind` trained with the real train step (both optimizers) on shuffled mini-batches."""

    tf.keras.utils.set_random_seed(0)
    stats = wd.FeatureStats.from_sums(*wd.feature_sums(cols))
    config = WideDeepConfig(kind=kind, hidden_units=32, hidden_layers=2, **config)
    model = wd.build_model(config, stats, wd.Vocabulary.from_columns(cols))
    step = wd.make_train_step(model, *wd.build_optimizers(config, model))
    rng = np.random.default_rng(0)
    for _ in range(epochs):
        order = rng.permutation(len(labels))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            step(wd.to_model_inputs({k: v[rows] for k, v in cols.items()}), labels[rows])
    return model


def _shoppers(pairs_from, rng, n_users=200, n_products=60, repeats=3):
    """Every (user, product) pair `repeats` times (one row per snapshot), ids and aisles as int32, the numeric
    features from `pairs_from(users, products)`."""
    users, products = (a.ravel().astype(np.int32) for a in np.meshgrid(np.arange(1, n_users + 1),
                                                                        np.arange(1, n_products + 1)))
    users, products = np.tile(users, repeats), np.tile(products, repeats)
    cols = {"user_id": users, "product_id": products, "aisle_id": (products % 7 + 1).astype(np.int32),
            "department_id": (products % 3 + 1).astype(np.int32)}
    cols.update(pairs_from(users, products, rng))
    return cols


def _noise_features(users, products, rng):
    return {name: rng.random(len(users)).astype(np.float32) * 5 for name in NUMERIC_FEATURES}


def _scores_on_new_draws(cols, rate, rng) -> dict[str, float]:
    """AUC of each model kind and of popularity, trained on labels drawn with `rate` (rows = 4 snapshots of every
    pair) and scored on new draws for one snapshot of every pair, as a final order follows earlier ones."""
    from kuberec.widedeep.evaluate import Popularity
    from kuberec.widedeep.metrics import auc

    train_labels = (rng.random(len(rate)) < rate).astype(np.int32)
    test_labels = (rng.random(len(rate)) < rate).astype(np.int32)
    one = len(rate) // 4
    test = {k: v[:one] for k, v in cols.items()}
    got = {kind: auc(test_labels[:one], wd.predict(_fit(kind, cols, train_labels), test))
           for kind in ("wide", "wide_deep", "deep")}
    got["popularity"] = auc(test_labels[:one], Popularity.fit(cols["product_id"], train_labels).score(
        test["product_id"]))
    return got


def test_only_memorisation_catches_a_personal_pattern():
    """Each user has favourite products of their own (a random user x product pattern, so no product, aisle or
    feature carries it, and every product is as popular as the others): a favourite is bought 80% of the time, any
    other product 5%. Test labels are new draws for the same pairs, as a final order follows earlier ones. The
    known answer: scoring by the true rates gets AUC 0.89; features alone can do no better than chance."""
    rng = np.random.default_rng(1)
    cols = _shoppers(_noise_features, rng, repeats=4)
    favourite = rng.random((201, 61)) < 0.25
    rate = np.where(favourite[cols["user_id"], cols["product_id"]], 0.8, 0.05)
    got = _scores_on_new_draws(cols, rate, rng)
    assert got["wide"] > 0.75 and got["wide_deep"] > 0.75, got
    assert got["deep"] < 0.56 and got["popularity"] < 0.56, got
    assert got["wide"] > got["popularity"] + 0.15, got


def test_only_memorisation_catches_when_each_product_is_due_again():
    """Products last different numbers of orders (a product x recency pattern, as the generator's replenishment
    cycles): half are bought again soon after a purchase (70% at 0-2 orders since the last one, 10% later), half
    only once they run out (70% from 3 orders on, 10% before). Every aisle has as many of each and, over all products,
    recency says nothing (40% at every recency), so the deep part can only guess; the product x recency cross
    learns it. The known answer: scoring by the true rates gets AUC 0.81."""
    rng = np.random.default_rng(3)
    cols = _shoppers(_noise_features, rng, repeats=4)
    recency = rng.integers(0, 6, len(cols["user_id"]))
    cols[wd.RECENCY_FEATURE] = recency.astype(np.float32)
    lasts_long = np.arange(61) // 7 % 2 == 1  # half of each aisle's products (aisle = product % 7 + 1)
    rate = np.where(lasts_long[cols["product_id"]] == (recency >= 3), 0.7, 0.1)
    got = _scores_on_new_draws(cols, rate, rng)
    assert got["wide"] > 0.75 and got["wide_deep"] > 0.75, got
    assert got["deep"] < 0.62 and got["popularity"] < 0.56, got


def test_only_the_deep_part_generalises_to_unseen_pairs():
    """The label follows a numeric feature (the purchase count) through a threshold; test pairs were never trained
    on, so ids cannot help: deep and wide & deep rank them well, wide-only is at chance."""
    from kuberec.widedeep.metrics import auc

    rng = np.random.default_rng(2)

    def counts(users, products, rng):
        features = _noise_features(users, products, rng)
        features["up_cnt_orders"] = rng.integers(0, 12, len(users)).astype(np.float32)
        return features

    cols = _shoppers(counts, rng, repeats=1)
    labels = ((cols["up_cnt_orders"] + rng.normal(0, 1.5, len(cols["user_id"]))) > 6).astype(np.int32)
    seen = (cols["user_id"] + cols["product_id"]) % 4 != 0
    train = {k: v[seen] for k, v in cols.items()}
    test = {k: v[~seen] for k, v in cols.items()}
    got = {kind: auc(labels[~seen], wd.predict(_fit(kind, train, labels[seen], epochs=6), test))
           for kind in ("deep", "wide_deep", "wide")}
    assert got["deep"] > 0.9 and got["wide_deep"] > 0.85, got
    assert got["wide"] < 0.6, got
