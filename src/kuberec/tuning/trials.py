"""What one trial of a sweep runs: the pipeline's own training function, with validation after every epoch.

- similarity: `kuberec.similarity.train.train_on_arrays` (one Horovod process of size 1) on the train split minus
  a held-out slice; after each epoch the held-out images are queries against the images being trained on, and
  precision@k / recall@k / k-NN accuracy (kuberec.similarity.evaluate.retrieval_metrics) are reported.
- widedeep: `kuberec.widedeep.train.train_widedeep_model` on the `train` split (streamed by Petastorm as in the
  pipeline); after each epoch the model scores the `valid` split: AUC, log loss, MAP@10
  (kuberec.widedeep.evaluate.metrics).

Each epoch's numbers go to `ray.tune.report`, so ASHA can stop a trial between epochs. A trial whose training loss
is no longer finite raises `TrialDiverged`: Tune records it as failed (and so does its MLflow run) and the sweep
goes on. The data are loaded once, on the driver (`load_data`), and reach the trials through Ray's object store.
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

import kuberec  # noqa: F401  (selects legacy Keras before TensorFlow is imported)
from kuberec.errors import KuberecError
from kuberec.steps import TableRef

log = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1  # of the labelled similarity train images, held out as validation queries
VALIDATION_QUERIES = 2_000  # but at most this many (each is queried every epoch)
VALIDATION_INDEX = 10_000  # against at most this many training images (embedding them is the costly part)
MIN_VALIDATION = 20


class TrialDiverged(KuberecError):
    """A trial's training loss became NaN or infinite (typically a learning rate far too high)."""


@dataclass(frozen=True)
class SimilarityData:
    table: TableRef
    train_images: np.ndarray  # uint8 [N,28,28]: what trials train on
    train_labels: np.ndarray  # int32 [N]
    query_images: np.ndarray  # held out: validation queries
    query_labels: np.ndarray
    index_rows: np.ndarray  # rows of train_images that the queries search


@dataclass(frozen=True)
class WideDeepData:
    examples: TableRef
    valid: dict[str, np.ndarray]  # the `valid` split's columns (kuberec.widedeep.evaluate.EVAL_COLUMNS)


def load_similarity_data(table: TableRef, *, max_examples: int | None = None, seed: int = 0) -> SimilarityData:
    """The labelled train split of `table`, at most `max_examples` images (seeded sample), minus a held-out slice."""
    from kuberec import feed

    arrays = feed.load_arrays(table.uri, version=table.version, split="train")
    rng = np.random.default_rng(seed)
    rows = rng.permutation(np.flatnonzero(arrays.labels >= 0))
    if max_examples is not None:
        rows = rows[:max_examples]
    held_out = min(VALIDATION_QUERIES, max(MIN_VALIDATION, int(len(rows) * VALIDATION_FRACTION)))
    if len(rows) < 4 * held_out:
        raise KuberecError(f"{table} has only {len(rows)} labelled train images (after --max-examples); a sweep "
                           f"needs at least {4 * held_out} to hold out {held_out} for validation")
    queries, train = np.sort(rows[:held_out]), np.sort(rows[held_out:])
    index_rows = np.sort(rng.permutation(len(train))[:VALIDATION_INDEX])
    log.info("similarity sweep data: %d train images, %d validation queries against %d of them (%s)", len(train),
             len(queries), len(index_rows), table)
    return SimilarityData(table, arrays.images[train], arrays.labels[train], arrays.images[queries],
                          arrays.labels[queries], index_rows)


def load_widedeep_data(examples: TableRef) -> WideDeepData:
    from kuberec import feed
    from kuberec.widedeep.evaluate import EVAL_COLUMNS

    valid = feed.load_table_arrays(examples.uri, EVAL_COLUMNS, version=examples.version, split="valid")
    labels = valid.columns["label"]
    if len(valid) == 0 or labels.min() == labels.max():
        raise KuberecError(f"the valid split of {examples} needs rows of both labels to validate trials")
    log.info("wide & deep sweep data: %d validation rows (%s)", len(valid), examples)
    return WideDeepData(examples, valid.columns)


