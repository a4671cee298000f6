"""Faults during the training step: a Horovod rank SIGKILLed mid-epoch (then the step run again), and the embedded
MLflow server killed or restarted mid-step. How fast the job fails and what it says, whether a rerun continues from
the last checkpoint, and whether what was logged survives.

For each model: the pipeline's train step (`<model>.steps.train`, 2 workers under horovodrun, the local backend) runs
in a process of its own; once epoch 1's checkpoint exists, one rank (found among the step's descendants by its
HOROVOD_RANK) gets SIGKILL. Measured: seconds from the kill to the step's exit and its error line. Then the same step
runs again and must continue the same MLflow run from the checkpoint: its log says so, the run ends FINISHED with one
loss per epoch, and the result's history covers every epoch.

MLflow faults (`--fault mlflow-kill`, `mlflow-restart`): the same step; once epoch 1's checkpoint exists the
embedded server's process group gets SIGKILL (nobody restarts it: rank 0 must, when it logs epoch 2), or SIGTERM
followed by a start from another process (`ensure_server`, as `kuberec mlflow ui` does). Measured: the step's exit
status, the run's status and metrics, and the seconds from the signal to the server answering again.

    .venv/bin/python benchmarks/training_faults.py [--model similarity|widedeep|both] [--rank 1] [--json out.json]
    .venv/bin/python benchmarks/training_faults.py --fault mlflow-kill --model similarity

Data: 1,000 + 1,000 Fashion-MNIST images (similarity) and 300 generated Instacart users (wide & deep), ingested by
the real Spark jobs into a fresh home; MLflow is the home's embedded server. tests/test_training_faults.py runs the
similarity case with the test suite's MLflow server.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Epochs long enough (several seconds on 2 busy cores) that the kill lands inside epoch 2, not after it.
SIMILARITY_CONFIG = {"architecture": "vgg", "classes_per_batch": 5, "examples_per_class": 4, "steps_per_epoch": 40,
                     "epochs": 3, "lr_schedule": "constant"}
WIDEDEEP_CONFIG = {"hidden_layers": 2, "hidden_units": 32, "batch_size": 128, "epochs": 3, "steps_per_epoch": 60,
                   "shuffle_buffer": 512, "seed": 3}


# -- the step, in a process of its own -----------------------------------------------------------------------------

def step_main(argv: list[str]) -> int:
    """`training_faults.py step <model> <table-uri> <version> <config-json> <workers>`: the train step, as a
    pipeline component calls it; prints `run <id>`."""
    import logging

    from kuberec.entrypoint import exit_status

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [step] %(name)s: %(message)s")
    model, table_uri, version, config_json, workers = argv

    def train() -> None:
        from kuberec.lake.delta import TableRef
        from kuberec.settings import load_settings

        table = TableRef(table_uri, int(version))
        if model == "similarity":
            from kuberec.similarity import steps
            from kuberec.similarity.config import SimilarityConfig

            run_id = steps.train(load_settings(), table, SimilarityConfig.from_dict(json.loads(config_json)),
                                 workers=int(workers))
        else:
            from kuberec.widedeep import steps
            from kuberec.widedeep.config import WideDeepConfig

            run_id = steps.train(load_settings(), table, WideDeepConfig.from_dict(json.loads(config_json)),
                                 int(workers))
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


@dataclass
class MlflowScenario:
    model: str
    fault: str
    exit_status: int
    step_seconds: float
    seconds_to_server_back: float  # from the signal until the recorded server answers /health again
    same_port: bool
    run_id: str
    status: str
    loss_steps: list[int]
    log_lines: list[str]  # the step's lines about the lost server


def run_mlflow_scenario(model: str, table_uri: str, version: int, config: dict, env: dict[str, str], home: Path,
                        work: Path, fault: str, workers: int = 2) -> MlflowScenario:
    from kuberec import tracking
    from kuberec.settings import load_settings
    from kuberec.tracking import server as mlflow_server

    old = dict(os.environ)
    os.environ.update(env)
    try:
        settings = load_settings()
        log_path = work / f"{model}-{fault}.log"
        pattern = str(home / "runs" / f"{model}-*" / "checkpoints" / "ckpt-1.index")
        earlier = frozenset(glob.glob(pattern))
        started = time.monotonic()
        process = start_step(model, table_uri, version, config, workers, env, log_path)
        wait_for(pattern, process, 900, earlier)
        before = mlflow_server.running_server(settings)
        os.killpg(before.pid, signal.SIGKILL if fault == "mlflow-kill" else signal.SIGTERM)
        signalled = time.monotonic()
        if fault == "mlflow-restart":
            while mlflow_server.healthy(before.url, timeout=1):
                time.sleep(0.2)
            mlflow_server.ensure_server(settings)  # someone else starts it again
        back = None
        while process.poll() is None:
            if back is None and mlflow_server.healthy(before.url, timeout=1):
                back = time.monotonic() - signalled
            time.sleep(0.5)
        step_seconds = time.monotonic() - started
        text = log_path.read_text()
        match = re.search(r"^run (\w+)$", text, re.M)
        run_id = match.group(1) if match else ""
        client = tracking.client(settings)
        run = client.get_run(run_id) if run_id else None
        after = mlflow_server.running_server(settings)
        return MlflowScenario(
            model=model, fault=fault, exit_status=process.returncode, step_seconds=round(step_seconds, 1),
            seconds_to_server_back=round(back, 1) if back is not None else -1.0,
            same_port=after is not None and after.port == before.port, run_id=run_id,
            status=run.info.status if run else "", loss_steps=sorted(
                m.step for m in client.get_metric_history(run_id, "loss")) if run_id else [],
            log_lines=[line[-300:] for line in text.splitlines()
                       if "MLflow server" in line or "error:" in line][-6:])
    finally:
        os.environ.clear()
        os.environ.update(old)


# -- data ----------------------------------------------------------------------------------------------------------

def prepare_similarity(env: dict[str, str]) -> tuple[str, int]:
    kuberec = str(Path(sys.executable).with_name("kuberec"))
    subprocess.run([kuberec, "ingest", "fashion-mnist", "--max-per-split", "1000"], env=env, check=True,
                   capture_output=True)
    return str(Path(env["KUBEREC_HOME"]) / "lake" / "fashion_mnist"), 0


def prepare_widedeep(env: dict[str, str]) -> tuple[str, int]:
    kuberec = str(Path(sys.executable).with_name("kuberec"))
    for command in (["data", "instacart-synth", "--users", "300", "--seed", "5"], ["ingest", "instacart"],
                    ["features", "instacart"]):
        subprocess.run([kuberec, *command], env=env, check=True, capture_output=True)
    from kuberec.lake.delta import table_version

    uri = str(Path(env["KUBEREC_HOME"]) / "lake" / "instacart_gold_examples")
    return uri, table_version(uri)


def main() -> int:
    if sys.argv[1:2] == ["step"]:
        return step_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("similarity", "widedeep", "both"), default="both")
    parser.add_argument("--fault", choices=("kill-rank", "mlflow-kill", "mlflow-restart"), default="kill-rank")
    parser.add_argument("--rank", type=int, default=1, help="the rank to kill (default 1)")
    parser.add_argument("--root", type=Path, help="work directory (default: a temporary one, removed)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kuberec-training-faults-") as tmp:
        root = (args.root or Path(tmp)).absolute()
        home = root / "home"
        env = {**os.environ, "KUBEREC_HOME": str(home)}
        env.setdefault("KUBEREC_CACHE", str(REPO / ".kuberec" / "cache"))
        env.pop("MLFLOW_TRACKING_URI", None)
        results = []
        try:
            for model in ("similarity", "widedeep") if args.model == "both" else (args.model,):
                started = time.monotonic()
                table, version = prepare_similarity(env) if model == "similarity" else prepare_widedeep(env)
                print(f"{model}: data ready in {time.monotonic() - started:.0f} s", flush=True)
                config = SIMILARITY_CONFIG if model == "similarity" else WIDEDEEP_CONFIG
                if args.fault == "kill-rank":
                    outcome = asdict(run_scenario(model, table, version, config, env, home, root, rank=args.rank))
                else:
                    outcome = asdict(run_mlflow_scenario(model, table, version, config, env, home, root, args.fault))
                print(json.dumps(outcome, indent=2), flush=True)
                results.append(outcome)
        finally:
            from kuberec.settings import Settings
            from kuberec.tracking import server as mlflow_server

            mlflow_server.stop_server(Settings(home=home))
    report = {"machine": platform.node(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
