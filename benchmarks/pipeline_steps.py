"""Per-step wall time, memory and disk of one local pipeline run, from the KFP local runner's own task lines.

    .venv/bin/python benchmarks/pipeline_steps.py --json /tmp/steps.json -- \
        make pipeline-run PIPELINE=widedeep PIPELINE_ARGS="--param users=206209"

Runs the command with PYTHONUNBUFFERED=1 (so the runner's lines arrive as they are printed, not when a task ends),
passes its output through, samples the machine's used memory, the free space of the file system of the working
directory (Spark's shuffle and the lake are under the kuberec home) and the load average every --sample seconds, and
at the end prints each task's wall time, from the runner's "Executing task" line to its "Task ... finished" line,
with the peak used memory and the least free disk while it ran. Used memory is the whole machine's (the MLflow
server and the runner included), so run it on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
from sampling import Every

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")


class Sampler(Every):
    """(time, used memory GiB, free disk GiB, 1-minute load) every `every` seconds while a `with` block runs."""

    def __init__(self, every: float) -> None:
        super().__init__(every, self._take)
        self.samples: list[tuple[float, float, float, float]] = []

    def _take(self) -> None:
        self.samples.append((time.time(), psutil.virtual_memory().used / 2 ** 30,
                             shutil.disk_usage(".").free / 2 ** 30, os.getloadavg()[0]))

    def during(self, start: float, end: float) -> dict[str, float]:
        inside = [s for s in self.samples if start <= s[0] <= end] or \
            [min(self.samples, key=lambda s: abs(s[0] - start))]
        return {"peak_used_gib": round(max(s[1] for s in inside), 2),
                "least_free_disk_gib": round(min(s[2] for s in inside), 2),
                "peak_load": round(max(s[3] for s in inside), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=float, default=15.0, help="seconds between memory/disk samples")
    parser.add_argument("--json", type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --: the pipeline command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the pipeline command after --")
    starts: dict[str, float] = {}
    steps: list[dict] = []
    began = time.time()
    with Sampler(args.sample) as sampler:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        for line in process.stdout:
            sys.stdout.write(line)
            plain, now = ANSI.sub("", line), time.time()
            if match := STARTED.search(plain):
                starts[match.group(1)] = now
            elif (match := FINISHED.search(plain)) and match.group(1) in starts:
                name = match.group(1)
                steps.append({"step": name, "status": match.group(2),
                              "seconds": round(now - starts[name], 1)} | sampler.during(starts[name], now))
        code = process.wait()
    ended = time.time()
    report = {"command": command, "exit_code": code, "seconds": round(ended - began, 1),
              "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(began)), "cpus": psutil.cpu_count(),
              "steps": steps, "whole": sampler.during(began, ended)}
    print("\n| step | status | wall s | peak used memory GiB | least free disk GiB | peak load |")
    print("|---|---|---|---|---|---|")
    for step in steps:
        print(f"| {step['step']} | {step['status']} | {step['seconds']} | {step['peak_used_gib']} | "
              f"{step['least_free_disk_gib']} | {step['peak_load']} |")
    print(f"| whole command | exit {code} | {report['seconds']} | {report['whole']['peak_used_gib']} | "
          f"{report['whole']['least_free_disk_gib']} | {report['whole']['peak_load']} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
