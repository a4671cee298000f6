"""Training steps that fail and are run again: which earlier run a rerun continues (and which it never reuses), and
a Horovod rank SIGKILLed mid-epoch in the similarity train step (2 workers under horovodrun, the local backend): the
job fails within seconds naming the rank, and the same step run again continues the same MLflow run from epoch 1's
checkpoint. The wide & deep case and its timings: benchmarks/training_faults.py."""

from __future__ import annotations

import contextlib
import math
import os

import pytest

from kuberec import tracking
from kuberec.datasets import fashion_mnist as fm
from kuberec.training.launch import training_run
from kuberec.training.worker import CHECKPOINT_DIR, RESULT_FILE
from tests.scenarios.training_faults import run_scenario

pytestmark = pytest.mark.slow

EXPERIMENT = "test-training-faults"
# Tiny (the point is the fault, not the model); epochs of a few seconds so the kill lands inside epoch 2.
CONFIG = {"architecture": "vgg", "classes_per_batch": 5, "examples_per_class": 4, "steps_per_epoch": 8, "epochs": 3,
          "lr_schedule": "constant"}


def _step(settings, params: dict, lineage: dict | None = None, *, fail: bool = False, checkpoint: bool = True,
          finish: bool = False) -> tuple[str, bool]:
    """One pass of a training step through `training_run`: (run id, resumed); the job's work faked by files."""
    def train_dir(run_id: str):
        return settings.home / "runs" / run_id

    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext():
        with training_run(settings, EXPERIMENT, run_name="train-test", params=params,
                          lineage=lineage or {"/lake/t": 1}, train_dir=train_dir) as (run_id, out_dir, resumed):
            assert out_dir == train_dir(run_id)
            if checkpoint:
                (out_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
                (out_dir / CHECKPOINT_DIR / "ckpt-1.index").write_text("")
            if finish:
                (out_dir / RESULT_FILE).write_text("{}")
            if fail:
                raise RuntimeError("the job failed")
    return run_id, resumed


def test_a_rerun_continues_only_a_failed_run_with_the_same_inputs_and_checkpoints(tracked_settings):
    client = tracking.client(tracked_settings)
    params = {"epochs": 3, "workers": 2}
    failed, resumed = _step(tracked_settings, params, fail=True)
    assert not resumed and client.get_run(failed).info.status == "FAILED"

    # Other inputs (a param, a data version): a new run, the failed one stays as it is.
    other, resumed = _step(tracked_settings, {**params, "epochs": 4}, checkpoint=False)
    assert other != failed and not resumed
    other, resumed = _step(tracked_settings, params, {"/lake/t": 2}, checkpoint=False)
    assert other != failed and not resumed

    # The same inputs: the failed run is continued, and ends FINISHED.
    again, resumed = _step(tracked_settings, params, finish=True)
    assert again == failed and resumed and client.get_run(failed).info.status == "FINISHED"
    # A finished run is never reused: the next rerun trains anew.
    new, resumed = _step(tracked_settings, params, checkpoint=False, fail=True)
    assert new != failed and not resumed
    # A failed run with no checkpoint (it died before epoch 1 ended) leaves nothing to continue either.
    newer, resumed = _step(tracked_settings, params, checkpoint=False)
    assert newer not in (failed, new) and not resumed


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory) -> str:
    from kuberec.ingest.fashion_mnist import ingest_fashion_mnist

    uri = str(tmp_path_factory.mktemp("faults-lake") / "fashion_mnist")
    ingest_fashion_mnist(spark, str(fm.DEBIAN_DIR), uri, 300)
    return uri


@pytest.mark.faults
def test_a_killed_rank_fails_the_step_fast_and_the_rerun_resumes_from_its_checkpoint(lake, tracked_settings,
                                                                                      tmp_path):
    from kuberec.similarity.model import load_embedding_model

    home = tracked_settings.home
    scenario = run_scenario("similarity", lake, 0, CONFIG, dict(os.environ), home, tmp_path, rank=1)
    print(scenario)
    kill = scenario.kill
    # horovodrun stops the other worker and the step fails with one line that names the dead rank.
    assert kill.exit_status == 2 and kill.seconds_to_exit < 60 and not kill.leftover_ranks
    assert "Horovod worker rank 1 was the first to exit (killed by SIGKILL)" in kill.error_line, kill.error_line

    # The rerun continued the same run from epoch 1's checkpoint, and the run has one loss per epoch.
    assert scenario.same_run and scenario.status == "FINISHED"
    assert "continuing run" in scenario.resume_line and "(epoch 1 of 3)" in scenario.resume_line
    assert scenario.resumed_from_epoch == 1 and scenario.history_epochs == [1, 2, 3]
    assert scenario.loss_steps == [1, 2, 3] and all(math.isfinite(v) and v > 0 for v in scenario.losses)
    model = load_embedding_model(home / "runs" / f"similarity-{scenario.run_id}" / "model")
    assert model.metadata["epochs_trained"] == 3
