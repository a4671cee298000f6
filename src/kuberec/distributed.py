"""What every Horovod training entrypoint needs: start Horovod, agree on rank 0's values, compare weights.

The same code runs in one process (Horovod of size 1), under `horovodrun -np N --gloo` and in an MPIJob.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import numpy as np

from kuberec.errors import KuberecError

log = logging.getLogger(__name__)


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
