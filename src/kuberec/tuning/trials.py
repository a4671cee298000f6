"""What one trial of a sweep runs: the model's own trial function (its record's `train_trial`), validated after
every epoch.

The model's record (kuberec.models) says what that is: `load_tuning_data` runs once on the driver and its result
reaches the trials through Ray's object store; `train_trial` trains one config with the pipeline's training function
and calls back after each epoch with the loss and a function computing the validation metrics. Each epoch's numbers
go to `ray.tune.report`, so ASHA can stop a trial between epochs. A trial whose training loss is no longer finite
raises `TrialDiverged`: Tune records it as failed (and so does its MLflow run) and the sweep goes on.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from kuberec.errors import KuberecError
from kuberec.models import model_record

log = logging.getLogger(__name__)


class TrialDiverged(KuberecError):
    """A trial's training loss became NaN or infinite (typically a learning rate far too high)."""


def _limit_threads(cpus: int) -> None:
    """TensorFlow uses every core by default; a trial gets `cpus` of them so concurrent trials do not thrash."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    except RuntimeError:  # TensorFlow already started in this (reused) worker: keep its settings
        pass


def run_trial(config: dict[str, Any], *, model: str, data: Any, cpus: int = 1) -> None:
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
        model_record(model).train_trial(config, data, Path(out) / "train", epoch_done)
