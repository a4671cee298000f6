"""Wide & deep at scale: where a training step's time and a worker's memory go, and the trainer's throughput with
the pipeline's 2 Horovod workers, on lakes built by `widedeep_quality.py` (its `--root .../seed<S>` directories).

    .venv/bin/python benchmarks/widedeep_scale.py --lake 20000=/tmp/wdc/seed0 --lake 206209=/tmp/wdf/seed0 \
        --json /tmp/wd-scale.json

For each lake (LABEL=DIR), in order:

1. vocabulary: seconds and this process's RSS growth to read the train split's `VOCABULARY_COLUMNS` and build the
   wide part's `Vocabulary` (what every worker does before training); its sizes.
2. feed: examples/s of `feed.make_table_dataset` alone (the trainer's columns, batch, shuffle buffer; one shard of
   one), after a warm-up.
3. step: ms per training step on batches already in memory (no feed), for the forward pass, forward + backward,
   and the whole step with the wide part under Keras's `Ftrl` (which applies an embedding's sparse gradient as a
   dense tensor over the whole vocabulary) and under `SparseFtrl` (the trainer's).
4. scoring: examples/s of `predict` (the evaluation's and the served model's path) and of the metrics (per-user AUC,
   MAP@10, basket F1) on the test split's first rows.
5. training: `python -m kuberec.widedeep.train` under horovodrun with 2 workers (the pipeline's), `--epochs 2
   --steps-per-epoch S`, early stopping off, as the local backend launches it; the second epoch's examples/s (the
   first includes the feed's start) and each worker's peak RSS, sampled every 0.5 s.

`ratio_to_first` is each lake's training examples/s over the first lake's (one run, same machine). The trainer of
an older tree: `PYTHONPATH=<its checkout>/src ... --training-only`.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from sampling import Every

from kuberec.ingest import instacart_features as gold
from kuberec.lake import feed
from kuberec.widedeep import model as wd
from kuberec.widedeep.config import FEED_COLUMNS, WideDeepConfig
from kuberec.widedeep.metrics import metrics

log = logging.getLogger("widedeep_scale")


def rss_gib(process: psutil.Process) -> float:
    return process.memory_info().rss / 2 ** 30


def vocabulary_phase(examples_uri: str) -> tuple[wd.Vocabulary, dict]:
    me = psutil.Process()
    before, started = rss_gib(me), time.perf_counter()
    arrays = feed.load_table_arrays(examples_uri, wd.VOCABULARY_COLUMNS, split="train").columns
    loaded = time.perf_counter()
    vocabulary = wd.Vocabulary.from_columns(arrays)
    done = time.perf_counter()
    peak = rss_gib(me)
    del arrays
    return vocabulary, {"read_s": round(loaded - started, 2), "build_s": round(done - loaded, 2),
                        "rss_growth_gib": round(peak - before, 2), "sizes": vocabulary.sizes()}


def feed_phase(examples_uri: str, config: WideDeepConfig, steps: int, warmup: int = 20) -> tuple[list, dict]:
    """(the first batches as numpy, for the step phase; the feed's examples/s)."""
    kept = []
    with feed.make_table_dataset(examples_uri, FEED_COLUMNS, split="train", batch_size=config.batch_size,
                                 num_epochs=None, shuffle=True, seed=config.seed,
                                 shuffle_buffer=config.shuffle_buffer) as dataset:
        batches = iter(dataset)
        for _ in range(warmup):
            kept.append({k: v.numpy() for k, v in next(batches).items()})
        started = time.perf_counter()
        for _ in range(steps):
            next(batches)
        seconds = time.perf_counter() - started
    return kept, {"examples_per_s": round(steps * config.batch_size / seconds, 1)}


def step_phase(batches: list, stats: wd.FeatureStats, vocabulary: wd.Vocabulary, config: WideDeepConfig,
               steps: int) -> dict:
    import tensorflow as tf

    inputs = [(wd.to_model_inputs(b), tf.constant(b["label"])) for b in batches]

    def timed(fn) -> float:
        for features, labels in inputs[:3]:  # trace and warm up
            fn(features, labels)
        started = time.perf_counter()
        for i in range(steps):
            features, labels = inputs[i % len(inputs)]
            result = fn(features, labels)
        float(tf.reduce_sum(result))  # wait for the last step
        return round((time.perf_counter() - started) / steps * 1000, 3)

    tf.keras.utils.set_random_seed(config.seed)
    model = wd.build_model(config, stats, vocabulary)
    loss_fn = tf.keras.losses.BinaryCrossentropy()

    @tf.function
    def forward(features, labels):
        return loss_fn(tf.cast(labels, tf.float32), model(features, training=True))

    @tf.function
    def backward(features, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(tf.cast(labels, tf.float32), model(features, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        return tf.add_n([tf.reduce_sum(tf.convert_to_tensor(g)) if not isinstance(g, tf.IndexedSlices)
                         else tf.reduce_sum(g.values) for g in grads])

    result = {"forward_ms": timed(forward), "forward_backward_ms": timed(backward)}
    for name, wide_class in (("step_keras_ftrl_ms", tf.keras.optimizers.Ftrl), ("step_sparse_ftrl_ms", wd.SparseFtrl)):
        wide_opt, deep_opt = wd.build_optimizers(config, model)
        if wide_class is not wd.SparseFtrl:
            wide_opt = wide_class(config.wide_learning_rate, l1_regularization_strength=config.ftrl_l1,
                                  l2_regularization_strength=config.ftrl_l2,
                                  initial_accumulator_value=config.ftrl_initial_accumulator)
            wide_opt.build(wd.split_variables(model)[0])
        result[name] = timed(wd.make_train_step(model, wide_opt, deep_opt))
    return result


def scoring_phase(examples_uri: str, stats: wd.FeatureStats, vocabulary: wd.Vocabulary, config: WideDeepConfig,
                  rows: int) -> dict:
    test = feed.load_table_arrays(examples_uri, FEED_COLUMNS, split="test").columns
    test = {k: v[:rows] for k, v in test.items()}
    model = wd.build_model(config, stats, vocabulary)
    wd.predict(model, {k: v[:8192] for k, v in test.items()})  # trace
    started = time.perf_counter()
    scores = wd.predict(model, test)
    predicted = time.perf_counter()
    metrics(test["user_id"], test["label"], scores, threshold=0.2)
    done = time.perf_counter()
    return {"predict_examples_per_s": round(len(scores) / (predicted - started), 1),
            "metrics_examples_per_s": round(len(scores) / (done - predicted), 1)}


class PeakRss(Every):
    """Peak RSS (GiB) of each `python -m kuberec.widedeep.train` process below this one, sampled every 0.5 s while a
    `with` block runs."""

    def __init__(self) -> None:
        super().__init__(0.5, self._take)
        self.peaks: dict[int, float] = {}

    def _take(self) -> None:
        for child in psutil.Process().children(recursive=True):
            try:
                command = child.cmdline()
                if "kuberec.widedeep.train" in command and "kuberec.backends.horovodrun" not in command:
                    self.peaks[child.pid] = max(self.peaks.get(child.pid, 0.0), rss_gib(child))
            except psutil.Error:
                pass


def training_phase(settings, examples_uri: str, config: WideDeepConfig, steps: int, workers: int) -> dict:
    from kuberec.backends.jobs import HorovodJob
    from kuberec.backends.local import LocalBackend

    with tempfile.TemporaryDirectory(prefix="wd-scale-") as out:
        args = ("--table", examples_uri, "--out", out, "--config",
                json.dumps(config.replace(epochs=2, steps_per_epoch=steps, early_stopping_patience=0).to_dict()))
        started = time.perf_counter()
        with PeakRss() as rss:
            LocalBackend(settings).run_horovod(HorovodJob("widedeep-scale", "kuberec.widedeep.train", args,
                                                          workers=workers))
        wall = time.perf_counter() - started
        result = json.loads((Path(out) / "train_result.json").read_text())
    history = result["history"]
    return {"wall_s": round(wall, 1), "epoch_s": [h["seconds"] for h in history],
            "examples_per_s": history[-1]["examples_per_second"], "train_rows": result["train_examples"],
            "worker_peak_rss_gib": sorted(round(v, 2) for v in rss.peaks.values())}


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from widedeep_quality import lake_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", action="append", required=True, help="LABEL=DIR (a widedeep_quality seed dir)")
    parser.add_argument("--config", default='{"batch_size": 1024}', help="WideDeepConfig fields as JSON")
    parser.add_argument("--feed-steps", type=int, default=3000)
    parser.add_argument("--step-steps", type=int, default=100)
    parser.add_argument("--score-rows", type=int, default=500_000)
    parser.add_argument("--train-steps", type=int, default=1000, help="steps per epoch of the 2-worker run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--training-only", action="store_true",
                        help="only phase 5, e.g. for another tree's trainer: PYTHONPATH=<tree>/src (this script "
                             "then imports that tree too, and needs nothing newer from it)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = WideDeepConfig.from_dict(json.loads(args.config))
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": psutil.cpu_count(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_avg_start": psutil.getloadavg()},
               "config": config.to_dict(), "lakes": {}}
    for spec in args.lake:
        label, root = spec.split("=", 1)
        settings = lake_settings(Path(root))
        uri = settings.table_uri(gold.EXAMPLES_TABLE)
        log.info("%s: %s", label, uri)
        lake = results["lakes"][label] = {}
        if not args.training_only:
            vocabulary, lake["vocabulary"] = vocabulary_phase(uri)
            batches, lake["feed"] = feed_phase(uri, config, args.feed_steps)
            stats = wd.FeatureStats.from_sums(*wd.feature_sums(
                {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}))
            lake["step"] = step_phase(batches, stats, vocabulary, config, args.step_steps)
            lake["step"].update(scoring_phase(uri, stats, vocabulary, config, args.score_rows))
            del vocabulary, batches
        lake["training"] = training_phase(settings, uri, config, args.train_steps, args.workers)
        log.info("%s: %s", label, json.dumps(results["lakes"][label]))
    first = next(iter(results["lakes"].values()))["training"]["examples_per_s"]
    for lake in results["lakes"].values():
        lake["training"]["ratio_to_first"] = round(lake["training"]["examples_per_s"] / first, 3)
    results["machine"]["load_avg_end"] = psutil.getloadavg()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
