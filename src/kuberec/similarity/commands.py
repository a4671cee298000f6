"""CLI: `kuberec train similarity` (Horovod job through the configured backend), `kuberec evaluate similarity`."""

from __future__ import annotations

import argparse
from pathlib import Path

from kuberec.cli import Command
from kuberec.errors import KuberecError
from kuberec.ingest.catalog import TABLE_NAME as CATALOG_TABLE


def _train(args: argparse.Namespace) -> None:
    from kuberec import tracking
    from kuberec.config import config_from_flags
    from kuberec.distributed import TRAIN_DIR_TAG
    from kuberec.lake.delta import TableRef, table_version
    from kuberec.settings import load_settings
    from kuberec.similarity import steps
    from kuberec.similarity.config import SimilarityConfig
    from kuberec.similarity.train import TrainResult

    settings = load_settings()
    # Validated here: a bad value fails before any worker starts.
    config = config_from_flags(vars(args), SimilarityConfig)
    table_uri = args.table or settings.table_uri(CATALOG_TABLE)
    table = TableRef(table_uri, table_version(table_uri) if args.version is None else args.version)
    out_dir = Path(args.out).absolute() if args.out else None
    if args.resume and out_dir is None:
        raise KuberecError("--resume continues the run in --out; name it (without --out, a rerun after a failure "
                           "continues the failed run of the same inputs by itself)")
    # Without --out the step picks <home>/runs/similarity-<run id>, which a rerun after a failure continues.
    run_id = steps.train(settings, table, config, workers=args.workers, max_examples=args.max_examples,
                         out_dir=out_dir, resume=args.resume)
    evaluate = f"kuberec evaluate similarity --run {run_id}"
    if settings.backend != "local":  # the outputs are on the cluster's volume, not here
        print(f"training finished: MLflow run {run_id}\nevaluate: {evaluate}")
        return
    result = TrainResult.load(out_dir or Path(tracking.client(settings).get_run(run_id).data.tags[TRAIN_DIR_TAG]))
    last = result.history[-1]
    print(f"trained {result.config.architecture} on {result.table_uri}@v{result.table_version} with "
          f"{result.world_size} worker(s): {len(result.history)} epochs, final loss {last.loss:.4f}\n"
          f"MLflow run: {run_id}\nmodel: {result.model_dir}\nevaluate: {evaluate}")


def _train_args(parser: argparse.ArgumentParser) -> None:
    from kuberec.config import add_config_arguments
    from kuberec.similarity.config import SimilarityConfig

    parser.add_argument("--workers", type=int, default=1, help="Horovod workers (default 1)")
    parser.add_argument("--table", help="Delta table (default: the lake's fashion_mnist)")
    parser.add_argument("--version", type=int, help="table version to train on (default: latest)")
    parser.add_argument("--out", help="output directory (default: <home>/runs/similarity-<MLflow run id>, which a "
                                      "rerun after a failure continues from its last checkpoint)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    parser.add_argument("--max-examples", type=int, help="use at most this many training images (quick runs)")
    add_config_arguments(parser, SimilarityConfig)


def _evaluate(args: argparse.Namespace) -> None:
    from kuberec.lake.delta import TableRef, table_version
    from kuberec.settings import load_settings
    from kuberec.similarity import steps
    from kuberec.similarity.evaluate import default_out_dir, evaluate_similarity

    settings = load_settings()
    table = args.table or settings.table_uri(CATALOG_TABLE)
    if args.run_id:  # a tracked training run: the evaluation is logged into it
        version = table_version(table) if args.version is None else args.version
        result = steps.evaluate(settings, args.run_id, TableRef(table, version), max_queries=args.queries)
        print(result.table())
        print(f"logged to MLflow run {args.run_id}: {result.files['json']} and {result.files['png']}")
        return
    result = evaluate_similarity(args.model, table, args.version, args.out or default_out_dir(args.model),
                                 max_queries=args.queries, map_queries=args.map_queries)
    print(result.table())
    print(f"wrote {result.files['json']} and {result.files['png']}")


def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    from kuberec.similarity.evaluate import add_arguments

    add_arguments(parser, table_required=False)


COMMANDS = [
    Command("train", "similarity", "Horovod job: train the image-similarity model on the Delta table",
            _train, _train_args),
    Command("evaluate", "similarity",
            "retrieval quality (precision/recall@k, mAP@R, k-NN accuracy) of a model vs raw pixels",
            _evaluate, _evaluate_args),
]
