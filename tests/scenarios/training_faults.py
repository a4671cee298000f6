"""A Horovod rank SIGKILLed in the middle of a training step, then the step run again: the scenario
tests/test_training_faults.py checks and benchmarks/training_faults.py times (with the wide & deep model and the
MLflow faults too).

The pipeline's train step (`<model>.steps.train`, under horovodrun, the local backend) runs in a process of its own
(this file as a script); once epoch 1's checkpoint exists, one rank (found among the step's descendants by its
HOROVOD_RANK) gets SIGKILL. Measured: seconds from the kill to the step's exit and its error line. Then the same step
runs again and must continue the same MLflow run from the checkpoint.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


# -- the step, in a process of its own -----------------------------------------------------------------------------

def step_main(argv: list[str]) -> int:
    """`training_faults.py step <model> <table-uri> <version> <config-json> <workers>`: the train step, as a
    pipeline component calls it; prints `run <id>`."""
    import logging

    from kuberec.entrypoint import exit_status

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [step] %(name)s: %(message)s")
    model, table_uri, version, config_json, workers = argv

    def train() -> None:
        import importlib

        from kuberec.lake.delta import TableRef
        from kuberec.models import model_record
        from kuberec.settings import load_settings

        # Every model's train step has the same signature (docs/architecture.md, "The template").
        steps = importlib.import_module(f"kuberec.{model}.steps")
        config = model_record(model).config_class.from_dict(json.loads(config_json))
        run_id = steps.train(load_settings(), TableRef(table_uri, int(version)), config, workers=int(workers))
        print(f"run {run_id}", flush=True)

    return exit_status("training_faults step", train)


def start_step(model: str, table_uri: str, version: int, config: dict, workers: int, env: dict[str, str],
               log_path: Path) -> subprocess.Popen:
    log = open(log_path, "w")  # noqa: SIM115 (the process writes it until it exits)
    command = [sys.executable, str(Path(__file__).resolve()), "step", model, table_uri, str(version),
               json.dumps(config), str(workers)]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                            start_new_session=True)


# -- finding and killing a rank ------------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rank_pids(pid: int) -> dict[int, int]:
    """Horovod rank -> pid among `pid`'s descendants (the worker processes horovodrun started)."""
    ranks = {}
    for child in descendants(pid):
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        rank = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"HOROVOD_RANK=")]
        if rank and b"-m\0kuberec." in cmdline:  # the Python worker, not the shell around it
            ranks[int(rank[0])] = child
    return ranks


def wait_for(pattern: str, process: subprocess.Popen, timeout: float, ignore: frozenset[str] = frozenset()) -> str:
    """The first path matching `pattern` (other than those in `ignore`) once one exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = sorted(set(glob.glob(pattern)) - ignore)
        if hits:
            return hits[0]
        if process.poll() is not None:
            raise RuntimeError(f"the step exited ({process.returncode}) before {pattern} appeared")
        time.sleep(0.1)
    raise TimeoutError(f"{pattern} did not appear within {timeout:.0f} s")


@dataclass
class KillOutcome:
    killed_rank: int
    killed_pid: int
    exit_status: int
    seconds_to_exit: float  # from SIGKILL to the step process's exit
    error_line: str
    leftover_ranks: list[int] = field(default_factory=list)  # rank processes still alive after the step exited


def kill_rank_after_checkpoint(process: subprocess.Popen, runs_glob: str, rank: int, log_path: Path,
                               timeout: float = 600.0, ignore: frozenset[str] = frozenset(),
                               ) -> tuple[KillOutcome, str]:
    """Once a new `runs_glob`/checkpoints/ckpt-1.index exists, SIGKILL `rank` and wait for the step to fail; returns
    (the outcome, the run's output directory)."""
    checkpoint = wait_for(f"{runs_glob}/checkpoints/ckpt-1.index", process, timeout, ignore)
    ranks = rank_pids(process.pid)
    pid = ranks[rank]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    status = process.wait(timeout=300)
    seconds = time.monotonic() - killed
    leftover = [r for r, p in ranks.items() if r != rank and Path(f"/proc/{p}").exists()]
    errors = [line for line in log_path.read_text().splitlines() if "error:" in line]
    return (KillOutcome(rank, pid, status, round(seconds, 1), errors[-1] if errors else "", leftover),
            str(Path(checkpoint).parents[1]))


# -- one model's scenario ------------------------------------------------------------------------------------------

@dataclass
class Scenario:
    model: str
    kill: KillOutcome
    rerun_seconds: float
    run_id: str
    same_run: bool
    resume_line: str
    status: str
    loss_steps: list[int]
    losses: list[float]
    history_epochs: list[int]
    resumed_from_epoch: int


def run_scenario(model: str, table_uri: str, version: int, config: dict, env: dict[str, str], home: Path,
                 work: Path, rank: int = 1, workers: int = 2) -> Scenario:
    from kuberec import tracking
    from kuberec.settings import load_settings

    runs_glob = str(home / "runs" / f"{model}-*")
    first_log, second_log = work / f"{model}-attempt1.log", work / f"{model}-attempt2.log"
    earlier = frozenset(glob.glob(f"{runs_glob}/checkpoints/ckpt-1.index"))
    first = start_step(model, table_uri, version, config, workers, env, first_log)
    try:
        kill, failed_dir = kill_rank_after_checkpoint(first, runs_glob, rank, first_log, ignore=earlier)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    started = time.monotonic()
    second = start_step(model, table_uri, version, config, workers, env, second_log)
    if second.wait(timeout=900) != 0:
        raise RuntimeError(f"the rerun failed ({second.returncode}):\n{second_log.read_text()[-4000:]}")
    rerun_seconds = time.monotonic() - started
    text = second_log.read_text()
    run_id = re.search(r"^run (\w+)$", text, re.M).group(1)
    resume_lines = [line for line in text.splitlines() if "resuming from" in line or "continuing run" in line]

    old = dict(os.environ)
    os.environ.update(env)
    try:
        client = tracking.client(load_settings())
        run = client.get_run(run_id)
        losses = client.get_metric_history(run_id, "loss")
    finally:
        os.environ.clear()
        os.environ.update(old)
    result = json.loads((Path(failed_dir) / "train_result.json").read_text())
    return Scenario(model=model, kill=kill, rerun_seconds=round(rerun_seconds, 1), run_id=run_id,
                    same_run=Path(failed_dir).name.endswith(run_id), resume_line=" | ".join(resume_lines),
                    status=run.info.status, loss_steps=sorted(m.step for m in losses),
                    losses=[m.value for m in sorted(losses, key=lambda m: m.step)],
                    history_epochs=[int(e["epoch"]) for e in result["history"]],
                    resumed_from_epoch=int(result["resumed_from_epoch"]))


if __name__ == "__main__":
    if sys.argv[1:2] != ["step"]:
        sys.exit(f"usage: {sys.argv[0]} step <model> <table-uri> <version> <config-json> <workers>")
    sys.exit(step_main(sys.argv[2:]))
