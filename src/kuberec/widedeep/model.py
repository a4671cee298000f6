"""The wide & deep purchase model: a functional Keras model with two optimizers (tf_keras, legacy Keras).

`tf.estimator.DNNLinearCombinedClassifier` (the seed's model) is gone since TF 2.16, and tf_keras's
`experimental.WideDeepModel` cannot be saved with two optimizers nor averaged by Horovod (STACK.md), so:

- wide (memorisation): exact user id, product id, user x product pair and product x recency (orders since the pair's
  last purchase, capped at RECENCY_BUCKETS - 1: how soon each product is bought again, product by product), each
  looked up in a vocabulary of the training data (`Vocabulary`; index 0 = not seen in training) and given one
  weight, i.e. a linear model over one-hot columns; wide logit = the four weights + a bias. Every wide variable
  starts at 0 and is owned by FTRL, which sees the gradient summed over the global batch (per-example
  FTRL-Proximal, McMahan et al. 2013), so its learning rate and l1/l2 strengths mean what they mean there whatever
  the batch size or worker count.
- deep (generalisation): aisle and department embeddings + the numeric gold features (log1p, then standardised with
  statistics of the training data) -> `hidden_layers` Dense+ReLU+Dropout layers, the first `hidden_units` wide and
  each next one `width_decline` times the previous -> deep logit. Optimised with Adagrad or Adam.
- output: sigmoid(wide logit + deep logit), the probability that the user buys the product in their next order.

`kind` "wide" or "deep" builds the same model with only that part (the baselines). Layer names start with
"wide_" or "deep_", which is how `split_variables` gives each optimizer its own variables. Models are saved as a
TensorFlow SavedModel directory (the vocabularies are non-trainable variables in it) and reload (`load_model`) with
identical predictions.

Inputs (`MODEL_INPUTS`): user_id, product_id, aisle_id, department_id int32 [B]; numeric float32
[B, len(NUMERIC_FEATURES)] in NUMERIC_FEATURES order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from kuberec.errors import KuberecError
from kuberec.ingest.instacart_features import NUMERIC_FEATURES
from kuberec.model_config import ConfigError
from kuberec.widedeep.config import WideDeepConfig

log = logging.getLogger(__name__)

ID_INPUTS = ("user_id", "product_id", "aisle_id", "department_id")
NUMERIC_INPUT = "numeric"
MODEL_INPUTS = (*ID_INPUTS, NUMERIC_INPUT)
METADATA_FILE = "kuberec-widedeep.json"


@dataclass(frozen=True)
class FeatureStats:
    """Mean and variance of log1p(numeric features) over the training rows (all workers together)."""

    mean: list[float]
    variance: list[float]
    count: int

    @classmethod
    def from_sums(cls, count: int, total: np.ndarray, total_sq: np.ndarray) -> "FeatureStats":
        if count < 1:
            raise KuberecError("no training rows to compute feature statistics from")
        mean = total / count
        variance = np.maximum(total_sq / count - mean ** 2, 0.0)
        return cls(mean.tolist(), variance.tolist(), int(count))


PAIR_SHIFT = 2 ** 31  # pair key = user_id * PAIR_SHIFT + product_id: unique for the non-negative INT ids
RECENCY_FEATURE = "up_orders_since_last_purchase"
RECENCY_BUCKETS = 10  # product x recency key = product_id * RECENCY_BUCKETS + min(recency, RECENCY_BUCKETS - 1)
VOCABULARY_COLUMNS = ("user_id", "product_id", RECENCY_FEATURE)  # what `Vocabulary.from_columns` reads


def pair_keys(user_ids: np.ndarray, product_ids: np.ndarray) -> np.ndarray:
    return np.asarray(user_ids, np.int64) * PAIR_SHIFT + np.asarray(product_ids, np.int64)


def product_recency_keys(product_ids: np.ndarray, recency: np.ndarray) -> np.ndarray:
    bucket = np.clip(np.round(np.asarray(recency, np.float64)), 0, RECENCY_BUCKETS - 1).astype(np.int64)
    return np.asarray(product_ids, np.int64) * RECENCY_BUCKETS + bucket


@dataclass(frozen=True)
class Vocabulary:
    """The ids the wide part gives a weight of its own: every user, product, (user, product) pair and (product,
    recency bucket) of the training rows, sorted int64 (crosses as `pair_keys`, `product_recency_keys`). Anything
    else shares index 0, whose weight training never moves."""

    users: np.ndarray
    products: np.ndarray
    pairs: np.ndarray
    product_recency: np.ndarray

    @classmethod
    def from_columns(cls, columns: Mapping[str, np.ndarray]) -> "Vocabulary":
        """From the training rows' VOCABULARY_COLUMNS."""
        users, products = columns["user_id"], columns["product_id"]
        return cls(np.unique(np.asarray(users, np.int64)), np.unique(np.asarray(products, np.int64)),
                   np.unique(pair_keys(users, products)),
                   np.unique(product_recency_keys(products, columns[RECENCY_FEATURE])))

    def sizes(self) -> dict[str, int]:
        return {"users": len(self.users), "products": len(self.products), "pairs": len(self.pairs),
                "product_recency": len(self.product_recency)}


