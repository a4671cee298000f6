"""Peak memory of `kuberec ingest images` against the size of the batch: the Spark job (Python driver + its JVM)
uploading N small PNG pictures, for several N.

Each size gets its own fresh catalog table (20 Fashion-MNIST images per split) and a directory of N distinct
96x96 noise pictures (~9 KB each); the job `python -m kuberec.ingest.images DIR --table T` runs as the local
backend runs it, and its process tree's resident memory (the driver and the JVM it starts, summed) is sampled
every 0.2 s. Expected: the peak grows little with N (the job holds one chunk of pictures at a time), every
picture lands once, and there is one commit per chunk.

    .venv/bin/python benchmarks/large_image_batch.py --sizes 2000 20000 [--chunk-size 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def write_pictures(directory: Path, count: int, seed: int) -> int:
    """`count` distinct 96x96 grayscale noise PNGs; returns their total size in bytes."""
    from PIL import Image

    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8)).save(buffer, format="PNG")
        total += (directory / f"p{i:06d}.png").write_bytes(buffer.getvalue())
    return total


def run_sampled(argv: list[str], env: dict[str, str], log_path: Path) -> dict[str, float]:
    """Run `argv`, sampling the summed RSS of it and its descendants; returns peaks (MiB), wall time, status."""
    import psutil

    peaks = {"tree": 0, "python": 0, "jvm": 0}
    with open(log_path, "w") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(process.pid)
        started = time.monotonic()
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                    rss = {p.pid: (p.name(), p.memory_info().rss) for p in tree}
                except psutil.Error:  # a process exited between listing and reading
                    continue
                peaks["tree"] = max(peaks["tree"], sum(r for _, r in rss.values()))
                peaks["python"] = max(peaks["python"], rss.get(root.pid, ("", 0))[1])
                peaks["jvm"] = max(peaks["jvm"], sum(r for name, r in rss.values() if name == "java"))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        status = process.wait()
        done.set()
        sampler.join()
    mib = {f"peak_rss_{key}_mib": round(value / 2 ** 20) for key, value in peaks.items()}
    return {**mib, "seconds": round(time.monotonic() - started, 1), "exit_status": status}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="pictures per batch")
    parser.add_argument("--chunk-size", type=int, help="the job's --chunk-size (default: its own default)")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    import pyarrow.parquet as pq

    from kuberec.datasets import fashion_mnist as fm
    from kuberec.lake.delta import history, snapshot_files

    results = []
    with tempfile.TemporaryDirectory(prefix="kuberec-large-batch-") as tmp:
        env = {**os.environ, "KUBEREC_HOME": str(Path(tmp) / "home")}
        env.setdefault("KUBEREC_CACHE", str(Path(".kuberec/cache").absolute()))
        for size in args.sizes:
            table = str(Path(tmp) / f"lake-{size}" / "fashion_mnist")
            subprocess.run([sys.executable, "-m", "kuberec.ingest.fashion_mnist", "--source", str(fm.DEBIAN_DIR),
                            "--table", table, "--max-per-split", "20"], env=env, check=True, capture_output=True)
            pictures = Path(tmp) / f"pictures-{size}"
            total_bytes = write_pictures(pictures, size, seed=size)
            argv = [sys.executable, "-m", "kuberec.ingest.images", str(pictures), "--table", table]
            argv += ["--chunk-size", str(args.chunk_size)] if args.chunk_size else []
            log_path = Path(tmp) / f"job-{size}.log"
            run = run_sampled(argv, env, log_path)
            output = log_path.read_text()
            digests = []  # the catalog split's pictures, read without a JVM
            for file in snapshot_files(table)[1]:
                if "/split=catalog/" in file:
                    part = pq.read_table(file.removeprefix("file://"), columns=["image_sha256"])
                    digests += part.column(0).to_pylist()
            commits = [c for c in history(table) if c.get("operation") == "MERGE"]
            results.append({
                "pictures": size, "megabytes_of_pictures": round(total_bytes / 1e6, 1), **run,
                "rows_added": len(digests), "distinct_pictures": len(set(digests)),
                "commits": len(commits), "progress_lines": output.count(" ingested"),
                "error_tail": "" if run["exit_status"] == 0 else output[-1500:],
            })
            print(json.dumps(results[-1]), flush=True)
    summary = {"results": results, "chunk_size": args.chunk_size, "machine": f"{platform.node()} "
               f"({os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2 ** 30} GiB)",
               "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_before": round(os.getloadavg()[0], 2)}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    ok = all(r["exit_status"] == 0 and r["rows_added"] == r["distinct_pictures"] == r["pictures"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
