"""The Ray driver of a sweep: Ray Tune + Optuna TPE + ASHA, trials logged as MLflow child runs.

    python -m kuberec.tuning.sweep --model similarity --table URI --version V --name NAME --parent-run-id ID \\
        [--trials N] [--concurrent C] [--cpus-per-trial K] [--memory-per-trial MIB] [--time-budget S] [--seed S] \\
        [--max-examples N] \\
        [--space JSON] [--metric NAME] [--initial-point JSON ...] [--storage DIR] [--resume [--retry-failed]]

`kuberec.tuning.steps` creates the parent run and launches this module through the backend: a child process here
(Ray started with `num_cpus = concurrent x cpus-per-trial`, no dashboard), or the driver of a KubeRay RayJob, which
joins the job's Ray cluster (RAY_ADDRESS). The experiment lives in <storage>/<name> (default <home>/tuning); an
interrupted sweep (Ctrl-C, SIGTERM from a pod deletion, a lost driver) resumes from there with `--resume` (the same
arguments): finished trials are kept, trials that were running start again, failed ones stay failed unless
`--retry-failed`. Exit status 2 with a message when the sweep was interrupted, or no trial produced its metric.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from kuberec import tracking
from kuberec.entrypoint import run_program
from kuberec.errors import KuberecError
from kuberec.lake.delta import TableRef
from kuberec.models import MODELS, model_record
from kuberec.settings import Settings, load_settings
from kuberec.tuning.space import SearchSpace, SpaceError, parse_space

log = logging.getLogger("kuberec.tuning.sweep")

OBJECT_STORE_BYTES = 512 * 1024 ** 2  # the sweep's data (at most the train split's pixels) plus headroom
ASHA_REDUCTION_FACTOR = 3  # keep the best third at each rung
# Tune's experiment checkpoint period: a driver killed without warning loses at most this much bookkeeping.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "10")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from sweeps
# For the trial workers. A reused worker waits for the previous trial's thread to unwind (a wide & deep trial
# stopped by ASHA closes its Petastorm reader first, which can take longer than Tune's default of 2 s); a reuse
# that times out fails the next trial and leaves the search waiting for a slot that never frees.
WORKER_ENV = {"TUNE_FUNCTION_THREAD_TIMEOUT_S": "120"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name: str) -> str:
    """A sweep's name: it is also the name of its experiment directory."""
    if not NAME_PATTERN.match(name):
        raise KuberecError(f"sweep name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)")
    return name


class SweepInterrupted(KuberecError):
    """The sweep stopped before all of its trials ran (a signal, a lost driver); it can be resumed."""


class SweepFailed(KuberecError):
    """No trial of the sweep reported the metric it optimises."""


