"""Wide & deep training checkpoints each epoch and resumes an interrupted run from the last one (one process; the
killed-rank case under horovodrun is benchmarks/training_faults.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kuberec.lake import feed
from kuberec.training.worker import TrainingError
from kuberec.widedeep import model as wd
from kuberec.widedeep.config import FEED_COLUMNS, WideDeepConfig
from kuberec.widedeep.metrics import log_loss
from kuberec.widedeep.train import TrainResult, train_widedeep

pytestmark = pytest.mark.slow


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_last_checkpoint(examples_uri, test_config, tmp_path):
    config = WideDeepConfig.from_dict({**test_config, "steps_per_epoch": 6})
    out = tmp_path / "run"
    before = {}

    def crash_after_epoch_1(entry, model):
        before["entry"] = dict(entry)
        raise Interrupted("simulated crash after the epoch-1 checkpoint")

    with pytest.raises(Interrupted):
        train_widedeep(config, examples_uri, out, on_epoch_end=crash_after_epoch_1)
    assert (out / "checkpoints" / "ckpt-1.index").is_file() and not (out / "model").exists()
    with pytest.raises(TrainingError, match="pass --resume"):
        train_widedeep(config, examples_uri, out)
    with pytest.raises(TrainingError, match="differs from the interrupted run's"):
        train_widedeep(config.replace(hidden_units=16), examples_uri, out, resume=True)

    seen = []
    result = train_widedeep(config, examples_uri, out, resume=True, on_epoch_end=lambda e, m: seen.append(e["epoch"]))
    assert result.resumed_from_epoch == 1 and result.history[0] == before["entry"]
    epochs = [int(e["epoch"]) for e in result.history]
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 2 and seen == epochs[1:]
    assert all(math.isfinite(e["loss"]) for e in result.history)
    # Early stopping saw the whole history, across the resume: the saved model is the best epoch's, even when that
    # epoch came before the interruption (its weights then come from its checkpoint).
    valid_losses = [e["valid_log_loss"] for e in result.history]
    assert result.best_epoch == 1 + int(np.argmin(valid_losses))
    valid = feed.load_table_arrays(examples_uri, FEED_COLUMNS, split="valid").columns
    saved = wd.load_model(result.model_dir)
    assert log_loss(valid["label"], wd.predict(saved, valid)) == pytest.approx(min(valid_losses), rel=1e-5)
    assert TrainResult.load(out) == result
