"""Concurrent writers to the catalog table: N `kuberec ingest images` processes started together, rows expected vs
rows present.

Each writer is the real command (its own Spark JVM, the local backend's Spark job) uploading its own pictures plus
one picture that every writer uploads. Expected afterwards: every writer exits 0, the catalog split holds each
distinct picture once with a distinct item id, and the table has one commit per writer that added something.

    .venv/bin/python benchmarks/concurrent_writers.py --writers 3 --images 4 [--json out.json]
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
import time
from pathlib import Path

import numpy as np


def test_pictures(count: int) -> np.ndarray:
    from kuberec.datasets import fashion_mnist as fm

    spec = fm.idx_file("test", "images")
    path = fm.find_file(fm.DEBIAN_DIR, spec)
    return fm.parse_idx(spec, fm.decompress(str(path), path.read_bytes()), check_sha256=False)[-count:]


def write_png(path: Path, pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=3)
    parser.add_argument("--images", type=int, default=4, help="pictures of its own per writer")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    kuberec = str(Path(sys.executable).with_name("kuberec"))
    with tempfile.TemporaryDirectory(prefix="kuberec-concurrent-") as tmp:
        home = Path(tmp) / "home"
        env = {**os.environ, "KUBEREC_HOME": str(home)}
        env.setdefault("KUBEREC_CACHE", str(Path(".kuberec/cache").absolute()))
        subprocess.run([kuberec, "ingest", "fashion-mnist", "--max-per-split", "50"], env=env, check=True,
                       capture_output=True)
        pictures = test_pictures(args.writers * args.images + 1)
        shared = write_png(Path(tmp) / "shared.png", pictures[-1])
        batches = []
        for writer in range(args.writers):
            own = [write_png(Path(tmp) / f"w{writer}-{i}.png", pictures[writer * args.images + i])
                   for i in range(args.images)]
            batches.append(own + [shared])
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        processes = [subprocess.Popen([kuberec, "ingest", "images", *batch], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for batch in batches]
        outputs = [process.communicate() for process in processes]
        seconds = time.monotonic() - started

        import pyarrow.parquet as pq

        from kuberec.lake.delta import snapshot_files

        _, files = snapshot_files(str(home / "lake" / "fashion_mnist"))
        catalog = []
        for file in files:  # the catalog split's files (the table is partitioned by split)
            if "/split=catalog/" in file:
                part = pq.read_table(file.removeprefix("file://"), columns=["item_id", "image_sha256"]).to_pydict()
                catalog += list(zip(part["item_id"], part["image_sha256"]))
        retries = sum(err.count("another writer committed first") for _, err in outputs)
    result = {
        "writers": args.writers, "images_per_writer": args.images, "shared_images": 1,
        "rows_expected": args.writers * args.images + 1, "rows_present": len(catalog),
        "distinct_item_ids": len({item for item, _ in catalog}),
        "distinct_pictures": len({digest for _, digest in catalog}),
        "exit_statuses": [process.returncode for process in processes], "retries_logged": retries,
        "seconds": round(seconds, 1), "machine": f"{platform.node()} ({os.cpu_count()} cores)",
        "date": time.strftime("%Y-%m-%d %H:%M"), "load_average_before": round(load_before, 2),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    ok = result["rows_present"] == result["rows_expected"] == result["distinct_item_ids"] and \
        not any(result["exit_statuses"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
