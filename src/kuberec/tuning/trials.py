"""What one trial of a sweep runs: the model's own trial function (its record's `train_trial`), validated after
every epoch.

The model's record (kuberec.models) says what that is: `load_tuning_data` runs once on the driver and its result
reaches the trials through Ray's object store; `train_trial` trains one config with the pipeline's training function
and calls back after each epoch with the loss and a function computing the validation metrics. Each epoch's numbers
go to `ray.tune.report`, so ASHA can stop a trial between epochs. A trial whose training loss is no longer finite
raises `TrialDiverged`, one that runs out of memory `TrialOutOfMemory`: Tune records it as failed (and so does its
MLflow run) and the sweep goes on.

`memory_mib` caps what a trial's process may allocate, as a Kubernetes pod's memory limit caps a pod: the soft
RLIMIT_DATA (private writable memory: heap, anonymous maps, thread stacks; not the object store Ray shares, which
holds the sweep's data). An allocation past it fails inside the trial (Python's MemoryError, TensorFlow's
ResourceExhaustedError "OOM when allocating tensor"), so that trial fails and the others go on, instead of the
machine's OOM killer (or a pod limit) ending a process at random. RLIMIT_AS is no use here: TensorFlow alone
reserves ~1.7 GiB of address space it never touches.
"""

from __future__ import annotations

import logging
import math
import re
import resource
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from kuberec.errors import KuberecError
from kuberec.models import model_record

log = logging.getLogger(__name__)


class TrialDiverged(KuberecError):
    """A trial's training loss became NaN or infinite (typically a learning rate far too high)."""


class TrialOutOfMemory(KuberecError):
    """A trial needed more memory than its cap (`--memory-per-trial`) or the machine had."""


def _private_memory_mib() -> int:
    """This process's private writable memory, as RLIMIT_DATA counts it (VmData)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) // 1024
    return 0


def _limit_memory(mib: int) -> None:
    """Cap this process's private memory at `mib` MiB (soft RLIMIT_DATA; a reused worker keeps the same cap)."""
    held = _private_memory_mib()
    if held >= mib:
        raise TrialOutOfMemory(f"the trial's process already holds {held:,} MiB before training (Ray's worker and "
                               f"TensorFlow), more than its cap of {mib:,} MiB: raise --memory-per-trial")
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = mib * 2 ** 20 if hard == resource.RLIM_INFINITY else min(mib * 2 ** 20, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    log.info("trial memory capped at %s MiB (%s MiB held before training)", f"{mib:,}", f"{held:,}")


def _limit_threads(cpus: int) -> None:
    """TensorFlow uses every core by default; a trial gets `cpus` of them so concurrent trials do not thrash."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(cpus)
    except RuntimeError:  # TensorFlow already started in this (reused) worker: keep its settings
        pass


def run_trial(config: dict[str, Any], *, model: str, data: Any, cpus: int = 1, memory_mib: int | None = None) -> None:
    """The Ray Tune trainable: train one config, reporting every epoch (Tune may stop it after any of them)."""
    from ray import tune

    _limit_threads(cpus)
    import tensorflow as tf

    if memory_mib:
        _limit_memory(memory_mib)  # after TensorFlow's import, which is the same for every trial

    tf.keras.backend.clear_session()  # a reused worker must not keep the previous trial's graph and layer names

    def epoch_done(epoch: int, loss: float, validate: Callable[[], Mapping[str, float]]) -> None:
        if not math.isfinite(loss):
            raise TrialDiverged(f"training diverged at epoch {epoch} (loss {loss}); the learning rate is probably "
                                f"too high for this configuration")
        tune.report({"epoch": epoch, "loss": float(loss), **{k: float(v) for k, v in validate().items()}})

    try:
        with tempfile.TemporaryDirectory(prefix="kuberec-trial-") as out:
            model_record(model).train_trial(config, data, Path(out) / "train", epoch_done)
    except (MemoryError, tf.errors.ResourceExhaustedError) as err:
        cap = f"its cap of {memory_mib:,} MiB (--memory-per-trial)" if memory_mib else "the machine's memory"
        # TensorFlow's message starts with the graph node; the allocation that failed is the useful part.
        found = re.search(r"OOM when allocating tensor with shape\[[^\]]*\]", str(err))
        detail = found.group(0) if found else (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise TrialOutOfMemory(f"the trial ran out of memory: this configuration needs more than {cap} ({detail})"
                               ) from None
