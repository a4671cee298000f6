"""Fashion-MNIST ingestion wall time: the full 70,000 images into a new Delta table, then the idempotent re-run.

Runs the real CLI path (`kuberec ingest fashion-mnist` through the local backend: one Spark job per run, JVM start
included) in a throwaway project home and prints wall times as JSON.

    .venv/bin/python benchmarks/ingest_bench.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    kuberec = [sys.executable, "-m", "kuberec.cli"]
    create, rerun = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as home:
            env = {**os.environ, "KUBEREC_HOME": home,
                   "KUBEREC_CACHE": os.environ.get("KUBEREC_CACHE", str(REPO / ".kuberec" / "cache"))}
            timed(kuberec + ["data", "fashion-mnist"], env)
            create.append(timed(kuberec + ["ingest", "fashion-mnist"], env))
            rerun.append(timed(kuberec + ["ingest", "fashion-mnist"], env))
    print(json.dumps({"images": 70_000, "runs": args.runs,
                      "create_s": [round(t, 1) for t in create], "median_create_s": round(statistics.median(create), 1),
                      "rerun_s": [round(t, 1) for t in rerun], "median_rerun_s": round(statistics.median(rerun), 1)},
                     indent=2))


if __name__ == "__main__":
    main()
