"""A Spark write killed in its parts: which processes outlive a SIGKILL, and what reaches the table.

`kuberec ingest images` runs as three processes: the command, the Spark job it starts (`python -m
kuberec.ingest.images`, the PySpark driver) and the driver's JVM. tests/test_killed_steps.py kills all three at
once (the process group: what a terminal's job control or a pod's deletion does). This script kills one at a time,
once the new version's data files have appeared in the table but before its commit:

- `driver`: the Python driver alone. Its JVM reads its stdin from the driver, sees it close and exits.
- `cli`: the command alone. The Spark job is its child, not killed with it: it carries on as an orphan.

For each: the processes left and for how long, and the table's version afterwards (a commit that still lands is
whole: Delta's commit is one file). Then a rerun of the same batch and a check of the rows.

    .venv/bin/python benchmarks/killed_steps.py [--pictures 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the repository, for tests/scenarios
from tests.scenarios.killed_steps import session_processes  # noqa: E402


def catalog_rows(table: str) -> tuple[int, int, int]:
    """(rows, distinct item ids, distinct pictures) of the catalog split in the table's latest snapshot."""
    import pyarrow.parquet as pq

    from kuberec.lake.delta import snapshot_files

    pairs = []
    for file in snapshot_files(table)[1]:
        if "/split=catalog/" in file:
            part = pq.read_table(file.removeprefix("file://"), columns=["item_id", "image_sha256"]).to_pydict()
            pairs += zip(part["item_id"], part["image_sha256"])
    return len(pairs), len({i for i, _ in pairs}), len({d for _, d in pairs})


def kill_one(mode: str, kuberec: str, batch: Path, table: str, env: dict[str, str], log: Path) -> dict:
    from kuberec.lake.delta import table_version

    before_version = table_version(table)
    before = set(Path(table).rglob("*.parquet"))
    started = time.monotonic()
    process = subprocess.Popen([kuberec, "ingest", "images", str(batch)], env=env, start_new_session=True,
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    while not set(Path(table).rglob("*.parquet")) - before:
        if process.poll() is not None:
            raise SystemExit(f"{mode}: the command ended before writing data files: {log.read_text()[-2000:]}")
        time.sleep(0.002)
    detected = time.monotonic()
    processes = session_processes(process.pid)
    if mode == "cli":
        target = process.pid
    else:
        target = next(int(p.split()[0]) for p in processes if "-m kuberec.ingest.images" in p)
    os.kill(target, signal.SIGKILL)
    committed_at_kill = table_version(table) != before_version
    timeline = []
    while session_processes(process.pid) and time.monotonic() - detected < 600:
        left = session_processes(process.pid)
        if not timeline or timeline[-1][1] != len(left):
            timeline.append((round(time.monotonic() - detected, 1), len(left), [(p.split() + ["?"])[1] for p in left]))
        time.sleep(0.2)
    process.wait()
    return {"mode": mode, "data_files_after_s": round(detected - started, 1),
            "processes_at_kill": [p[:80] for p in processes], "committed_at_kill": committed_at_kill,
            "left_after_kill (s, count, programs)": timeline,
            "session_empty_after_s": round(time.monotonic() - detected, 1),
            "version_before": before_version, "version_after": table_version(table)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=300, help="pictures per killed batch")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    from PIL import Image

    from kuberec.datasets import fashion_mnist as fm
    from kuberec.lake.delta import table_version

    kuberec = str(Path(sys.executable).with_name("kuberec"))
    results = []
    with tempfile.TemporaryDirectory(prefix="kuberec-killed-") as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "KUBEREC_HOME": str(home)}
        env.setdefault("KUBEREC_CACHE", str(Path(".kuberec/cache").absolute()))
        env.pop("MLFLOW_TRACKING_URI", None)
        subprocess.run([kuberec, "ingest", "fashion-mnist", "--max-per-split", "20"], env=env, check=True,
                       capture_output=True)
        table = str(home / "lake" / "fashion_mnist")
        spec = fm.idx_file("test", "images")
        pictures = fm.parse_idx(spec, fm.decompress("", (fm.DEBIAN_DIR / f"{spec.name}.gz").read_bytes()))
        for number, mode in enumerate(("driver", "cli")):
            batch = Path(tmp) / f"batch-{mode}"
            batch.mkdir()
            chosen = pictures[-(number + 1) * args.pictures:len(pictures) - number * args.pictures]
            for i, pixels in enumerate(chosen):
                Image.fromarray(pixels).save(batch / f"p{i:04d}.png")
            result = kill_one(mode, kuberec, batch, table, env, Path(tmp) / f"{mode}.log")
            started = time.monotonic()
            rerun = subprocess.run([kuberec, "ingest", "images", str(batch)], env=env, capture_output=True)
            result["rerun_s"] = round(time.monotonic() - started, 1)
            result["rerun_status"] = rerun.returncode
            result["version_after_rerun"] = table_version(table)
            rows, ids, distinct = catalog_rows(table)
            wanted = len({p.tobytes() for p in pictures[-(number + 1) * args.pictures:]})
            result.update(catalog_rows=rows, distinct_ids=ids, distinct_pictures=distinct, expected_rows=wanted)
            results.append(result)
            print(json.dumps(result, indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ok = all(r["rerun_status"] == 0 and r["catalog_rows"] == r["distinct_ids"] == r["expected_rows"]
             for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