@dataclass(frozen=True)
class SweepOptions:
    """The driver's options (its command line; see the module docstring)."""

    model: str
    table: str
    version: int
    name: str
    parent_run_id: str
    trials: int = 10
    concurrent: int = 2
    cpus_per_trial: int = 1
    memory_per_trial: int | None = None  # MiB a trial's process may allocate (kuberec.tuning.trials); None: no cap
    time_budget: float | None = None
    seed: int = 0
    max_examples: int | None = None
    space: str | None = None  # JSON, merged over the model's default space
    metric: str | None = None
    initial_point: tuple[str, ...] = ()  # JSON objects
    max_failures: int = 0
    storage: str | None = None
    resume: bool = False
    retry_failed: bool = False

    def __post_init__(self) -> None:
        for name in ("trials", "concurrent", "cpus_per_trial", "memory_per_trial"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SpaceError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")


@dataclass(frozen=True)
class Outcome:
    """What the driver logs on the parent run at the end of a sweep."""

    best_trial_id: str
    best_config: dict[str, Any]
    best_metric: float
    finished: int  # reported at least one epoch and did not fail
    failed: int
    stopped_early: int  # of the finished: stopped before their last epoch (ASHA, or the time budget)


def experiment_dir(storage: Path, name: str) -> Path:
    return storage / check_name(name)


def init_ray(num_cpus: int) -> None:
    """Join the RayJob's cluster when there is one (RAY_ADDRESS), else start Ray in this machine's process tree."""
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"env_vars": WORKER_ENV}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env, log_to_driver=True)
        return
    ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
             runtime_env=runtime_env, log_to_driver=True)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a pod being deleted, `kill`) stops the sweep the way Ctrl-C does: Tune saves its state first."""
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGUSR1))


def _trainable(model: str, data: Any, cpus: int, memory_mib: int | None):
    from ray import tune

    from kuberec.tuning.trials import run_trial

    return tune.with_resources(tune.with_parameters(run_trial, model=model, data=data, cpus=cpus,
                                                    memory_mib=memory_mib), {"cpu": cpus})


def _new_tuner(options: SweepOptions, space: SearchSpace, trainable, storage: Path, metric: str, mode: str,
               points: list[dict[str, Any]], settings: Settings):
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from kuberec.tuning.runs import TrialRuns

    record = model_record(space.model)
    search = OptunaSearch(points_to_evaluate=points or None, sampler=TPESampler(seed=options.seed))
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=space.epochs, grace_period=1,
                              reduction_factor=ASHA_REDUCTION_FACTOR)
    return tune.Tuner(
        trainable, param_space=space.param_space(),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, search_alg=search, scheduler=scheduler,
                                    num_samples=options.trials, max_concurrent_trials=options.concurrent,
                                    time_budget_s=options.time_budget,
                                    reuse_actors=True),  # a reused worker does not import TensorFlow again
        run_config=tune.RunConfig(
            name=options.name, storage_path=str(storage), verbose=1,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            callbacks=[TrialRuns(settings, options.parent_run_id, options.name, space.epochs, record.tuning.metrics)]))


def summarize(results, metric: str, mode: str, epochs: int) -> Outcome:
    """Counts and the best trial (by its last reported `metric`) of a finished sweep's ResultGrid."""
    failed = results.num_errors
    # A trial that the time budget stopped before its first report counts as neither finished nor failed.
    epochs_done = [r.metrics.get("training_iteration", 0) for r in results if r.error is None and r.metrics]
    finished = sum(1 for done in epochs_done if done >= 1)
    stopped_early = sum(1 for done in epochs_done if 1 <= done < epochs)
    try:
        best = results.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=True)
    except RuntimeError:  # no trial has a finite value of the metric
        best = None
    if best is None or best.error is not None or metric not in (best.metrics or {}):
        raise SweepFailed(f"no trial reported {metric}: {len(results)} trials, {failed} failed (their MLflow runs "
                          f"hold the errors)")
    return Outcome(best_trial_id=best.metrics["trial_id"], best_config=dict(best.config),
                   best_metric=float(best.metrics[metric]), finished=finished, failed=failed,
                   stopped_early=stopped_early)


def record_outcome(settings: Settings, parent_run_id: str, space: SearchSpace, metric: str, outcome: Outcome) -> str:
    """Tag the best trial's child run and log the best config on the parent; returns the best child run id."""
    from mlflow.entities import Metric, Param

    from kuberec.tuning import runs

    child = runs.child_run(settings, parent_run_id, outcome.best_trial_id)
    if child is None:
        raise SweepFailed(f"the best trial {outcome.best_trial_id} has no MLflow run under {parent_run_id}")
    mlflow_client = tracking.client(settings)
    mlflow_client.set_tag(child.info.run_id, runs.BEST_TAG, "true")
    config = space.config(outcome.best_config).to_dict()
    now = int(time.time() * 1000)
    counts = {"finished": outcome.finished, "failed": outcome.failed, "stopped_early": outcome.stopped_early}
    mlflow_client.log_batch(
        parent_run_id,
        metrics=[Metric(f"best_{metric}", outcome.best_metric, now, 0),
                 *(Metric(f"trials_{key}", float(value), now, 0) for key, value in counts.items())],
        params=[Param(f"best.{name}", str(config[name])) for name in space.dimensions])
    mlflow_client.log_dict(parent_run_id, config, runs.BEST_CONFIG_FILE)
    mlflow_client.set_tag(parent_run_id, runs.BEST_RUN_TAG, child.info.run_id)
    return child.info.run_id


