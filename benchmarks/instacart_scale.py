"""Instacart pipeline wall times at a fraction of the public dataset's scale: generate, ingest, features.

Runs the real CLI path in a throwaway project home: `kuberec data instacart-synth`, then `kuberec ingest instacart`
and `kuberec features instacart` (each a Spark job through the local backend, JVM start included), then both again
to time the idempotent no-op re-run. Prints one JSON object: sizes, wall seconds per phase, and the peak resident
memory of the whole process tree during each phase (sampled every 0.2 s).

    .venv/bin/python benchmarks/instacart_scale.py --fraction 0.1 [--seed 0] [--home DIR]

Fraction 1.0 is 206,209 users (about 3.4M orders and 32M order lines, as the public release).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
INSTACART_USERS = 206_209


class PeakRss:
    """Peak summed RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def phase(argv: list[str], env: dict[str, str]) -> dict:
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = PeakRss(process.pid)
    output, _ = process.communicate()
    peak = sampler.stop()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({process.returncode}):\n{output[-4000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(peak / 2**30, 2), "output": output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, required=True, help="share of Instacart's 206,209 users")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--home", help="project home to use (default: a temporary directory, removed afterwards)")
    args = parser.parse_args()
    users = max(1, round(INSTACART_USERS * args.fraction))
    with tempfile.TemporaryDirectory(prefix="kuberec-instacart-bench-") as scratch:
        home = Path(args.home or scratch).absolute()
        env = {**os.environ, "KUBEREC_HOME": str(home),
               "KUBEREC_CACHE": os.environ.get("KUBEREC_CACHE", str(REPO / ".kuberec" / "cache"))}
        kuberec = [sys.executable, "-m", "kuberec.cli"]
        phases = {
            "generate": phase(kuberec + ["data", "instacart-synth", "--users", str(users), "--seed",
                                         str(args.seed)], env),
            "ingest": phase(kuberec + ["ingest", "instacart"], env),
            "features": phase(kuberec + ["features", "instacart"], env),
            "ingest_rerun": phase(kuberec + ["ingest", "instacart"], env),
            "features_rerun": phase(kuberec + ["features", "instacart"], env),
        }
        manifest = json.loads((home / "data" / "instacart-synth" / "instacart-synth.json").read_text())
        job_lines = {name: next((json.loads(line) for line in result.pop("output").splitlines()
                                 if line.startswith('{"')), None) for name, result in phases.items()}
        gold_rows = job_lines["features"]["rows"] if job_lines["features"] else None
    report = {
        "fraction": args.fraction, "users": users, "products": manifest["products"], "orders": manifest["orders"],
        "prior_lines": manifest["prior_lines"], "train_lines": manifest["train_lines"],
        "phases": phases,
        "pipeline_seconds": round(sum(phases[p]["seconds"] for p in ("generate", "ingest", "features")), 1),
        "ingest_inner_seconds": job_lines["ingest"]["seconds"] if job_lines["ingest"] else None,
        "features_inner_seconds": job_lines["features"]["seconds"] if job_lines["features"] else None,
        "gold_rows": gold_rows,
        "cpus": os.cpu_count(), "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
