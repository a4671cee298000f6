"""What a sweep buys: the best configuration a `kuberec tune` sweep finds vs the config's defaults, same budget.

For one model, on the lake given by --lake (read only; the sweep's MLflow runs and Ray experiment go to a
throwaway home):
1. the sweep, exactly as `kuberec tune <model>` runs it (kuberec.tuning.steps.tune: Ray Tune + Optuna TPE + ASHA
   in a child process), timed: wall time, trials finished / failed / stopped early, trials per hour;
2. the default config (the dataclass defaults, with the sweep's epochs and seed) and the sweep's best config, each
   trained once more here with the same training function on the same data, then scored on the **test** split,
   which the sweep never saw (it chose on a validation split):
   - similarity: `train_on_arrays` on the sweep's training images; test-split queries against those images:
     precision@5, recall@5, mAP@R, 5-NN accuracy (kuberec.similarity.evaluate.retrieval_metrics);
   - widedeep: `train_widedeep_model` on the train split; AUC, log loss, MAP@10 on the test split
     (kuberec.widedeep.evaluate.metrics).

    .venv/bin/python benchmarks/tuning_bench.py --model similarity --lake .kuberec/lake --trials 12 --epochs 3 \\
        --max-examples 10000 --space '{"architecture": {"choice": ["seed", "databricks"]}}' --json /tmp/tune-sim.json
    .venv/bin/python benchmarks/tuning_bench.py --model widedeep --lake .kuberec/lake --trials 10 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from kuberec.lake.delta import TableRef, table_version
from kuberec.models import model_record
from kuberec.settings import load_settings
from kuberec.similarity import trial as similarity_trial
from kuberec.tracking import server as mlflow_server
from kuberec.tuning import steps

log = logging.getLogger("tuning_bench")


def similarity_test_metrics(config, table: TableRef, max_examples: int | None, seed: int,
                            test_queries: int) -> dict[str, float]:
    import numpy as np

    from kuberec.lake import feed
    from kuberec.similarity.metrics import retrieval_metrics
    from kuberec.similarity.model import embed, load_embedding_model
    from kuberec.similarity.train import train_on_arrays

    data = similarity_trial.load_data(table, max_examples=max_examples, seed=seed)  # the trials' training images
    test = feed.load_arrays(table.uri, version=table.version, split="test")
    rows = np.sort(np.random.default_rng(seed).permutation(len(test.images))[:test_queries])
    with tempfile.TemporaryDirectory(prefix="tuning-bench-") as out:
        started = time.perf_counter()
        result = train_on_arrays(config, data.train_images, data.train_labels, out)
        seconds = time.perf_counter() - started
        model = load_embedding_model(result.model_dir)
        found = retrieval_metrics(embed(model, test.images[rows]), test.labels[rows], embed(model, data.train_images),
                                  data.train_labels, ks=(5,), map_queries=500, seed=seed)
    return {"precision_at_5": found.precision[5], "recall_at_5": found.recall[5], "map_at_r": found.map_at_r,
            "knn_accuracy_at_5": found.knn_accuracy, "train_seconds": round(seconds, 1),
            "train_images": len(data.train_images), "test_queries": len(rows)}


def widedeep_test_metrics(config, table: TableRef) -> dict[str, float]:
    from kuberec.lake import feed
    from kuberec.widedeep.config import FEED_COLUMNS
    from kuberec.widedeep.metrics import metrics
    from kuberec.widedeep.model import predict
    from kuberec.widedeep.train import train_widedeep_model

    test = feed.load_table_arrays(table.uri, FEED_COLUMNS, version=table.version, split="test")
    with tempfile.TemporaryDirectory(prefix="tuning-bench-") as out:
        started = time.perf_counter()
        result, model = train_widedeep_model(config, table.uri, out, version=table.version, save=False)
        seconds = time.perf_counter() - started
    scores = predict(model, test.columns)
    return {**metrics(test.columns["user_id"], test.columns["label"], scores), "train_seconds": round(seconds, 1),
            "train_rows": result.train_examples, "test_rows": len(test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=("similarity", "widedeep"))
    parser.add_argument("--lake", required=True, help="lake directory holding the model's table (read only)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="per trial, and for both retrained configs")
    parser.add_argument("--time-budget", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-examples", type=int, default=None, help="similarity: training images")
    parser.add_argument("--space", default=None, help="search space JSON merged over the default one")
    parser.add_argument("--test-queries", type=int, default=2000, help="similarity: test queries scored")
    parser.add_argument("--json", help="write all results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    home = Path(tempfile.mkdtemp(prefix="tuning-bench-home-"))
    os.environ.update(KUBEREC_HOME=str(home), KUBEREC_LAKE=str(Path(args.lake).absolute()))
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the throwaway home's own MLflow server
    settings = load_settings()
    uri = settings.table_uri(model_record(args.model).default_table)
    table = TableRef(uri, table_version(uri))
    try:
        started = time.perf_counter()
        result = steps.tune(settings, args.model, table, trials=args.trials, concurrent=args.concurrent,
                            time_budget_s=args.time_budget, seed=args.seed, max_examples=args.max_examples,
                            epochs=args.epochs, space=json.loads(args.space) if args.space else None)
        sweep_seconds = time.perf_counter() - started
    finally:
        mlflow_server.stop_server(settings)
    ran = result.trials_finished + result.trials_failed
    sweep = {"trials": args.trials, "finished": result.trials_finished, "failed": result.trials_failed,
             "stopped_early": result.trials_stopped_early, "wall_seconds": round(sweep_seconds, 1),
             "trials_per_hour": round(ran / sweep_seconds * 3600, 1), "best_validation": result.best_metric,
             "metric": result.metric}
    print(json.dumps({"sweep": sweep}), flush=True)

    config_class = model_record(args.model).config_class
    epochs = result.best_config["epochs"]
    configs = {"default": config_class(epochs=epochs, seed=args.seed), "best": result.config()}
    rows: dict[str, Any] = {}
    for label, config in configs.items():
        if args.model == "similarity":
            scores = similarity_test_metrics(config, table, args.max_examples, args.seed, args.test_queries)
        else:
            scores = widedeep_test_metrics(config, table)
        rows[label] = {"config": config.to_dict(), "test": scores}
        print(json.dumps({label: rows[label]}), flush=True)

    report = {"model": args.model, "table": str(table), "sweep": sweep, "configs": rows, "args": vars(args),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    keys = [k for k in rows["best"]["test"] if not k.endswith(("_images", "_queries", "_rows"))]
    print(f"\n{args.model}: sweep of {args.trials} trials in {sweep_seconds / 60:.1f} min ({sweep['trials_per_hour']} "
          f"trials/hour), {result.trials_finished} finished ({result.trials_stopped_early} stopped early), "
          f"{result.trials_failed} failed; best validation {result.metric} {result.best_metric:.4f}")
    print("| config | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(f"{row['test'][k]:.1f}" if k.endswith("_seconds") else
                                           f"{row['test'][k]:.4f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
