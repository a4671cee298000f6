"""A sweep trial that needs more memory than its cap (`--memory-per-trial`): that trial fails with an out-of-memory
message, the others finish, and the sweep reports the best of those. Real Ray Tune, real TensorFlow allocations
against a real RLIMIT_DATA, the session's real MLflow server."""

from __future__ import annotations

import pytest

from kuberec import tracking
from kuberec.tuning import runs, steps

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 400  # as tests/tuning/test_sweeps.py: tiny trials of seconds each
CAP_MIB = 3072  # a Ray worker holds ~470 MiB (VmData) once TensorFlow is loaded; a tiny trial fits well below this
HUGE_EMBEDDING = 200_000  # the seed network's last layer: 5,408 x 200,000 float32 weights = 4.3 GB, past the cap
SPACE = {"epochs": 2, "architecture": "seed", "examples_per_class": 4, "steps_per_epoch": 4,
         "learning_rate": 0.003, "classes_per_batch": {"int": [4, 10]},
         "embedding_size": {"choice": [32, HUGE_EMBEDDING]}}
TOO_BIG = {"classes_per_batch": 5, "embedding_size": HUGE_EMBEDDING}
FITS = {"classes_per_batch": 10, "embedding_size": 32}


def test_a_trial_past_its_memory_cap_fails_and_the_sweep_goes_on(tracked_settings, fashion_mnist):
    settings = tracked_settings
    result = steps.tune(settings, "similarity", fashion_mnist, trials=3, concurrent=2, max_examples=MAX_EXAMPLES,
                        seed=1, space=SPACE, initial_points=[TOO_BIG, FITS], memory_per_trial_mib=CAP_MIB,
                        name="memory-cap")
    assert result.trials_failed >= 1 and result.trials_finished >= 1
    assert result.trials_failed + result.trials_finished == 3

    parent = tracking.client(settings).get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["memory_per_trial"] == str(CAP_MIB)
    children = runs.child_runs(settings, result.parent_run_id)
    failed = [c for c in children if c.info.status == "FAILED"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(failed) == result.trials_failed and len(finished) == result.trials_finished
    for child in failed:  # only the configurations that cannot fit failed, and they say why
        assert child.data.params["embedding_size"] == str(HUGE_EMBEDDING)
        error = child.data.tags[runs.ERROR_TAG]
        assert "TrialOutOfMemory" in error and "ran out of memory" in error, error
        assert f"cap of {CAP_MIB:,} MiB" in error and "--memory-per-trial" in error, error
    assert all(c.data.params["embedding_size"] == "32" for c in finished)
    assert result.best_config["embedding_size"] == 32
    assert result.best_metric == pytest.approx(max(c.data.metrics["precision_at_5"] for c in finished))
