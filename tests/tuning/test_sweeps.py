"""Real sweeps: Ray Tune (Optuna TPE + ASHA) in a child process launched by the step through the local backend,
trials training with the pipeline's own functions on real Delta tables, logged to the session's real MLflow server."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any, Callable

import pytest

from kuberec import tracking
from kuberec.backends import JobFailed
from kuberec.cli import main as kuberec_main
from kuberec.errors import KuberecError
from kuberec.lake.delta import TableRef
from kuberec.similarity.config import SimilarityConfig
from kuberec.tuning import runs, steps
from kuberec.tuning.space import SpaceError
from kuberec.widedeep.config import WideDeepConfig

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 400  # similarity: 360 train images + 40 held-out validation queries
# Tiny trials (seconds each): the tests check the sweep's behaviour, benchmarks/tuning_bench.py its value.
SIMILARITY_SPACE = {"epochs": 2, "architecture": "seed", "embedding_size": 32, "examples_per_class": 4,
                    "steps_per_epoch": 4, "classes_per_batch": {"int": [4, 10]},
                    "learning_rate": {"choice": [0.003, 1e30]}}
DIVERGES = {"classes_per_batch": 5, "learning_rate": 1e30}  # Adam steps of 1e30: NaN loss in the first epoch
CONVERGES = {"classes_per_batch": 10, "learning_rate": 0.003}
WIDEDEEP_SPACE = {"epochs": 2, "steps_per_epoch": 10, "batch_size": 128, "shuffle_buffer": 512,
                  "hidden_units": {"choice": [16, 32]},
                  "hidden_layers": {"int": [1, 2]}}


def wait_for(condition: Callable[[], Any], timeout: float = 240.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def metric_steps(settings, run_id: str, key: str) -> list[int]:
    return [m.step for m in tracking.client(settings).get_metric_history(run_id, key)]


def sweep_runs(settings) -> int:
    experiment = tracking.client(settings).get_experiment_by_name(runs.EXPERIMENT)
    return len(tracking.client(settings).search_runs([experiment.experiment_id])) if experiment else 0


def test_bad_requests_fail_before_any_run(tracked_settings, fashion_mnist, capsys):
    existing = sweep_runs(tracked_settings)  # the MLflow server is the session's
    bad_space = json.dumps({"learning_rate": {"loguniform": [1e-2, 1e-4]}})
    assert kuberec_main(["tune", "similarity", "--table", fashion_mnist.uri, "--space", bad_space]) == 2
    error = capsys.readouterr().err.strip()
    assert "empty range [0.01, 0.0001]" in error and len(error.splitlines()) == 1
    with pytest.raises(KuberecError, match="steps_per_epoch"):
        steps.tune(tracked_settings, "widedeep", TableRef("/nowhere", 0), max_examples=100)
    with pytest.raises(SpaceError, match="missing: classes_per_batch"):
        steps.tune(tracked_settings, "similarity", TableRef("/nowhere", 0), space=SIMILARITY_SPACE,
                   initial_points=[{"learning_rate": 0.003}])
    assert sweep_runs(tracked_settings) == existing


def test_similarity_sweep_logs_trials_under_one_parent_and_survives_a_failing_trial(tracked_settings, fashion_mnist,
                                                                                    capfd):
    settings, table = tracked_settings, fashion_mnist
    code = kuberec_main(["tune", "similarity", "--table", table.uri, "--version", str(table.version),
                         "--trials", "3", "--concurrent", "2", "--max-examples", str(MAX_EXAMPLES), "--seed", "1",
                         "--space", json.dumps(SIMILARITY_SPACE), "--initial-point", json.dumps(DIVERGES),
                         "--initial-point", json.dumps(CONVERGES), "--name", "sim", "--json"])
    assert code == 0
    result = json.loads(capfd.readouterr().out)  # the driver's progress went to stderr
    assert result["trials_failed"] >= 1 and result["trials_finished"] >= 1  # the diverging point did not stop it
    assert result["trials_failed"] + result["trials_finished"] == 3
    assert result["metric"] == "precision_at_5" and result["mode"] == "max"

    parent = tracking.client(settings).get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags[runs.STATE_TAG] == "finished"
    assert parent.data.tags["kuberec.lineage.fashion_mnist"] == f"{table.uri}@v{table.version}"
    assert parent.data.params["trials"] == "3" and parent.data.params["max_examples"] == str(MAX_EXAMPLES)

    children = runs.child_runs(settings, parent.info.run_id)
    assert len(children) == 3 and len({c.data.tags[runs.TRIAL_TAG] for c in children}) == 3
    assert all(c.data.tags[runs.PARENT_TAG] == parent.info.run_id for c in children)
    failed = [c for c in children if c.info.status == "FAILED"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(failed) == result["trials_failed"] and len(finished) == result["trials_finished"]
    for child in failed:
        assert float(child.data.params["learning_rate"]) == 1e30
        assert "TrialDiverged" in child.data.tags[runs.ERROR_TAG]
    for child in finished:
        assert child.data.params["architecture"] == "seed" and child.data.params["epochs"] == "2"
        epochs = metric_steps(settings, child.info.run_id, "precision_at_5")
        assert epochs in ([1], [1, 2])  # one value per epoch; [1] when ASHA stopped the trial
        assert child.data.tags[runs.STOPPED_EARLY_TAG] == str(epochs == [1]).lower()

    # The best trial: tagged, linked from the parent, its config logged there (params and best_config.json).
    best = [c for c in children if c.data.tags.get(runs.BEST_TAG) == "true"]
    assert [c.info.run_id for c in best] == [result["best_run_id"]] == [parent.data.tags[runs.BEST_RUN_TAG]]
    assert result["best_metric"] == pytest.approx(max(c.data.metrics["precision_at_5"] for c in finished))
    assert result["best_metric"] == pytest.approx(parent.data.metrics["best_precision_at_5"])
    config = SimilarityConfig.from_dict(result["best_config"])
    assert config.epochs == 2 and config.seed == 1 and config.learning_rate == 0.003
    assert config.classes_per_batch == int(best[0].data.params["classes_per_batch"])
    assert parent.data.params["best.classes_per_batch"] == str(config.classes_per_batch)
    assert steps.read_result(settings, parent.info.run_id).best_config == result["best_config"]

    # Names are unique: the same name again is refused before anything runs.
    with pytest.raises(KuberecError, match="already exists"):
        steps.tune(settings, "similarity", table, name="sim", space=SIMILARITY_SPACE)


def sweep_drivers() -> list:
    """This test process's `python -m kuberec.tuning.sweep` descendants."""
    import psutil

    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "kuberec.tuning.sweep" in process.cmdline():
                found.append(process)
        except psutil.Error:  # exited (or a zombie) meanwhile
            continue
    return found


