"""The launching side of training: the MLflow run a training step launches its Horovod job in, continued after a
failure instead of started anew when the inputs are the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from kuberec import tracking
from kuberec.lake.delta import TableRef
from kuberec.model_config import ModelConfig, config_to_args
from kuberec.settings import Settings
from kuberec.training.worker import CHECKPOINT_DIR, RESULT_FILE

log = logging.getLogger(__name__)

# A pipeline step that trains records its inputs' fingerprint and its output directory as tags of the run it
# creates. Rerun with the same inputs after a failure (a killed rank, a lost MLflow server), it finds that run and
# continues it, in the same run and directory, from the last checkpoint; a run that finished is never reused.

FINGERPRINT_TAG = "kuberec.train.fingerprint"
TRAIN_DIR_TAG = "kuberec.train.dir"


def fingerprint(run_name: str, params: Mapping[str, Any], lineage: Mapping[str, int]) -> str:
    """What identifies a training step's work: its name, params (config, workers, ...) and the data versions."""
    text = json.dumps({"run": run_name, "params": params, "lineage": lineage}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def interrupted_run(settings: Settings, experiment: str, run_name: str, key: str) -> tuple[str, Path] | None:
    """(run id, output directory) of the latest FAILED run of this step with fingerprint `key` whose directory
    still holds checkpoints and no finished result, or None."""
    runs = tracking.client(settings).search_runs(
        [tracking.experiment_id(experiment)],
        filter_string=(f"tags.`{FINGERPRINT_TAG}` = '{key}' and attributes.run_name = '{run_name}' "
                       f"and attributes.status = 'FAILED'"),
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs or TRAIN_DIR_TAG not in runs[0].data.tags:
        return None
    out_dir = Path(runs[0].data.tags[TRAIN_DIR_TAG])
    checkpoints = out_dir / CHECKPOINT_DIR
    if not checkpoints.is_dir() or not any(checkpoints.iterdir()) or (out_dir / RESULT_FILE).is_file():
        return None  # nothing to resume here (another machine's disk, or no epoch was checkpointed)
    return runs[0].info.run_id, out_dir


@contextlib.contextmanager
def training_run(settings: Settings, experiment: str, *, run_name: str, params: Mapping[str, Any],
                 lineage: Mapping[str, int], tags: Mapping[str, str] | None = None,
                 train_dir: Callable[[str], Path] | None = None) -> Iterator[tuple[str, Path | None, bool]]:
    """The MLflow run a training step launches its job in: (run id, output directory, resume).

    With `train_dir` (run id -> output directory), the latest FAILED run of the same step with the same inputs
    whose directory still holds checkpoints is continued (resume True, logged); otherwise a new run is created.
    Without it (the caller chose the directory) the run is always new and the directory is None. The run ends
    FINISHED, or FAILED when the block raises.
    """
    key = fingerprint(run_name, params, lineage)
    found = interrupted_run(settings, experiment, run_name, key) if train_dir is not None else None
    if found is None:
        run_id = tracking.create_run(settings, experiment, run_name=run_name, lineage=lineage, params=params,
                                     tags={**(tags or {}), FINGERPRINT_TAG: key})
        out_dir = train_dir(run_id) if train_dir is not None else None
        if out_dir is not None:
            tracking.client(settings).set_tag(run_id, TRAIN_DIR_TAG, str(out_dir))
    else:
        run_id, out_dir = found
        log.info("%s: continuing run %s, which did not finish, from its checkpoints in %s", run_name, run_id,
                 out_dir)
        tracking.client(settings).update_run(run_id, status="RUNNING")
    try:
        yield run_id, out_dir, found is not None
    except BaseException:
        tracking.end_run(settings, run_id, failed=True)
        raise
    tracking.end_run(settings, run_id)


def default_train_dir(settings: Settings, model: str, run_id: str) -> Path:
    """Where the training job of `model`'s run `run_id` writes when the step is not told (on the machine or pod of
    its rank 0: `backends.job_home`), and so where a rerun after a failure finds its checkpoints."""
    from kuberec.backends import job_home

    return job_home(settings) / "runs" / f"{model}-{run_id}"


def launch_training(settings: Settings, model: str, module: str, table: TableRef, config: ModelConfig, *,
                    experiment: str, params: Mapping[str, Any], lineage: Mapping[str, int], workers: int = 1,
                    sweep_run_id: str | None = None, out_dir: Path | None = None, resume: bool = False,
                    extra_args: Sequence[str] = ()) -> str:
    """Every model's train step: `python -m <module>` as a Horovod job of `workers` processes (through the
    settings' backend) in a new MLflow run of `experiment`, or in the failed run it continues; returns the run id.

    The run holds `params`, the `lineage` it reads and the sweep that chose the config before the job starts, and
    ends FAILED when the job fails. The module takes `--table --version --out --mlflow-run-id [--resume]` and the
    config's flags, plus `extra_args`. Without `out_dir` the job writes in `default_train_dir`, which a rerun with
    the same inputs after a failure continues from its last checkpoint; `resume` continues the run in `out_dir`.
    """
    from kuberec.backends import HorovodJob, get_backend

    run_name = f"train-{model}"
    train_dir = None if out_dir else (lambda run_id: default_train_dir(settings, model, run_id))
    with training_run(settings, experiment, run_name=run_name, lineage=lineage, params=params,
                      tags=tracking.sweep_tags(sweep_run_id), train_dir=train_dir) as (run_id, run_dir, resumed):
        args = ["--table", table.uri, "--version", str(table.version), "--out", str(out_dir or run_dir),
                "--mlflow-run-id", run_id, *config_to_args(config), *extra_args]
        args += ["--resume"] if resume or resumed else []
        get_backend(settings).run_horovod(HorovodJob(run_name, module, tuple(args), workers=workers))
    log.info("%s: MLflow run %s", run_name, run_id)
    return run_id
