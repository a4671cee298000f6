"""What `make cluster-up`, its image builds and `make cluster-smoke` took, from the timings they record:

    .kuberec/cluster/up-times.tsv   one line per phase of each cluster-up (build, runtime, images, ...)
    .kuberec/cluster/images.tsv     build time and size of every image built
    .kuberec/cluster/smoke.tsv      final state and time of each smoke resource
    a build log (--build-log)       the `built <binary> in <s> s` lines of scripts/cluster/build.sh

Prints them as Markdown tables for docs/BENCHMARKS.md (the latest line of each name; --all for every line).

    .venv/bin/python benchmarks/cluster_report.py [--home .kuberec] [--build-log build.log] [--all]
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path


def rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open() as file:
        return list(csv.DictReader(file, delimiter="\t"))


def table(title: str, records: list[dict[str, str]], key: str, every: bool) -> str:
    if not records:
        return f"### {title}\n\n(none recorded)\n"
    if not every:  # the latest line of each name
        latest: dict[str, dict[str, str]] = {}
        for record in records:
            latest[record[key]] = record
        records = list(latest.values())
    columns = list(records[0])
    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(record[c] for c in columns) + " |" for record in records]
    return "\n".join(lines) + "\n"


def built_binaries(log: Path) -> list[dict[str, str]]:
    found = re.findall(r"built (\S+) in (\d+) s", log.read_text()) if log.exists() else []
    return [{"binary": name, "build_s": seconds} for name, seconds in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".kuberec"), help="KUBEREC_HOME (default .kuberec)")
    parser.add_argument("--build-log", type=Path, help="output of scripts/cluster/build.sh")
    parser.add_argument("--all", action="store_true", help="every recorded line, not the latest per name")
    args = parser.parse_args()
    state = args.home / "cluster"
    print(table("cluster-up phases (s)", rows(state / "up-times.tsv"), "phase", True))
    print(table("Images", rows(state / "images.tsv"), "image", args.all))
    print(table("Smoke resources", rows(state / "smoke.tsv"), "resource", args.all))
    if args.build_log:
        print(table("Go builds", built_binaries(args.build_log), "binary", True))


if __name__ == "__main__":
    main()
