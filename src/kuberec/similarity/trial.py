"""What a tuning trial of the similarity model runs (kuberec.tuning calls these through the model's record).

`load_data` (on the sweep's driver, once): the labelled train split minus a held-out slice of validation queries.
`train_trial` (in each trial): `kuberec.similarity.train.train_on_arrays`, one Horovod process of size 1; after each
epoch the held-out images are queries against the images being trained on, and precision@k / recall@k / k-NN
accuracy (kuberec.similarity.metrics) go to `epoch_done`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kuberec.errors import KuberecError
from kuberec.lake.delta import TableRef
from kuberec.model_config import EpochDone
from kuberec.similarity.config import SimilarityConfig

log = logging.getLogger(__name__)

VALIDATION_FRACTION = 0.1  # of the labelled similarity train images, held out as validation queries
VALIDATION_QUERIES = 2_000  # but at most this many (each is queried every epoch)
VALIDATION_INDEX = 10_000  # against at most this many training images (embedding them is the costly part)
MIN_VALIDATION = 20


@dataclass(frozen=True)
class SimilarityData:
    table: TableRef
    train_images: np.ndarray  # uint8 [N,28,28]: what trials train on
    train_labels: np.ndarray  # int32 [N]
    query_images: np.ndarray  # held out: validation queries
    query_labels: np.ndarray
    index_rows: np.ndarray  # rows of train_images that the queries search


def load_data(table: TableRef, *, max_examples: int | None = None, seed: int = 0) -> SimilarityData:
    """The labelled train split of `table`, at most `max_examples` images (seeded sample), minus a held-out slice."""
    from kuberec.lake import feed

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


def train_trial(config: dict[str, Any], data: SimilarityData, out_dir: Path, epoch_done: EpochDone) -> None:
    from kuberec.similarity.metrics import retrieval_metrics
    from kuberec.similarity.model import embed
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