@tf.keras.utils.register_keras_serializable(package="kuberec")
class IdLookup(tf.keras.layers.Layer):
    """int ids -> int32 index into a sorted vocabulary, 1-based; 0 for ids not in it. The vocabulary is a
    non-trainable variable, so it is saved, restored and broadcast with the weights (a config holds only its size)."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)
        self.vocabulary = self.add_weight(name="vocabulary", shape=(self.size,), dtype=tf.int64,
                                          initializer="zeros", trainable=False)

    def set_vocabulary(self, ids: np.ndarray) -> None:
        self.vocabulary.assign(np.asarray(ids, np.int64))

    def call(self, ids):
        ids = tf.cast(ids, tf.int64)
        # One read of the variable as a tensor, used by both ops: a gather on the variable itself would put it in
        # copy-on-read mode, and then every read copied the whole vocabulary (11 ms a batch for 14M pairs).
        vocabulary = tf.convert_to_tensor(self.vocabulary)
        at = tf.searchsorted(vocabulary, ids, side="left", out_type=tf.int32)
        found = tf.gather(vocabulary, tf.minimum(at, self.size - 1)) == ids
        return tf.where(found, at + 1, 0)

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@tf.keras.utils.register_keras_serializable(package="kuberec")
class PairKey(tf.keras.layers.Layer):
    """(user_id, product_id) -> int64 pair key, as `pair_keys`."""

    def call(self, inputs):
        user, product = inputs
        return tf.cast(user, tf.int64) * PAIR_SHIFT + tf.cast(product, tf.int64)


@tf.keras.utils.register_keras_serializable(package="kuberec")
class ProductRecencyKey(tf.keras.layers.Layer):
    """(product_id, numeric features) -> int64 key, as `product_recency_keys` of the RECENCY_FEATURE column."""

    def call(self, inputs):
        product, numeric = inputs
        recency = numeric[:, NUMERIC_FEATURES.index(RECENCY_FEATURE)]
        bucket = tf.cast(tf.clip_by_value(tf.round(recency), 0.0, RECENCY_BUCKETS - 1.0), tf.int64)
        return tf.cast(product, tf.int64) * RECENCY_BUCKETS + bucket


@tf.keras.utils.register_keras_serializable(package="kuberec")
class Bias(tf.keras.layers.Layer):
    """x + b with one scalar b, starting at 0 (the wide part's bias, owned by FTRL like its other weights)."""

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(), initializer="zeros")

    def call(self, inputs):
        return inputs + self.bias


