"""Feed throughput: Delta snapshot -> Petastorm -> tf.data, against the same arrays served from memory.

Reads the full train split (60,000 images) of the catalog table `repeats` times each way, alternating, and prints
medians and their ratio as JSON. Target (issue 2): the feed delivers >= 5x the ~7,900 images/s the seed CNN trains
at in one CPU process (>= 39,500 images/s).

    .venv/bin/python benchmarks/feed_bench.py [--table URI] [--repeats 5] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from kuberec.lake import feed
from kuberec.settings import load_settings

TRAINING_RATE = 7_900  # images/s of the seed CNN in one CPU process (STACK.md)


def drain(dataset) -> int:
    count = 0
    for _, labels in dataset:
        count += int(labels.shape[0])
    return count


def main() -> None:
    import tensorflow as tf

    parser = argparse.ArgumentParser()
    parser.add_argument("--table", default=load_settings().table_uri("fashion_mnist"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()

    arrays = feed.load_arrays(args.table, split="train")
    memory = (tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels)).batch(args.batch_size)
              .map(lambda x, y: (tf.cast(x[..., None], tf.float32) / 255.0, y)).prefetch(tf.data.AUTOTUNE))
    rates: dict[str, list[float]] = {"petastorm": [], "memory": [], "load_arrays": []}
    for _ in range(args.repeats):
        start = time.perf_counter()
        with feed.make_dataset(args.table, split="train", batch_size=args.batch_size) as dataset:
            n = drain(dataset)
        rates["petastorm"].append(n / (time.perf_counter() - start))
        start = time.perf_counter()
        n = drain(memory)
        rates["memory"].append(n / (time.perf_counter() - start))
        start = time.perf_counter()
        n = len(feed.load_arrays(args.table, split="train").item_ids)
        rates["load_arrays"].append(n / (time.perf_counter() - start))
    medians = {k: round(statistics.median(v)) for k, v in rates.items()}
    print(json.dumps({
        "table": args.table, "table_version": arrays.version, "images": len(arrays.item_ids),
        "repeats": args.repeats, "batch_size": args.batch_size,
        "median_images_per_s": medians,
        "petastorm_to_memory_ratio": round(medians["petastorm"] / medians["memory"], 3),
        "petastorm_to_training_rate": round(medians["petastorm"] / TRAINING_RATE, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