def load_data(model: str, table: TableRef, *, max_examples: int | None = None,
              seed: int = 0) -> SimilarityData | WideDeepData:
    if model == "similarity":
        return load_similarity_data(table, max_examples=max_examples, seed=seed)
    return load_widedeep_data(table)


# -- inside a trial -----------------------------------------------------------------------------------------------

# (epoch, training loss, a function computing the validation metrics): reports one epoch to Tune.
EpochDone = Callable[[int, float, Callable[[], Mapping[str, float]]], None]


def _train_similarity(config: dict[str, Any], data: SimilarityData, out_dir: Path, epoch_done: EpochDone) -> None:
    from kuberec.similarity.evaluate import retrieval_metrics
    from kuberec.similarity.model import SimilarityConfig, embed
    from kuberec.similarity.train import train_on_arrays

    index_images, index_labels = data.train_images[data.index_rows], data.train_labels[data.index_rows]

    def validate(model) -> dict[str, float]:
        found = retrieval_metrics(embed(model, data.query_images), data.query_labels, embed(model, index_images),
                                  index_labels, ks=(1, 5), knn_k=5, map_queries=0)
        return {name: value for name, value in found.flat().items() if name != "map_at_r"}  # not computed

    train_on_arrays(SimilarityConfig.from_dict(config), data.train_images, data.train_labels, out_dir,
                    table_uri=data.table.uri, table_version=data.table.version,
                    on_epoch_end=lambda metrics, model: epoch_done(metrics.epoch, metrics.loss,
                                                                   lambda: validate(model)))


def _train_widedeep(config: dict[str, Any], data: WideDeepData, out_dir: Path, epoch_done: EpochDone) -> None:
    from kuberec.widedeep.evaluate import metrics
    from kuberec.widedeep.model import WideDeepConfig, predict
    from kuberec.widedeep.train import train_widedeep_model

    def validate(model) -> dict[str, float]:
        return metrics(data.valid["user_id"], data.valid["label"], predict(model, data.valid))

    train_widedeep_model(WideDeepConfig.from_dict(config), data.examples.uri, out_dir,
                         version=data.examples.version, save=False,
                         on_epoch_end=lambda entry, model: epoch_done(int(entry["epoch"]), entry["loss"],
                                                                      lambda: validate(model)))


TRAINERS: dict[str, Callable[[dict[str, Any], Any, Path, EpochDone], None]] = {
    "similarity": _train_similarity,
    "widedeep": _train_widedeep,
}


def _limit_threads(cpus: int) -> None:
    """TensorFlow uses every core by default; a trial gets `cpus` of them so concurrent trials do not thrash."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    except RuntimeError:  # TensorFlow already started in this (reused) worker: keep its settings
        pass


def run_trial(config: dict[str, Any], *, model: str, data: SimilarityData | WideDeepData, cpus: int = 1) -> None:
    """The Ray Tune trainable: train one config, reporting every epoch (Tune may stop it after any of them)."""
    from ray import tune

    _limit_threads(cpus)
    import tensorflow as tf

    tf.keras.backend.clear_session()  # a reused worker must not keep the previous trial's graph and layer names

    def epoch_done(epoch: int, loss: float, validate: Callable[[], Mapping[str, float]]) -> None:
        if not math.isfinite(loss):
            raise TrialDiverged(f"training diverged at epoch {epoch} (loss {loss}); the learning rate is probably "
                                f"too high for this configuration")
        tune.report({"epoch": epoch, "loss": float(loss), **{k: float(v) for k, v in validate().items()}})

    with tempfile.TemporaryDirectory(prefix="kuberec-trial-") as out:
        TRAINERS[model](config, data, Path(out) / "train", epoch_done)
