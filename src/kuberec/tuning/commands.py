"""CLI: `kuberec tune <model>` (one per record of kuberec.models): a Ray Tune sweep (Optuna TPE + ASHA), one step
of kuberec.tuning.steps."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from kuberec.cli import Command
from kuberec.errors import KuberecError
from kuberec.models import MODELS, model_record


def _json_arg(text: str, what: str):
    """A JSON value given inline or as a path to a .json file."""
    if not text.lstrip().startswith(("{", "[")):
        path = Path(text)
        if not path.is_file():
            raise KuberecError(f"{what} {text!r} is neither JSON nor an existing file")
        text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise KuberecError(f"{what} is not valid JSON: {err}") from err


def _table(settings, model: str, uri: str | None, version: int | None):
    from kuberec.lake.delta import TableRef, table_exists, table_version

    record = model_record(model)
    uri = uri or settings.table_uri(record.default_table)
    if not table_exists(uri):
        raise KuberecError(f"no Delta table at {uri}; create it with `{record.table_command}` or pass --table")
    return TableRef(uri, table_version(uri) if version is None else version)


def _tune(args: argparse.Namespace) -> None:
    from kuberec.settings import load_settings
    from kuberec.tuning import steps

    settings = load_settings()
    model = args.target
    if args.json:  # MLflow prints run links on stdout, which must hold only the JSON
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    if args.resume:
        if not args.name:
            raise KuberecError("--resume needs the --name of the sweep to continue")
        result = steps.resume(settings, args.name, model=model, retry_failed=args.retry_failed)
    else:
        space = _json_arg(args.space, "--space") if args.space else None
        points = [_json_arg(point, "--initial-point") for point in args.initial_point]
        result = steps.tune(settings, model, _table(settings, model, args.table, args.version), trials=args.trials,
                            concurrent=args.concurrent, time_budget_s=args.time_budget, seed=args.seed,
                            max_examples=args.max_examples, epochs=args.epochs, space=space, metric=args.metric,
                            initial_points=points, name=args.name, cpus_per_trial=args.cpus_per_trial,
                            memory_per_trial_mib=args.memory_per_trial, max_failures=args.max_failures)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, sort_keys=True))
        return
    config = json.dumps(result.best_config, sort_keys=True)
    print(f"sweep {result.name}: best {result.metric} {result.best_metric:.4f} (MLflow run {result.best_run_id}); "
          f"{result.trials_finished} trials finished ({result.trials_stopped_early} stopped before their last epoch "
          f"by ASHA or the time budget), "
          f"{result.trials_failed} failed\nparent run: {result.parent_run_id}\nbest config: {config}\n"
          f"train it: kuberec train {model} --config '{config}'")


def _tune_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, default=10, help="number of trials (default 10)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at a time (default 2)")
    parser.add_argument("--cpus-per-trial", type=int, default=1, help="CPU cores per trial (default 1)")
    parser.add_argument("--memory-per-trial", type=int, metavar="MIB",
                        help="memory a trial's process may allocate, in MiB; a trial needing more fails with an "
                             "out-of-memory error and the sweep goes on (default: no cap)")
    parser.add_argument("--time-budget", type=float, help="stop the sweep after this many seconds")
    parser.add_argument("--seed", type=int, default=0, help="seeds the search, the data split and the trials' "
                                                            "config seed (default 0)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default: the model's search space's)")
    parser.add_argument("--max-examples", type=int, help="similarity: use at most this many training images")
    parser.add_argument("--space", help="search space (JSON or a .json file) merged over the default one, e.g. "
                                        "'{\"learning_rate\": {\"loguniform\": [1e-4, 1e-3]}, \"epochs\": 2}'")
    parser.add_argument("--metric", help="validation metric to optimise (default: " + ", ".join(
        f"{record.name}: {record.tuning.default_metric}" for record in MODELS.values()) + ")")
    parser.add_argument("--initial-point", action="append", default=[],
                        help="a value for every dimension (JSON) to evaluate first, e.g. today's config; repeatable")
    parser.add_argument("--max-failures", type=int, default=0, help="retries of a failing trial (default 0)")
    parser.add_argument("--table", help="Delta table (default: the model's, " + ", ".join(
        f"{record.name}: {record.default_table}" for record in MODELS.values()) + ")")
    parser.add_argument("--version", type=int, help="its version (default: latest)")
    parser.add_argument("--name", help="sweep name (default: <model>-<date>-<time>); needed by --resume")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted sweep --name")
    parser.add_argument("--retry-failed", action="store_true", help="with --resume: run failed trials again")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


COMMANDS = [
    Command("tune", record.name, f"hyperparameter sweep of the {record.title} model (Ray Tune + Optuna TPE + ASHA, "
                                 f"trials as MLflow child runs)", _tune, _tune_args)
    for record in MODELS.values()
]
