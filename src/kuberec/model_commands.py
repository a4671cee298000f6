"""The flags every model's `kuberec train|evaluate|register <model>` verbs share, defined once so that both models
(and the next) take the same ones: `--table/--version`, `--run`, `--workers/--out/--resume` and the config's own
flags, `--name/--champion`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, TypeVar

from kuberec.champion import DEFAULT_POLICY, DEFAULT_TOLERANCE, POLICIES
from kuberec.errors import KuberecError
from kuberec.lake.delta import TableRef
from kuberec.model_config import ModelConfig, add_config_arguments, config_from_flags
from kuberec.settings import Settings, load_settings

ConfigT = TypeVar("ConfigT", bound=ModelConfig)
# (settings, --table or None for the default, --version or None for the latest) -> the table a model's verbs read
TableResolver = Callable[[Settings, str | None, int | None], TableRef]


def add_table_arguments(parser: argparse.ArgumentParser, what: str, *aliases: str) -> None:
    """`--table URI` (old spellings in `aliases` still accepted) and `--version V`; `what` says what is read."""
    parser.add_argument("--table", *aliases, dest="table", help=what)
    parser.add_argument("--version", type=int, help="its Delta version (default: latest)")


def add_run_argument(parser: argparse.ArgumentParser, model: str) -> None:
    parser.add_argument("--run", dest="run_id", metavar="RUN_ID", required=True,
                        help=f"MLflow run id printed by `kuberec train {model}`")


def add_training_arguments(parser: argparse.ArgumentParser, model: str, config_class: type[ModelConfig]) -> None:
    """Horovod workers, the output directory and resume, and one flag per config field (plus --config)."""
    parser.add_argument("--workers", type=int, default=1, help="Horovod workers (default 1)")
    parser.add_argument("--out", help=f"output directory (default: <home>/runs/{model}-<MLflow run id>, which a "
                                      "rerun after a failure continues from its last checkpoint)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    add_config_arguments(parser, config_class)


@dataclass(frozen=True)
class TrainingInputs(Generic[ConfigT]):
    settings: Settings
    table: TableRef
    config: ConfigT
    workers: int
    out_dir: Path | None
    resume: bool


def training_inputs(args: argparse.Namespace, config_class: type[ConfigT],
                    resolve_table: TableResolver) -> TrainingInputs[ConfigT]:
    """What `add_table_arguments` and `add_training_arguments`' flags ask a train step for, checked before any run
    or worker starts: a bad config value, --resume without --out, a missing table."""
    settings = load_settings()
    config = config_from_flags(vars(args), config_class)
    out_dir = Path(args.out).absolute() if args.out else None
    if args.resume and out_dir is None:
        raise KuberecError("--resume continues the run in --out; name it (without --out, a rerun after a failure "
                           "continues the failed run of the same inputs by itself)")
    return TrainingInputs(settings, resolve_table(settings, args.table, args.version), config, args.workers,
                          out_dir, args.resume)


def named_table(settings: Settings, args: argparse.Namespace, resolve_table: TableResolver) -> TableRef | None:
    """The table `add_table_arguments`' flags name, or None when they name none: the step then reads the table
    version the run trained on."""
    return resolve_table(settings, args.table, args.version) if args.table or args.version is not None else None


def add_register_arguments(parser: argparse.ArgumentParser, registered_name: str) -> None:
    parser.add_argument("--name", default=registered_name, help=f"registered model name (default {registered_name})")
    parser.add_argument("--champion", choices=POLICIES, default=DEFAULT_POLICY,
                        help="whether the new version takes the `champion` alias: gate (default) only when it beats "
                             "the champion re-scored on the same data by more than --tolerance (a first version "
                             "always does), always, or never")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"the margin the gate asks for in the headline metric (default {DEFAULT_TOLERANCE})")
