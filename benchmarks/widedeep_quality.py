"""Wide & deep quality against its baselines, and training throughput through Petastorm vs in memory.

Builds (once, kept under --root) a generated Instacart-format dataset -> bronze -> gold with local Spark, then:

quality: `kuberec.widedeep.evaluate.evaluate_widedeep` trains wide & deep, wide-only and deep-only with the same
config on the train split and scores them and the popularity baseline on the test split (AUC, log loss, MAP@10).
throughput: examples/s of the same training step fed (a) by `feed.make_table_dataset` (Delta snapshot ->
Petastorm -> tf.data, streaming, as training does) and (b) from numpy arrays already in memory
(`tf.data.Dataset.from_tensor_slices`), over the same number of steps after a warm-up.

    .venv/bin/python benchmarks/widedeep_quality.py --users 20000 --root /tmp/wd-bench --json /tmp/wd-bench.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import kuberec  # noqa: F401  (legacy Keras before TensorFlow)
from kuberec import feed
from kuberec.ingest import instacart_features as gold
from kuberec.settings import Settings
from kuberec.widedeep import model as wd
from kuberec.widedeep.evaluate import evaluate_widedeep
from kuberec.widedeep.train import FEED_COLUMNS

log = logging.getLogger("widedeep_quality")


def build_lake(root: Path, users: int, seed: int) -> Settings:
    from kuberec.datasets.instacart_synth import generate
    from kuberec.ingest.instacart import ingest_instacart
    from kuberec.lake import spark_session
    from kuberec.lake.delta import table_exists

    settings = Settings(home=root / "home", cache_dir=Path(".kuberec/cache").absolute(), spark_master="local[2]")
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


def throughput(examples_uri: str, config: wd.WideDeepConfig, steps: int, warmup: int = 20) -> dict[str, float]:
    import tensorflow as tf

    arrays = feed.load_table_arrays(examples_uri, FEED_COLUMNS, split="train")
    stats = wd.FeatureStats.from_sums(*wd.feature_sums(arrays.columns))

    def run(dataset) -> float:
        tf.keras.utils.set_random_seed(config.seed)
        model = wd.build_model(config, stats)
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

    memory = run(tf.data.Dataset.from_tensor_slices(arrays.columns).repeat().shuffle(config.shuffle_buffer, seed=0)
                 .batch(config.batch_size).prefetch(tf.data.AUTOTUNE))
    with feed.make_table_dataset(examples_uri, FEED_COLUMNS, split="train", batch_size=config.batch_size,
                                 num_epochs=None, shuffle=True, seed=0,
                                 shuffle_buffer=config.shuffle_buffer) as dataset:
        petastorm = run(dataset)
    return {"in_memory_examples_per_s": round(memory, 1), "petastorm_examples_per_s": round(petastorm, 1),
            "petastorm_over_in_memory": round(petastorm / memory, 3), "steps": steps,
            "batch_size": config.batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--root", type=Path, default=Path("/tmp/kuberec-widedeep-bench"))
    parser.add_argument("--config", default="{}", help="WideDeepConfig overrides as JSON")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per throughput measurement")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = wd.WideDeepConfig.from_dict({"batch_size": 512, "epochs": 2, **json.loads(args.config)})
    settings = build_lake(args.root, args.users, args.seed)
    examples_uri = settings.table_uri(gold.EXAMPLES_TABLE)
    report = {"users": args.users, "seed": args.seed, "config": config.to_dict(), "machine": platform.platform()}
    if not args.skip_quality:
        started = time.perf_counter()
        result = evaluate_widedeep(examples_uri, args.root / "evaluation", config=config)
        report["quality"] = {"metrics": result.metrics, "test_rows": result.test_rows,
                             "train_rows": result.train_rows, "train_seconds": result.seconds,
                             "seconds": round(time.perf_counter() - started, 1)}
        print(result.table())
    report["throughput"] = throughput(examples_uri, config, args.steps)
    print(json.dumps(report["throughput"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
