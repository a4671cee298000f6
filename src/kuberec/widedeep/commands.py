"""CLI: `kuberec train | evaluate | register widedeep`, each one step of kuberec.widedeep.steps, linked by the
training run's MLflow id. `--examples` is the old name of `--table` and still accepted."""

from __future__ import annotations

import argparse

from kuberec.cli import Command
from kuberec.lake.delta import TableRef
from kuberec.settings import Settings

TABLE_HELP = "gold examples Delta table (default: the lake's instacart_gold_examples)"


def _table(settings: Settings, uri: str | None, version: int | None) -> TableRef:
    """`uri` (default: the lake's gold examples) at `version` (default: latest); a clear error if it is missing."""
    from kuberec.ingest.instacart_features import EXAMPLES_TABLE, gold_tables

    uri = uri or settings.table_uri(EXAMPLES_TABLE)
    return TableRef(uri, gold_tables(uri, version)[uri])


def _train(args: argparse.Namespace) -> None:
    from kuberec import tracking
    from kuberec.model_commands import training_inputs
    from kuberec.widedeep import steps
    from kuberec.widedeep.config import WideDeepConfig

    given = training_inputs(args, WideDeepConfig, _table)
    run_id = steps.train(given.settings, given.table, given.config, workers=given.workers, out_dir=given.out_dir,
                         resume=given.resume)
    metrics = tracking.client(given.settings).get_run(run_id).data.metrics
    print(f"trained {given.config.kind} on {given.table} with {given.workers} worker(s), {given.config.epochs} "
          f"epochs, final loss {metrics.get('loss', float('nan')):.4f}: MLflow run {run_id}\n"
          f"evaluate: kuberec evaluate widedeep --run {run_id}")


def _train_args(parser: argparse.ArgumentParser) -> None:
    from kuberec.model_commands import add_table_arguments, add_training_arguments
    from kuberec.widedeep.config import WideDeepConfig

    add_table_arguments(parser, TABLE_HELP, "--examples")
    add_training_arguments(parser, "widedeep", WideDeepConfig)


def _evaluate(args: argparse.Namespace) -> None:
    from kuberec.model_commands import named_table
    from kuberec.settings import load_settings
    from kuberec.widedeep import steps

    settings = load_settings()
    result = steps.evaluate(settings, args.run_id, named_table(settings, args, _table))
    print(result.table())
    print(f"logged to MLflow run {args.run_id}: {result.files['json']}\n"
          f"register: kuberec register widedeep --run {args.run_id}")


def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    from kuberec.model_commands import add_run_argument, add_table_arguments

    add_run_argument(parser, "widedeep")
    add_table_arguments(parser, "gold examples table to test on (default: the table and version the run trained on)",
                        "--examples")


def _register(args: argparse.Namespace) -> None:
    from kuberec.model_commands import named_table
    from kuberec.settings import load_settings
    from kuberec.widedeep import steps

    settings = load_settings()
    registered = steps.register(settings, args.run_id, named_table(settings, args, _table), policy=args.champion,
                                tolerance=args.tolerance, name=args.name)
    print(f"registered {registered.name} version {registered.version}"
          f"{' (champion)' if registered.champion else ''}: {registered.model_uri}\n"
          f"{registered.decision.summary()}")


def _register_args(parser: argparse.ArgumentParser) -> None:
    from kuberec.model_commands import add_register_arguments, add_run_argument, add_table_arguments
    from kuberec.widedeep.config import REGISTERED_NAME

    add_run_argument(parser, "widedeep")
    add_table_arguments(parser, "gold examples table whose feature build the ranker serves with (default: the build "
                                "the run trained on)", "--examples")
    add_register_arguments(parser, REGISTERED_NAME)


COMMANDS = [
    Command("train", "widedeep", "Horovod job: train the wide & deep model on the gold examples (Petastorm feed), "
                                 "tracked in MLflow", _train, _train_args),
    Command("evaluate", "widedeep", "AUC, log loss, MAP@10 of a trained run vs wide-only, deep-only, popularity",
            _evaluate, _evaluate_args),
    Command("register", "widedeep", "log a trained run's model + its features as an MLflow pyfunc and register it",
            _register, _register_args),
]