def sweep(options: SweepOptions) -> Outcome:
    from ray import tune

    from kuberec.tuning import runs

    settings = load_settings()
    record = model_record(options.model)
    metric = options.metric or record.tuning.default_metric
    mode = record.metric_mode(metric)
    space = parse_space(options.model, json.loads(options.space) if options.space else None)
    points = [space.check_point(json.loads(point)) for point in options.initial_point]
    storage = Path(options.storage).absolute() if options.storage else settings.home / "tuning"
    exp_dir = experiment_dir(storage, options.name)
    if options.resume and not (exp_dir / "tuner.pkl").is_file():
        raise SweepFailed(f"no sweep to resume in {exp_dir}: sweeps are stored where their driver ran (in a "
                          f"cluster: give <home> a persistent volume)")
    if not options.resume and exp_dir.exists():
        raise SweepFailed(f"{exp_dir} already holds a sweep named {options.name!r}; resume it with --resume or choose "
                          f"another name")

    data = record.load_tuning_data(TableRef(options.table, options.version), max_examples=options.max_examples,
                                   seed=options.seed)
    init_ray(options.concurrent * options.cpus_per_trial)
    trainable = _trainable(options.model, data, options.cpus_per_trial, options.memory_per_trial)
    if options.resume:
        log.info("resuming sweep %s from %s", options.name, exp_dir)
        tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=options.retry_failed)
    else:
        tuner = _new_tuner(options, space, trainable, storage, metric, mode, points, settings)
    _interrupt_on_sigterm()
    started = time.monotonic()
    results = tuner.fit()
    elapsed = time.monotonic() - started

    unfinished = len(results) - results.num_terminated - results.num_errors  # pending or running when stopped
    # The time budget ends a sweep early on purpose; anything else that leaves trials undone is an interruption.
    out_of_time = options.time_budget is not None and elapsed >= options.time_budget
    if not out_of_time and (unfinished or len(results) < options.trials):
        killed = runs.kill_running_children(settings, options.parent_run_id)
        tracking.client(settings).set_tag(options.parent_run_id, runs.STATE_TAG, "interrupted")
        raise SweepInterrupted(f"sweep {options.name} was interrupted with {len(results) - unfinished} of "
                               f"{options.trials} trials done ({killed} were running); resume it with "
                               f"`kuberec tune {options.model} --name {options.name} --resume`")
    outcome = summarize(results, metric, mode, space.epochs)
    best_run = record_outcome(settings, options.parent_run_id, space, metric, outcome)
    tracking.client(settings).set_tag(options.parent_run_id, runs.STATE_TAG, "finished")
    log.info("sweep %s: best %s %.4f (trial %s, MLflow run %s); %d finished (%d stopped early), %d failed in %.0f s",
             options.name, metric, outcome.best_metric, outcome.best_trial_id, best_run, outcome.finished,
             outcome.stopped_early, outcome.failed, elapsed)
    return outcome


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kuberec.tuning.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=tuple(MODELS))
    parser.add_argument("--table", required=True, help="Delta table the trials read (similarity: Fashion-MNIST "
                                                       "format; widedeep: the gold examples)")
    parser.add_argument("--version", type=int, required=True, help="its Delta version (every trial reads it)")
    parser.add_argument("--name", required=True, type=check_name, help="the sweep's name (its directory)")
    parser.add_argument("--parent-run-id", required=True, help="the sweep's MLflow parent run")
    parser.add_argument("--trials", type=int, default=10, help="number of trials (default 10)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at a time (default 2)")
    parser.add_argument("--cpus-per-trial", type=int, default=1, help="CPU cores per trial (default 1)")
    parser.add_argument("--memory-per-trial", type=int, default=None,
                        help="MiB a trial's process may allocate; a trial needing more fails (default: no cap)")
    parser.add_argument("--time-budget", type=float, default=None, help="stop starting trials after this many "
                                                                        "seconds; running ones are stopped too")
    parser.add_argument("--seed", type=int, default=0, help="seeds the search and the data split (default 0)")
    parser.add_argument("--max-examples", type=int, default=None, help="similarity: use at most this many images")
    parser.add_argument("--space", default=None, help="search space JSON merged over the model's default space")
    parser.add_argument("--metric", default=None, help="validation metric to optimise (default: the model's)")
    parser.add_argument("--initial-point", action="append", default=[],
                        help="a JSON object of dimension values to evaluate first (repeatable)")
    parser.add_argument("--max-failures", type=int, default=0, help="retries of a failing trial (default 0)")
    parser.add_argument("--storage", default=None, help="where experiments live (default <home>/tuning)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep --name")
    parser.add_argument("--retry-failed", action="store_true", help="with --resume: run failed trials again")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Ray's progress tables and the trials' output are progress, not results: keep the launcher's stdout clean
    # (`kuberec tune ... --json` prints only the result there).
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sweep(SweepOptions(**{field.name: getattr(args, field.name) for field in fields(SweepOptions)}))
    return 0


if __name__ == "__main__":
    run_program("kuberec.tuning.sweep", main)
