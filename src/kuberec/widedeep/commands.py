"""CLI: `kuberec train widedeep` (Horovod job through the configured backend), `kuberec evaluate widedeep`,
`kuberec register widedeep`: each one step of kuberec.widedeep.steps, linked by the training run's MLflow id."""

from __future__ import annotations

import argparse

from kuberec.cli import Command
from kuberec.lake.delta import TableRef
from kuberec.settings import Settings


def _examples(settings: Settings, uri: str | None, version: int | None) -> TableRef:
    """`uri` (default: the lake's gold examples) at `version` (default: latest); a clear error if it is missing."""
    from kuberec.ingest.instacart_features import EXAMPLES_TABLE, gold_tables

    uri = uri or settings.table_uri(EXAMPLES_TABLE)
    return TableRef(uri, gold_tables(uri, version)[uri])


def _train(args: argparse.Namespace) -> None:
    from kuberec import tracking
    from kuberec.config import config_from_flags
    from kuberec.settings import load_settings
    from kuberec.widedeep import steps
    from kuberec.widedeep.config import WideDeepConfig

    settings = load_settings()
    # Validated here: a bad value fails before any run or worker starts.
    config = config_from_flags(vars(args), WideDeepConfig)
    examples = _examples(settings, args.examples, args.version)
    run_id = steps.train(settings, examples, config, args.workers)
    metrics = tracking.client(settings).get_run(run_id).data.metrics
    print(f"trained {config.kind} on {examples} with {args.workers} worker(s), {config.epochs} epochs, final loss "
          f"{metrics.get('loss', float('nan')):.4f}: MLflow run {run_id}\n"
          f"evaluate: kuberec evaluate widedeep --run {run_id}")


def _train_args(parser: argparse.ArgumentParser) -> None:
    from kuberec.config import add_config_arguments
    from kuberec.widedeep.config import WideDeepConfig

    parser.add_argument("--workers", type=int, default=1, help="Horovod workers (default 1)")
    parser.add_argument("--examples", help="gold examples table (default: the lake's instacart_gold_examples)")
    parser.add_argument("--version", type=int, help="table version to train on (default: latest)")
    add_config_arguments(parser, WideDeepConfig)


def _evaluate(args: argparse.Namespace) -> None:
    from kuberec.settings import load_settings
    from kuberec.widedeep import steps

    settings = load_settings()
    given = args.examples or args.version is not None
    result = steps.evaluate(settings, args.run_id, _examples(settings, args.examples, args.version) if given else None)
    print(result.table())
    print(f"logged to MLflow run {args.run_id}: {result.files['json']}\n"
          f"register: kuberec register widedeep --run {args.run_id}")


def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", dest="run_id", metavar="RUN_ID", required=True,
                        help="MLflow run id printed by `kuberec train widedeep`")
    parser.add_argument("--examples", help="gold examples table to test on (default: the table and version the run "
                                           "trained on)")
    parser.add_argument("--version", type=int, help="its Delta version (default with --examples: latest)")


def _register(args: argparse.Namespace) -> None:
    from kuberec.settings import load_settings
    from kuberec.widedeep import steps

    registered = steps.register(load_settings(), args.run_id, set_champion=args.champion,
                                name=args.name)
    print(f"registered {registered.name} version {registered.version}"
          f"{' (champion)' if registered.champion else ''}: {registered.model_uri}")


def _register_args(parser: argparse.ArgumentParser) -> None:
    from kuberec.widedeep.config import REGISTERED_NAME

    parser.add_argument("--run", dest="run_id", metavar="RUN_ID", required=True,
                        help="MLflow run id printed by `kuberec train widedeep`")
    parser.add_argument("--name", default=REGISTERED_NAME, help=f"registered model name (default {REGISTERED_NAME})")
    parser.add_argument("--champion", action="store_true",
                        help="make this version the champion (default: only when there is none yet)")


COMMANDS = [
    Command("train", "widedeep", "Horovod job: train the wide & deep model on the gold examples (Petastorm feed), "
                                 "tracked in MLflow", _train, _train_args),
    Command("evaluate", "widedeep", "AUC, log loss, MAP@10 of a trained run vs wide-only, deep-only, popularity",
            _evaluate, _evaluate_args),
    Command("register", "widedeep", "log a trained run's model + its features as an MLflow pyfunc and register it",
            _register, _register_args),
]
