"""CLI: `kuberec train | evaluate | register similarity`, each one step of kuberec.similarity.steps, linked by the
training run's MLflow id (the index verbs: kuberec.similarity.index.commands)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kuberec.cli import Command
from kuberec.ingest.catalog import TABLE_NAME as CATALOG_TABLE
from kuberec.lake.delta import TableRef
from kuberec.settings import Settings

TABLE_HELP = "catalog Delta table (default: the lake's fashion_mnist)"


def _table(settings: Settings, uri: str | None, version: int | None) -> TableRef:
    """`uri` (default: the lake's catalog) at `version` (default: latest)."""
    from kuberec.lake.delta import table_version

    uri = uri or settings.table_uri(CATALOG_TABLE)
    return TableRef(uri, table_version(uri) if version is None else version)


def _train(args: argparse.Namespace) -> None:
    from kuberec import tracking
    from kuberec.model_commands import training_inputs
    from kuberec.similarity import steps
    from kuberec.similarity.config import SimilarityConfig
    from kuberec.similarity.train import TrainResult
    from kuberec.training.launch import TRAIN_DIR_TAG

    given = training_inputs(args, SimilarityConfig, _table)
    run_id = steps.train(given.settings, given.table, given.config, workers=given.workers,
                         max_examples=args.max_examples, out_dir=given.out_dir, resume=given.resume)
    evaluate = f"kuberec evaluate similarity --run {run_id}"
    if given.settings.backend != "local":  # the outputs are on the cluster's volume, not here
        print(f"training finished: MLflow run {run_id}\nevaluate: {evaluate}")
        return
    out_dir = given.out_dir or Path(tracking.client(given.settings).get_run(run_id).data.tags[TRAIN_DIR_TAG])
    result = TrainResult.load(out_dir)
    last = result.history[-1]
    print(f"trained {result.config.architecture} on {result.table_uri}@v{result.table_version} with "
          f"{result.world_size} worker(s): {len(result.history)} epochs, final loss {last.loss:.4f}\n"
          f"MLflow run: {run_id}\nmodel: {result.model_dir}\nevaluate: {evaluate}")


def _train_args(parser: argparse.ArgumentParser) -> None:
    from kuberec.model_commands import add_table_arguments, add_training_arguments
    from kuberec.similarity.config import SimilarityConfig

    add_table_arguments(parser, TABLE_HELP)
    parser.add_argument("--max-examples", type=int, help="use at most this many training images (quick runs)")
    add_training_arguments(parser, "similarity", SimilarityConfig)


def _evaluate(args: argparse.Namespace) -> None:
    from kuberec.model_commands import named_table
    from kuberec.settings import load_settings
    from kuberec.similarity import steps
    from kuberec.similarity.evaluate import default_out_dir, evaluate_similarity

    settings = load_settings()
    if args.run_id:  # a tracked training run: the evaluation is logged into it
        result = steps.evaluate(settings, args.run_id, named_table(settings, args, _table), max_queries=args.queries)
        print(result.table())
        print(f"logged to MLflow run {args.run_id}: {result.files['json']} and {result.files['png']}\n"
              f"register: kuberec register similarity --run {args.run_id}")
        return
    table = args.table or settings.table_uri(CATALOG_TABLE)
    result = evaluate_similarity(args.model, table, args.version, args.out or default_out_dir(args.model),
                                 max_queries=args.queries, map_queries=args.map_queries)
    print(result.table())
    print(f"wrote {result.files['json']} and {result.files['png']}")


def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    from kuberec.similarity.evaluate import add_arguments

    add_arguments(parser, table_required=False)


def _register(args: argparse.Namespace) -> None:
    from kuberec.model_commands import named_table
    from kuberec.settings import load_settings
    from kuberec.similarity import steps

    settings = load_settings()
    registered = steps.register(settings, args.run_id, named_table(settings, args, _table), policy=args.champion,
                                tolerance=args.tolerance, name=args.name)
    print(f"registered {registered.name} version {registered.version}"
          f"{' (champion)' if registered.champion else ''}: {registered.items} items from "
          f"{registered.table_uri} v{registered.table_version}, {registered.model_uri}\n"
          f"{registered.decision.summary()}")


def _register_args(parser: argparse.ArgumentParser) -> None:
    from kuberec.model_commands import add_register_arguments, add_run_argument, add_table_arguments
    from kuberec.similarity.config import REGISTERED_NAME

    add_run_argument(parser, "similarity")
    add_table_arguments(parser, "catalog table to index (default: the table version the run trained on)")
    add_register_arguments(parser, REGISTERED_NAME)


COMMANDS = [
    Command("train", "similarity", "Horovod job: train the image-similarity model on the Delta table",
            _train, _train_args),
    Command("evaluate", "similarity",
            "retrieval quality (precision/recall@k, mAP@R, k-NN accuracy) of a model vs raw pixels",
            _evaluate, _evaluate_args),
    Command("register", "similarity", "index the catalog with a trained run's model and register model + index "
            "in MLflow", _register, _register_args),
]
