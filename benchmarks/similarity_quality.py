"""Similarity model quality and training throughput on the full Fashion-MNIST protocol.

quality (default): for each config, train in one process on the train split of the lake table (read through
`kuberec.lake.feed`), then measure retrieval on the full protocol (10,000 test queries vs 60,000 train items, exact
cosine search; definitions in kuberec.similarity.evaluate) next to the raw-pixel baseline. With --curve-queries N
it also prints precision@5 after every epoch on a seeded N-query sample (against the full index), to see where a
config stops improving. Examples:

    .venv/bin/python benchmarks/similarity_quality.py --json /tmp/sim-quality.json
    .venv/bin/python benchmarks/similarity_quality.py --config '{"architecture": "seed", "epochs": 20}' \
        --config '{"architecture": "databricks", "epochs": 20}' --curve-queries 2000

throughput: images/s of the training step fed two ways, each against its in-memory counterpart (same steps):
  feed        the training path: `feed.load_arrays` (Delta snapshot -> Petastorm -> numpy; its time counted) then
              the class-balanced loop of kuberec.similarity.train, vs the same loop over arrays parsed from the IDX
              files; also projected to a default run, where the one load is spread over all epochs
  streaming   batches streamed by `feed.make_dataset` (Petastorm -> tf.data) into the step, vs a tf.data pipeline
              over the same arrays in memory

    .venv/bin/python benchmarks/similarity_quality.py --throughput --steps 300 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kuberec.lake import feed
from kuberec.settings import load_settings
from kuberec.similarity.config import SimilarityConfig
from kuberec.similarity.evaluate import pixel_embeddings
from kuberec.similarity.metrics import retrieval_metrics
from kuberec.similarity.model import build_loss, build_model, embed
from kuberec.similarity.train import ClassBalancedSampler, train_on_arrays

log = logging.getLogger("similarity_quality")


def quality(args, train: feed.FeedArrays, test: feed.FeedArrays) -> list[dict]:
    results = []
    configs = [SimilarityConfig.from_dict(json.loads(c)) for c in args.config] or [SimilarityConfig()]
    baseline = retrieval_metrics(pixel_embeddings(test.images), test.labels, pixel_embeddings(train.images),
                                 train.labels)
    print(f"raw pixels: precision@5 {baseline.precision[5]:.4f}", flush=True)
    curve_rows = (np.sort(np.random.default_rng(0).choice(len(test.images), args.curve_queries, replace=False))
                  if args.curve_queries else None)
    for config in configs:
        curve: list[float] = []

        def on_epoch_end(metrics, model) -> None:
            if curve_rows is None:
                return
            started = time.perf_counter()
            q = embed(model, test.images[curve_rows])
            index = embed(model, train.images)
            p5 = retrieval_metrics(q, test.labels[curve_rows], index, train.labels, ks=(5,), map_queries=0).precision[5]
            curve.append(round(p5, 4))
            # Keep the evaluation out of the training time.
            on_epoch_end.eval_seconds += time.perf_counter() - started
            print(f"  epoch {metrics.epoch}: loss {metrics.loss:.4f}, precision@5 {p5:.4f} "
                  f"({args.curve_queries} queries), {metrics.images_per_second:.0f} images/s", flush=True)

        on_epoch_end.eval_seconds = 0.0
        out_dir = Path(tempfile.mkdtemp(prefix="sim-quality-"))
        started = time.perf_counter()
        result = train_on_arrays(config, train.images, train.labels, out_dir, on_epoch_end=on_epoch_end,
                                 table_uri=args.table, table_version=train.version)
        train_seconds = time.perf_counter() - started - on_epoch_end.eval_seconds
        from kuberec.similarity.model import load_embedding_model

        model = load_embedding_model(result.model_dir)
        started = time.perf_counter()
        metrics = retrieval_metrics(embed(model, test.images), test.labels, embed(model, train.images), train.labels)
        eval_seconds = time.perf_counter() - started
        row = {"config": config.to_dict(), "train_seconds": round(train_seconds, 1),
               "eval_seconds": round(eval_seconds, 1), "epochs_seconds": [m.seconds for m in result.history],
               "images_per_second": [m.images_per_second for m in result.history],
               "steps_per_epoch": result.steps_per_epoch, "curve_precision_at_5": curve,
               "model": metrics.flat(), "raw_pixels": baseline.flat(), "table_version": train.version}
        results.append(row)
        print(json.dumps(row), flush=True)
        print(f"| {config.architecture} | {config.embedding_dim} | {config.epochs} | {result.steps_per_epoch} | "
              f"{config.lr_schedule} {config.learning_rate:g} | {train_seconds / 60:.1f} min | "
              f"{metrics.precision[1]:.4f} | {metrics.precision[5]:.4f} | {metrics.precision[10]:.4f} | "
              f"{metrics.recall[5]:.4f} | {metrics.map_at_r:.4f} | {metrics.knn_accuracy:.4f} |", flush=True)
        shutil.rmtree(out_dir, ignore_errors=True)
    return results


def throughput(args) -> dict:
    """Best of `--repeats` interleaved runs of each way of feeding the step (the machine is shared: the least
    disturbed run is the closest to the truth, and interleaving spreads load changes over all variants)."""
    import tensorflow as tf

    from kuberec.datasets import fashion_mnist as fm

    config = SimilarityConfig.from_dict(json.loads(args.config[0])) if args.config else SimilarityConfig()
    tf.random.set_seed(0)
    model = build_model(config)
    optimizer = tf.keras.optimizers.Adam(config.learning_rate)
    loss_fn = build_loss()
    batch = config.batch_size

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    def sampled_loop(images: np.ndarray, labels: np.ndarray):
        """The training loop of kuberec.similarity.train: class-balanced index batches gathered in the graph."""
        batches = ClassBalancedSampler(labels, config.classes_per_batch, config.examples_per_class).epoch(0, args.steps)
        images_t, labels_t = tf.constant(images), tf.constant(labels)

        @tf.function
        def sampled_step(idx):
            return step(tf.cast(tf.gather(images_t, idx), tf.float32)[..., None] / 255.0, tf.gather(labels_t, idx))

        sampled_step(batches[0]).numpy()  # trace outside the timing

        def run() -> float:
            started = time.perf_counter()
            total = tf.constant(0.0)
            for idx in batches:
                total += sampled_step(idx)
            total.numpy()
            return time.perf_counter() - started
        return run

    def dataset_loop(iterator):
        x, y = next(iterator)
        step(x, y).numpy()

        def run() -> float:
            started = time.perf_counter()
            total = tf.constant(0.0)
            for _ in range(args.steps):
                x, y = next(iterator)
                total += step(x, y)
            total.numpy()
            return time.perf_counter() - started
        return run

    # In memory: the same pixels, parsed from the original IDX files.
    directory = fm.acquire(load_settings())
    spec_i, spec_l = fm.idx_file("train", "images"), fm.idx_file("train", "labels")
    mem_images = fm.parse_idx(spec_i, fm.decompress("", fm.find_file(directory, spec_i).read_bytes()))
    mem_labels = fm.parse_idx(spec_l, fm.decompress("", fm.find_file(directory, spec_l).read_bytes())).astype(np.int32)
    memory_dataset = tf.data.Dataset.from_tensor_slices(
        ((mem_images.astype(np.float32) / 255.0)[..., None], mem_labels)).repeat().batch(batch).prefetch(2)

    times: dict[str, list[float]] = {"load": [], "in_memory": [], "feed_arrays": [], "streaming": [],
                                     "in_memory_dataset": []}
    in_memory = sampled_loop(mem_images, mem_labels)
    with feed.make_dataset(args.table, split="train", batch_size=batch, num_epochs=None) as dataset:
        streaming, in_memory_dataset = dataset_loop(iter(dataset)), dataset_loop(iter(memory_dataset))
        for repeat in range(args.repeats):
            started = time.perf_counter()
            arrays = feed.load_arrays(args.table, split="train")
            times["load"].append(time.perf_counter() - started)
            times["feed_arrays"].append(sampled_loop(arrays.images, arrays.labels)())
            times["in_memory"].append(in_memory())
            times["streaming"].append(streaming())
            times["in_memory_dataset"].append(in_memory_dataset())
            log.info("repeat %d: %s", repeat + 1, {k: round(v[-1], 2) for k, v in times.items()})
    best = {k: min(v) for k, v in times.items()}
    images = args.steps * batch
    results = {"config": config.to_dict(), "steps": args.steps, "batch_size": batch, "repeats": args.repeats,
               "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
               "in_memory_images_per_second": round(images / best["in_memory"], 1),
               "feed_images_per_second": round(images / (best["load"] + best["feed_arrays"]), 1),
               "streaming_images_per_second": round(images / best["streaming"], 1),
               "in_memory_dataset_images_per_second": round(images / best["in_memory_dataset"], 1)}
    results["ratio_feed"] = round(best["in_memory"] / (best["load"] + best["feed_arrays"]), 3)
    results["ratio_streaming"] = round(best["in_memory_dataset"] / best["streaming"], 3)
    steps_per_run = config.epochs * 750  # the default run on 60,000 images
    per_step = best["feed_arrays"] / args.steps
    results["ratio_feed_default_run"] = round(per_step * steps_per_run / (best["load"] + per_step * steps_per_run), 4)
    print(json.dumps(results, indent=2))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=None, help="Fashion-MNIST Delta table (default: the project's lake)")
    parser.add_argument("--config", action="append", default=[], help="SimilarityConfig JSON (repeatable)")
    parser.add_argument("--curve-queries", type=int, default=0, help="per-epoch precision@5 on this many queries")
    parser.add_argument("--throughput", action="store_true", help="measure training throughput instead")
    parser.add_argument("--steps", type=int, default=300, help="steps per throughput measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per throughput measurement")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("absl").setLevel(logging.WARNING)
    args.table = args.table or load_settings().table_uri("fashion_mnist")
    header = {"machine": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "table": args.table, "argv": sys.argv}
    if args.throughput:
        results = {**header, "throughput": throughput(args)}
    else:
        train, test = feed.load_arrays(args.table, split="train"), feed.load_arrays(args.table, split="test")
        results = {**header, "quality": quality(args, train, test)}
    results["load_average_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
