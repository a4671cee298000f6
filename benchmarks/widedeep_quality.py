"""Wide & deep quality against its parts and two baselines over several data seeds, and training throughput
through Petastorm vs in memory.

For each seed, builds (once, kept under --root/seed<S>) a generated Instacart-format dataset -> bronze -> gold with
local Spark, then:

quality: `kuberec.widedeep.evaluate.evaluate_widedeep` trains wide & deep, wide-only and deep-only with the same
config, data and budget (as if by --workers workers), fits popularity and gradient-boosted trees, and scores all on
the test split (pooled and per-user AUC, log loss, MAP@10, recall@10, basket F1). The table gives each metric's
mean over seeds and its spread (max - min).
throughput (first seed): examples/s of the same training step fed (a) by `feed.make_table_dataset` (Delta snapshot
-> Petastorm -> tf.data, streaming and shuffling as training does) and (b) from numpy arrays already in memory,
shuffled once and cut into batches (`tf.data.Dataset.from_tensor_slices`), over the same number of steps after a
warm-up.

    .venv/bin/python benchmarks/widedeep_quality.py --users 20000 --seeds 0 1 2 --root /tmp/wd-bench \
        --json /tmp/wd-bench.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from kuberec.ingest import instacart_features as gold
from kuberec.lake import feed
from kuberec.settings import Settings
from kuberec.widedeep import model as wd
from kuberec.widedeep.config import FEED_COLUMNS, WideDeepConfig
from kuberec.widedeep.evaluate import SCORED_MODELS, evaluate_widedeep
from kuberec.widedeep.metrics import METRICS

log = logging.getLogger("widedeep_quality")


def lake_settings(root: Path) -> Settings:
    """Settings of the lake `build_lake` keeps under `root` (the other wide & deep benchmarks read it)."""
    return Settings(home=root / "home", cache_dir=Path(".kuberec/cache").absolute(), spark_master="local[2]")


def build_lake(root: Path, users: int, seed: int) -> Settings:
    from kuberec.datasets.instacart_synth import generate
    from kuberec.ingest.instacart import ingest_instacart
    from kuberec.lake.delta import table_exists
    from kuberec.lake.spark import spark_session

    settings = lake_settings(root)
    if table_exists(settings.table_uri(gold.EXAMPLES_TABLE)):
        return settings
    started = time.perf_counter()
    generate(root / "instacart", users, seed=seed)
    spark = spark_session(settings)
    try:
        ingest_instacart(settings, root / "instacart", spark)
        gold.build_features(settings, spark)
    finally:
        spark.stop()
    log.info("built the lake for %d users in %.0f s", users, time.perf_counter() - started)
    return settings


def throughput(examples_uri: str, config: WideDeepConfig, steps: int, warmup: int = 20) -> dict[str, float]:
    import tensorflow as tf

    arrays = feed.load_table_arrays(examples_uri, FEED_COLUMNS, split="train")
    stats = wd.FeatureStats.from_sums(*wd.feature_sums(arrays.columns))
    vocabulary = wd.Vocabulary.from_columns(arrays.columns)

    def run(dataset) -> float:
        tf.keras.utils.set_random_seed(config.seed)
        model = wd.build_model(config, stats, vocabulary)
        step = wd.make_train_step(model, *wd.build_optimizers(config, model))
        batches = iter(dataset)
        for _ in range(warmup):
            batch = next(batches)
            step(wd.to_model_inputs(batch), batch["label"])
        started = time.perf_counter()
        for _ in range(steps):
            batch = next(batches)
            step(wd.to_model_inputs(batch), batch["label"])
        return steps * config.batch_size / (time.perf_counter() - started)

    # Shuffled once and cut into whole batches up front (slicing rows one by one would make tf.data the bottleneck).
    batches = len(arrays.columns["label"]) // config.batch_size
    order = np.random.default_rng(0).permutation(batches * config.batch_size)
    memory = run(tf.data.Dataset.from_tensor_slices({k: v[order].reshape(batches, config.batch_size)
                                                     for k, v in arrays.columns.items()})
                 .repeat().prefetch(tf.data.AUTOTUNE))
    with feed.make_table_dataset(examples_uri, FEED_COLUMNS, split="train", batch_size=config.batch_size,
                                 num_epochs=None, shuffle=True, seed=0,
                                 shuffle_buffer=config.shuffle_buffer) as dataset:
        petastorm = run(dataset)
    return {"in_memory_examples_per_s": round(memory, 1), "petastorm_examples_per_s": round(petastorm, 1),
            "petastorm_over_in_memory": round(petastorm / memory, 3), "steps": steps,
            "batch_size": config.batch_size}


def summary(runs: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """model -> metric -> {mean, spread (max - min), values} over the seeds' runs."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for model in SCORED_MODELS:
        for metric in METRICS:
            values = [run["metrics"][model][metric] for run in runs]
            table.setdefault(model, {})[metric] = {"mean": round(sum(values) / len(values), 4),
                                                  "spread": round(max(values) - min(values), 4),
                                                  "values": [round(v, 4) for v in values]}
    return table


def print_summary(table: dict, seeds: list[int]) -> None:
    print(f"mean over seeds {seeds} (spread = max - min)")
    print(f"{'model':<12}" + "".join(f"{m:>20}" for m in METRICS))
    for model, values in table.items():
        print(f"{model:<12}" + "".join(f"{values[m]['mean']:>12.4f} ±{values[m]['spread']:<7.4f}" for m in METRICS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data seeds (one lake each)")
    parser.add_argument("--root", type=Path, default=Path("/tmp/kuberec-widedeep-bench"))
    parser.add_argument("--config", default="{}", help="WideDeepConfig overrides as JSON")
    parser.add_argument("--workers", type=int, default=2, help="the training budget of this many Horovod workers")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per throughput measurement")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = WideDeepConfig.from_dict({"batch_size": 512, **json.loads(args.config)})
    report = {"users": args.users, "seeds": args.seeds, "workers": args.workers, "config": config.to_dict(),
              "machine": platform.platform(), "runs": []}
    for seed in args.seeds:
        started = time.perf_counter()
        settings = build_lake(args.root / f"seed{seed}", args.users, seed)
        examples_uri = settings.table_uri(gold.EXAMPLES_TABLE)
        report["runs"].append({"seed": seed, "lake_seconds": round(time.perf_counter() - started, 1)})
        if not args.skip_quality:
            started = time.perf_counter()
            result = evaluate_widedeep(examples_uri, args.root / f"seed{seed}" / "evaluation", config=config,
                                       world_size=args.workers)
            report["runs"][-1].update(metrics=result.scores, thresholds=result.thresholds,
                                      test_rows=result.test_rows, train_rows=result.train_rows,
                                      train_seconds=result.seconds, seconds=round(time.perf_counter() - started, 1))
            print(result.table())
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    if not args.skip_quality:
        report["summary"] = summary(report["runs"])
        print_summary(report["summary"], args.seeds)
    if not args.skip_throughput:
        first = build_lake(args.root / f"seed{args.seeds[0]}", args.users, args.seeds[0])
        report["throughput"] = throughput(first.table_uri(gold.EXAMPLES_TABLE), config, args.steps)
        print(json.dumps(report["throughput"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