def build_model(config: WideDeepConfig, stats: FeatureStats, vocabulary: Vocabulary | None = None):
    """The Keras model for `config.kind` (see the module docstring); the wide part needs the `vocabulary`."""
    layers = tf.keras.layers
    n_numeric = len(NUMERIC_FEATURES)
    if len(stats.mean) != n_numeric:
        raise ConfigError(f"feature statistics cover {len(stats.mean)} features, the model has {n_numeric}")
    inputs = {name: layers.Input(shape=(), dtype=tf.int32, name=name) for name in ID_INPUTS}
    inputs[NUMERIC_INPUT] = layers.Input(shape=(n_numeric,), dtype=tf.float32, name=NUMERIC_INPUT)
    logits = []
    if config.kind in ("wide_deep", "wide"):
        if vocabulary is None:
            raise ConfigError("the wide part needs the vocabulary of the training ids")
        ids = {"user": inputs["user_id"], "product": inputs["product_id"],
               "pair": PairKey(name="wide_pair_key")((inputs["user_id"], inputs["product_id"])),
               "product_recency": ProductRecencyKey(name="wide_product_recency_key")(
                   (inputs["product_id"], inputs[NUMERIC_INPUT]))}
        terms = []
        for what, known in (("user", vocabulary.users), ("product", vocabulary.products),
                            ("pair", vocabulary.pairs), ("product_recency", vocabulary.product_recency)):
            known = known if len(known) else np.array([-1], np.int64)  # ids are >= 0: -1 matches nothing
            lookup = IdLookup(len(known), name=f"wide_lookup_{what}")
            lookup.set_vocabulary(known)
            # A linear model over one-hot columns: each column's weight is a 1-d embedding of its index.
            weight = layers.Embedding(len(known) + 1, 1, embeddings_initializer="zeros", name=f"wide_weights_{what}")
            terms.append(layers.Reshape((), name=f"wide_flat_{what}")(weight(lookup(ids[what]))))
        logits.append(Bias(name="wide_bias")(layers.Add(name="wide_sum")(terms)))
    if config.kind in ("wide_deep", "deep"):
        aisle = layers.Embedding(config.aisle_buckets, config.embedding_dim, name="deep_embed_aisle")(
            layers.Hashing(config.aisle_buckets, name="deep_hash_aisle")(inputs["aisle_id"]))
        department = layers.Embedding(config.department_buckets, config.embedding_dim, name="deep_embed_department")(
            layers.Hashing(config.department_buckets, name="deep_hash_department")(inputs["department_id"]))
        # Counts are heavy-tailed; log1p then standardise with the training data's statistics (fixed weights, so
        # every worker and the served model transform identically).
        numeric = layers.Normalization(mean=stats.mean, variance=stats.variance, name="deep_normalize")(
            Log1p(name="deep_log1p")(inputs[NUMERIC_INPUT]))
        x = layers.Concatenate(name="deep_concat")([aisle, department, numeric])
        for i, width in enumerate(config.layer_widths):
            x = layers.Dense(width, activation="relu", name=f"deep_dense_{i}")(x)
            if config.dropout > 0:
                x = layers.Dropout(config.dropout, name=f"deep_dropout_{i}")(x)
        logits.append(layers.Reshape((), name="deep_flat")(layers.Dense(1, name="deep_logit")(x)))
    logit = logits[0] if len(logits) == 1 else layers.Add(name="logit")(logits)
    probability = layers.Activation("sigmoid", name="probability")(logit)
    return tf.keras.Model(inputs, probability, name=f"kuberec_{config.kind}")


@tf.keras.utils.register_keras_serializable(package="kuberec")
class Log1p(tf.keras.layers.Layer):
    """log(1 + max(x, 0)): features are counts, shares and days, all >= 0 (negative = bad data, clipped)."""

    def call(self, inputs):
        return tf.math.log1p(tf.maximum(inputs, 0.0))


def split_variables(model) -> tuple[list, list]:
    """(wide variables, deep variables) by layer name; every trainable variable is in exactly one."""
    wide, deep = [], []
    for layer in model.layers:
        target = wide if layer.name.startswith("wide_") else deep
        target.extend(layer.trainable_variables)
    return wide, deep


class SparseFtrl(tf.keras.optimizers.Ftrl):
    """Keras's FTRL-Proximal, except that a sparse gradient (an embedding's IndexedSlices: the wide part's weights)
    updates only the rows it touches. Keras's Ftrl applies it as a dense tensor, so every step cost the whole wide
    vocabulary (12.9M ids at full Instacart scale: 93 ms a step against 6 ms; docs/BENCHMARKS.md, "Wide & deep at
    full Instacart scale"). The update is TensorFlow's own sparse FTRL kernel with the same formula, on the same slot
    variables (checkpoints are unchanged); rows without a gradient do not move in the dense update either, since the
    wide weights start at 0, where their FTRL state puts them. `apply_gradients` has already summed duplicate
    indices, as the kernel needs."""

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        slot = self._index_dict[self._var_key(variable)]
        lr = tf.cast(self.learning_rate, variable.dtype)
        return tf.raw_ops.ResourceSparseApplyFtrlV2(
            var=variable.handle, accum=self._accumulators[slot].handle, linear=self._linears[slot].handle,
            grad=gradient.values, indices=gradient.indices, lr=lr,
            l1=tf.cast(self.l1_regularization_strength, variable.dtype),
            l2=tf.cast(self.l2_regularization_strength, variable.dtype) + self.beta / (2.0 * lr),
            l2_shrinkage=tf.cast(self.l2_shrinkage_regularization_strength, variable.dtype),
            lr_power=tf.cast(self.learning_rate_power, variable.dtype))


