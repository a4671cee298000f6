"""The `kuberec` command: `kuberec <verb> <target> [options]`, one verb per pipeline step.

Each area of the library declares its commands in a `commands.py` module (a `COMMANDS` list); this file only
assembles them into argparse. Heavy imports (Spark, TensorFlow) happen inside the command functions so that
`kuberec --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from kuberec.entrypoint import exit_status

# Areas that contribute commands; each module defines COMMANDS: list[Command].
COMMAND_MODULES: tuple[str, ...] = (
    "kuberec.backends.commands",
    "kuberec.datasets.commands",
    "kuberec.ingest.commands",
    "kuberec.ingest.instacart_commands",
    "kuberec.lake.commands",
    "kuberec.serving.commands",
    "kuberec.similarity.commands",
    "kuberec.similarity.index.commands",
    "kuberec.tracking.commands",
    "kuberec.tuning.commands",
    "kuberec.widedeep.commands",
)


@dataclass(frozen=True)
class Command:
    verb: str  # e.g. "ingest"
    target: str | None  # e.g. "fashion-mnist"; None: the verb alone (`kuberec serve`)
    help: str
    run: Callable[[argparse.Namespace], int | None]
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line. With `argv`, only the chosen command gets its arguments: some argument definitions
    import TensorFlow or MLflow (for their defaults), which `kuberec --help` or `kuberec lake history` should not."""
    words = [word for word in (argv or []) if not word.startswith("-")]

    def wanted(command: Command) -> bool:
        return argv is None or words[:1] == [command.verb] and (command.target is None
                                                                or words[1:2] == [command.target])

    parser = argparse.ArgumentParser(prog="kuberec", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    targets: dict[str, argparse._SubParsersAction] = {}
    for module_name in COMMAND_MODULES:
        for command in importlib.import_module(module_name).COMMANDS:
            if command.target is None:  # a verb without targets
                sub = verbs.add_parser(command.verb, help=command.help, description=command.help)
                if wanted(command):
                    command.add_arguments(sub)
                sub.set_defaults(run=command.run, target=None)
                continue
            if command.verb not in targets:
                verb_parser = verbs.add_parser(command.verb, help=f"{command.verb} ...")
                targets[command.verb] = verb_parser.add_subparsers(dest="target", required=True, metavar="TARGET")
            sub = targets[command.verb].add_parser(command.target, help=command.help, description=command.help)
            if wanted(command):
                command.add_arguments(sub)
            sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return exit_status(" ".join(filter(None, ("kuberec", args.verb, args.target))), lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