def test_interrupted_sweep_resumes_without_repeating_finished_trials(tracked_settings, fashion_mnist):
    settings, name, trials = tracked_settings, "resumable", 6
    space = {**SIMILARITY_SPACE, "epochs": 3, "steps_per_epoch": 60, "learning_rate": {"loguniform": [1e-3, 1e-2]}}
    outcome: dict[str, Any] = {}

    def sweep() -> None:
        try:
            outcome["result"] = steps.tune(settings, "similarity", fashion_mnist, trials=trials, concurrent=2,
                                           max_examples=MAX_EXAMPLES, space=space, name=name)
        except BaseException as err:  # noqa: BLE001  (handed to the test thread)
            outcome["error"] = err

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    try:
        parent = wait_for(lambda: runs.find_sweep(settings, name), what="the parent run")
        wait_for(lambda: any(c.info.status == "FINISHED" for c in runs.child_runs(settings, parent.info.run_id)),
                 what="a finished trial")
        driver = sweep_drivers()
        assert len(driver) == 1
        driver[0].send_signal(signal.SIGTERM)  # what a pod deletion or `kill` sends: Tune saves its state and stops
        thread.join(timeout=180)
    finally:  # a failed assertion must not leave a sweep running against the session's MLflow server
        for process in sweep_drivers():
            process.kill()
    assert isinstance(outcome.get("error"), JobFailed), outcome

    parent = tracking.client(settings).get_run(parent.info.run_id)
    assert parent.info.status == "KILLED" and parent.data.tags[runs.STATE_TAG] == "interrupted"
    before = {c.data.tags[runs.TRIAL_TAG]: c for c in runs.child_runs(settings, parent.info.run_id)}
    done = {trial: c for trial, c in before.items() if c.info.status == "FINISHED"}
    assert done and len(before) < trials or any(c.info.status == "KILLED" for c in before.values())
    assert not any(c.info.status == "RUNNING" for c in before.values())
    history = {trial: metric_steps(settings, c.info.run_id, "precision_at_5") for trial, c in done.items()}

    result = steps.resume(settings, name, model="similarity")
    assert result.parent_run_id == parent.info.run_id
    assert result.trials_finished + result.trials_failed == trials
    after = {c.data.tags[runs.TRIAL_TAG]: c for c in runs.child_runs(settings, parent.info.run_id)}
    assert len(after) == trials  # one run per trial: restarted trials kept theirs
    for trial, child in done.items():  # finished trials were not run again
        assert after[trial].info.run_id == child.info.run_id and after[trial].info.end_time == child.info.end_time
        assert metric_steps(settings, child.info.run_id, "precision_at_5") == history[trial]
    assert all(c.info.status == "FINISHED" for c in after.values())
    parent = tracking.client(settings).get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[runs.STATE_TAG] == "finished"


def test_widedeep_sweep_minimises_validation_log_loss(tracked_settings, examples):
    result = steps.tune(tracked_settings, "widedeep", examples, trials=3, concurrent=2, space=WIDEDEEP_SPACE,
                        metric="log_loss", name="wd")
    assert result.metric == "log_loss" and result.mode == "min"
    assert result.trials_finished == 3 and result.trials_failed == 0
    parent = tracking.client(tracked_settings).get_run(result.parent_run_id)
    lineage = tracking.parse_lineage(parent.data.tags)
    assert lineage["instacart_gold_examples"] == (examples.uri, examples.version)
    assert {"instacart_gold_user_features", "instacart_gold_product_features"} <= set(lineage)
    children = runs.child_runs(tracked_settings, result.parent_run_id)
    assert len(children) == 3
    for child in children:
        assert set(child.data.metrics) >= {"auc", "log_loss", "map_at_10", "loss"}
        assert 0 < child.data.metrics["auc"] <= 1
    assert result.best_metric == pytest.approx(min(c.data.metrics["log_loss"] for c in children))
    config = result.config()
    assert isinstance(config, WideDeepConfig) and config.epochs == 2 and config.hidden_units in (16, 32)
    assert config.batch_size == 128 and config.steps_per_epoch == 10
