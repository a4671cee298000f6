"""What a tuning trial of the wide & deep model runs (kuberec.tuning calls these through the model's record).

`load_data` (on the sweep's driver, once): the `valid` split's columns. `train_trial` (in each trial):
`kuberec.widedeep.train.train_widedeep_model` on the `train` split (streamed by Petastorm as in the pipeline); after
each epoch the model scores the `valid` split (AUC, per-user AUC, log loss, MAP@10: kuberec.widedeep.metrics)
for `epoch_done`.
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
from kuberec.widedeep.config import FEED_COLUMNS, WideDeepConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WideDeepData:
    examples: TableRef
    valid: dict[str, np.ndarray]  # the `valid` split's columns (kuberec.widedeep.config.FEED_COLUMNS)


def load_data(examples: TableRef, *, max_examples: int | None = None, seed: int = 0) -> WideDeepData:
    """The valid split's columns. `max_examples` and `seed` are not used: a trial streams the whole train split (the
    model's record says how to bound it instead)."""
    from kuberec.lake import feed

    valid = feed.load_table_arrays(examples.uri, FEED_COLUMNS, version=examples.version, split="valid")
    labels = valid.columns["label"]
    if len(valid) == 0 or labels.min() == labels.max():
        raise KuberecError(f"the valid split of {examples} needs rows of both labels to validate trials")
    log.info("wide & deep sweep data: %d validation rows (%s)", len(valid), examples)
    return WideDeepData(examples, valid.columns)


def train_trial(config: dict[str, Any], data: WideDeepData, out_dir: Path, epoch_done: EpochDone) -> None:
    from kuberec.widedeep.metrics import metrics
    from kuberec.widedeep.model import predict
    from kuberec.widedeep.train import train_widedeep_model

    def validate(model) -> dict[str, float]:
        return metrics(data.valid["user_id"], data.valid["label"], predict(model, data.valid))

    train_widedeep_model(WideDeepConfig.from_dict(config), data.examples.uri, out_dir,
                         version=data.examples.version, save=False,
                         on_epoch_end=lambda entry, model: epoch_done(int(entry["epoch"]), entry["loss"],
                                                                      lambda: validate(model)))
