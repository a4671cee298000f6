"""What every Horovod training entrypoint needs inside its workers: start Horovod, agree on rank 0's values,
compare weights, checkpoint each epoch and resume (kuberec.training.launch is the side that starts the job).

The same code runs in one process (Horovod of size 1), under `horovodrun -np N --gloo` and in an MPIJob.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kuberec.errors import KuberecError

log = logging.getLogger(__name__)


# What a training output directory holds besides the model (both trainers).
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
CHECKPOINT_DIR = "checkpoints"
RESULT_FILE = "train_result.json"


class TrainingError(KuberecError):
    """Training cannot start, continue or finish with the given data or output directory."""


def init_horovod():
    """`horovod.tensorflow`, initialised; workers sharing one machine split its cores between them."""
    try:
        import horovod.tensorflow as hvd
    except ImportError as err:
        raise TrainingError(f"Horovod is not importable ({err}); run `make setup`, which builds it into the "
                            f"virtualenv") from err
    hvd.init()
    _limit_threads(hvd)
    return hvd


def _limit_threads(hvd) -> None:
    """Without this each of N local workers starts a thread per core and they thrash."""
    if hvd.local_size() <= 1:
        return
    import tensorflow as tf

    threads = max(1, (os.cpu_count() or 1) // hvd.local_size())
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already started in this process: keep its settings
        log.debug("TensorFlow already initialised; thread settings unchanged")


def is_rank_zero() -> bool:
    """Whether this process is Horovod's rank 0, the only one that writes outputs and talks to MLflow. Asked of
    Horovod itself: the launcher's environment variables differ (horovodrun, mpirun in an MPIJob, one process)."""
    return init_horovod().rank() == 0


def agree(hvd, value: Any) -> Any:
    """Rank 0's value on every worker (a no-op in one process)."""
    return hvd.broadcast_object(value, root_rank=0) if hvd.size() > 1 else value


def weights_checksum(model) -> str:
    """SHA-256 over all of the model's variables (trainable and not), in model order: equal on every worker
    exactly when gradients were averaged and every variable was synchronised."""
    digest = hashlib.sha256()
    for variable in model.variables:
        digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
    return digest.hexdigest()


def configure_logging() -> None:
    """INFO logging whose lines say which Horovod rank wrote them (workers share one output under horovodrun)."""
    rank = os.environ.get("HOROVOD_RANK", "0")
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # TensorFlow's per-checkpoint INFO lines


# -- checkpoints and resume ---------------------------------------------------------------------------------------

def prepare_out_dir(out_dir: Path, config: Mapping[str, Any], resume: bool) -> str | None:
    """Rank 0's check of a training output directory (then it writes `config`); returns an error message instead
    of raising so that every rank can raise it. Only `epochs` may change when resuming."""
    checkpoints = out_dir / CHECKPOINT_DIR
    has_checkpoints = checkpoints.is_dir() and any(checkpoints.iterdir())
    if has_checkpoints and not resume:
        return (f"{out_dir} already holds checkpoints of an earlier run; pass --resume to continue it, "
                f"or choose another --out")
    config_path = out_dir / CONFIG_FILE
    if resume and config_path.is_file():
        saved = json.loads(config_path.read_text())
        differs = sorted(k for k, v in config.items() if k != "epochs" and saved.get(k) != v)
        if differs:
            return (f"--resume with a config that differs from the interrupted run's ({', '.join(differs)}); "
                    f"resume with the original config (in {config_path}) or start a new --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(dict(config), indent=2, sort_keys=True))
    return None


class EpochCheckpoints:
    """A checkpoint after every epoch (`tf.train.CheckpointManager` over the given trackables, e.g. model and
    optimizers, plus the epoch) and the per-epoch history next to it, both written by rank 0 alone."""

    def __init__(self, hvd, out_dir: Path, *, max_to_keep: int = 2, **trackables: Any) -> None:
        import tensorflow as tf

        self.hvd = hvd
        self.out_dir = out_dir
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.checkpoint = tf.train.Checkpoint(epoch=self.epoch, **trackables)
        self.manager = (tf.train.CheckpointManager(self.checkpoint, str(out_dir / CHECKPOINT_DIR),
                                                   max_to_keep=max_to_keep) if hvd.rank() == 0 else None)

    def restore(self, resume: bool, total_epochs: int) -> tuple[int, list[dict[str, Any]]]:
        """(epochs already done, their history) on every rank: from the last checkpoint when `resume`, else (0, []).
        The caller broadcasts the restored variables from rank 0."""
        history: list[dict[str, Any]] = []
        if self.manager is not None and resume:
            if self.manager.latest_checkpoint:
                self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
                done = int(self.epoch.numpy())
                history_path = self.out_dir / HISTORY_FILE
                if history_path.is_file():  # written right after each checkpoint; keep what the checkpoint covers
                    history = json.loads(history_path.read_text())[:done]
                log.info("resuming from %s (epoch %d of %d)", self.manager.latest_checkpoint, done, total_epochs)
            else:
                log.warning("--resume: no checkpoint in %s, starting from scratch", self.out_dir / CHECKPOINT_DIR)
        return agree(self.hvd, (int(self.epoch.numpy()), history))

    def save(self, epoch: int, history: list[dict[str, Any]]) -> None:
        """Rank 0: checkpoint `epoch` (1-based, just finished) and the history up to it."""
        if self.manager is None:
            return
        self.epoch.assign(epoch)
        self.manager.save(checkpoint_number=epoch)
        (self.out_dir / HISTORY_FILE).write_text(json.dumps(history, indent=2))

    def restore_epoch(self, epoch: int) -> bool:
        """Rank 0: load the variables of epoch `epoch`'s checkpoint; False when it is no longer kept."""
        path = f"{self.manager.directory}/ckpt-{epoch}" if self.manager is not None else ""
        if not path or path not in self.manager.checkpoints:
            return False
        self.checkpoint.restore(path).assert_existing_objects_matched()
        return True
