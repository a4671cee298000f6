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
similarity case with the test suite's MLflow server; both run the kill-rank scenario of
tests/scenarios/training_faults.py.
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
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the repository, for tests/scenarios
from tests.scenarios.training_faults import run_scenario, start_step, wait_for  # noqa: E402

# Epochs long enough (several seconds on 2 busy cores) that the kill lands inside epoch 2, not after it.
SIMILARITY_CONFIG = {"architecture": "vgg", "classes_per_batch": 5, "examples_per_class": 4, "steps_per_epoch": 40,
                     "epochs": 3, "lr_schedule": "constant"}
WIDEDEEP_CONFIG = {"hidden_layers": 2, "hidden_units": 32, "batch_size": 128, "epochs": 3, "steps_per_epoch": 60,
                   "shuffle_buffer": 512, "seed": 3}


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
