"""Concurrent writers to the Instacart tables, as real commands started together (each its own Spark JVM).

Three rounds on one fresh lake, in order:
1. `ingest-twice`: two `kuberec ingest instacart` of the same files. Expected: both exit 0, each bronze table has one
   commit holding its file's rows once, and the recorded ingestion points at those commits.
2. `features-twice`: two `kuberec features instacart`. Expected: both exit 0, each gold table has one commit.
3. `ingest-against-features`: the files generated again with another seed, then `kuberec ingest instacart` and `kuberec
   features instacart` together. Expected: both exit 0 and the gold tables are built from one complete ingestion
   (the old or the new, whichever was recorded when the features run read it, never a mix); a features run
   afterwards builds from the new one.

    .venv/bin/python benchmarks/instacart_concurrency.py --users 300 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def together(commands: list[list[str]], env: dict[str, str]) -> dict:
    """Start `commands` at once; their exit statuses, wall time, and the error line of any that failed."""
    started = time.monotonic()
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for command in commands]
    outputs = [process.communicate() for process in processes]
    return {"exit_statuses": [process.returncode for process in processes],
            "seconds": round(time.monotonic() - started, 1),
            "errors": [err.strip().splitlines()[-1] for (_, err), process in zip(outputs, processes)
                       if process.returncode],
            "conflicts_logged": sum(err.count("another writer committed the same content first")
                                    for _, err in outputs)}


def commits(uri: str) -> int:
    from kuberec.lake.delta import history

    return len(history(uri))


def rows(uri: str) -> int:
    import pyarrow.parquet as pq

    from kuberec.lake.delta import snapshot_files

    _, files = snapshot_files(uri)
    return sum(pq.ParquetFile(file.removeprefix("file://")).metadata.num_rows for file in files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()

    from kuberec.ingest.instacart import BRONZE_TABLES, last_commit_metadata, latest_ingestion
    from kuberec.ingest.instacart_features import EXAMPLES_TABLE, GOLD_TABLES
    from kuberec.settings import Settings

    kuberec = str(Path(sys.executable).with_name("kuberec"))
    result: dict = {"users": args.users, "machine": f"{platform.node()} ({os.cpu_count()} cores)",
                    "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="kuberec-instacart-concurrency-") as tmp:
        home, source = Path(tmp) / "home", Path(tmp) / "instacart"
        env = {**os.environ, "KUBEREC_HOME": str(home)}
        env.setdefault("KUBEREC_CACHE", str(Path(".kuberec/cache").absolute()))
        settings = Settings(home=home)

        def generate(seed: int) -> None:
            subprocess.run([kuberec, "data", "instacart-synth", "--users", str(args.users), "--products", "2000",
                            "--seed", str(seed), "--out", str(source)], env=env, check=True, capture_output=True)

        generate(0)
        ingest = [kuberec, "ingest", "instacart", "--source", str(source)]
        features = [kuberec, "features", "instacart"]

        round1 = together([ingest, ingest], env)
        round1["bronze"] = {
            name: {"commits": commits(settings.table_uri(name)), "rows_present": rows(settings.table_uri(name)),
                   "rows_expected": len((source / file).read_text().splitlines()) - 1}
            for file, name in BRONZE_TABLES.items()}
        first = latest_ingestion(settings)["bronze"]
        round1["recorded_ingestion"] = first
        result["ingest-twice"] = round1

        round2 = together([features, features], env)
        round2["gold_commits"] = {name: commits(settings.table_uri(name)) for name in GOLD_TABLES}
        round2["examples_rows"] = rows(settings.table_uri(EXAMPLES_TABLE))
        result["features-twice"] = round2

        generate(1)  # another seed: five of the six files change (departments stay)
        round3 = together([ingest, features], env)
        second = latest_ingestion(settings)["bronze"]
        built_from = {name: last_commit_metadata(settings.table_uri(name))["bronze"] for name in GOLD_TABLES}
        round3["gold_built_from"] = sorted({"first ingestion" if b == first else "second ingestion" if b == second
                                            else f"a mix: {b}" for b in built_from.values()})
        subprocess.run(features, env=env, check=True, capture_output=True)
        round3["after_a_rerun_gold_built_from_second"] = all(
            last_commit_metadata(settings.table_uri(name))["bronze"] == second for name in GOLD_TABLES)
        result["ingest-against-features"] = round3
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    ok = (not any(r["exit_statuses"][i] for r in (round1, round2, round3) for i in range(2))
          and all(t["commits"] == 1 and t["rows_present"] == t["rows_expected"] for t in round1["bronze"].values())
          and set(round2["gold_commits"].values()) == {1}
          and not any(b.startswith("a mix") for b in round3["gold_built_from"])
          and round3["after_a_rerun_gold_built_from_second"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