def build_optimizers(config: WideDeepConfig, model) -> tuple[Any, Any]:
    """(wide FTRL or None, deep Adagrad/Adam or None), built over their variables so their slots exist now."""
    wide_vars, deep_vars = split_variables(model)
    wide_opt = deep_opt = None
    if wide_vars:
        wide_opt = SparseFtrl(config.wide_learning_rate, l1_regularization_strength=config.ftrl_l1,
                              l2_regularization_strength=config.ftrl_l2,
                              initial_accumulator_value=config.ftrl_initial_accumulator, name="wide_ftrl")
        wide_opt.build(wide_vars)
    if deep_vars:
        cls = tf.keras.optimizers.Adam if config.deep_optimizer == "adam" else tf.keras.optimizers.Adagrad
        deep_opt = cls(config.deep_learning_rate, name=f"deep_{config.deep_optimizer}")
        deep_opt.build(deep_vars)
    return wide_opt, deep_opt


def make_train_step(model, wide_opt, deep_opt, wrap_tape=None, world_size: int = 1):
    """A tf.function(features, labels) -> loss that updates the wide variables with FTRL and the deep ones with
    Adagrad/Adam. `wrap_tape` (e.g. `hvd.DistributedGradientTape`) wraps the tape so gradients are averaged across
    the `world_size` workers before either optimizer sees them; FTRL gets them times the global batch size, i.e.
    summed over its examples (see the module docstring)."""
    wide_vars, deep_vars = split_variables(model)
    loss_fn = tf.keras.losses.BinaryCrossentropy()

    @tf.function
    def train_step(features, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(tf.cast(labels, tf.float32), model(features, training=True))
        if wrap_tape is not None:
            tape = wrap_tape(tape)
        # One gradient call (one allreduce under Horovod) for both parts; each optimizer applies its own share.
        grads = tape.gradient(loss, wide_vars + deep_vars)
        if wide_vars:
            examples = tf.cast(tf.shape(labels)[0] * world_size, tf.float32)
            wide_opt.apply_gradients(zip([_scaled(g, examples) for g in grads[:len(wide_vars)]], wide_vars))
        if deep_vars:
            deep_opt.apply_gradients(zip(grads[len(wide_vars):], deep_vars))
        return loss

    return train_step


def _scaled(gradient, factor):
    if isinstance(gradient, tf.IndexedSlices):  # embedding gradients stay sparse
        return tf.IndexedSlices(gradient.values * factor, gradient.indices, gradient.dense_shape)
    return gradient * factor


def to_model_inputs(columns: Mapping[str, Any]) -> dict[str, Any]:
    """Gold example columns (numpy or tensors) -> the model's input dict."""
    features = {name: tf.cast(columns[name], tf.int32) for name in ID_INPUTS}
    features[NUMERIC_INPUT] = tf.stack([tf.cast(columns[name], tf.float32) for name in NUMERIC_FEATURES], axis=1)
    return features


def predict(model, columns: Mapping[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
    """Probabilities float64 [N] for gold-example-like columns."""
    n = len(columns["user_id"])
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, batch_size):
        chunk = {k: np.asarray(columns[k])[start:start + batch_size] for k in (*ID_INPUTS, *NUMERIC_FEATURES)}
        out[start:start + batch_size] = model(to_model_inputs(chunk), training=False).numpy()
    return out


def save_model(model, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """SavedModel directory + a JSON file of what it was trained with."""
    path = Path(path)
    model.save(str(path), include_optimizer=False, save_format="tf")
    (path / METADATA_FILE).write_text(json.dumps(dict(metadata), indent=2, sort_keys=True, default=str))
    return path


def load_model(path: str | Path):
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise KuberecError(f"{path} is not a saved wide & deep model (no saved_model.pb); train one first "
                           "(kuberec train widedeep)")
    return tf.keras.models.load_model(str(path), compile=False,
                                      custom_objects={"Log1p": Log1p, "IdLookup": IdLookup, "PairKey": PairKey,
                                                      "ProductRecencyKey": ProductRecencyKey, "Bias": Bias})


def load_metadata(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / METADATA_FILE).read_text())


def feature_sums(columns: Mapping[str, np.ndarray]) -> tuple[int, np.ndarray, np.ndarray]:
    """(rows, sum, sum of squares) of log1p(numeric features), float64, for FeatureStats."""
    x = np.log1p(np.maximum(np.stack([np.asarray(columns[n], np.float64) for n in NUMERIC_FEATURES], axis=1), 0))
    return len(x), x.sum(axis=0), (x ** 2).sum(axis=0)
