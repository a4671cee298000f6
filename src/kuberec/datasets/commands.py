"""CLI: `kuberec data fashion-mnist`."""

from __future__ import annotations

import argparse
from pathlib import Path

from kuberec.cli import Command


def _fashion_mnist(args: argparse.Namespace) -> None:
    from kuberec.datasets.fashion_mnist import acquire
    from kuberec.settings import load_settings

    target = acquire(load_settings(), Path(args.source) if args.source else None)
    print(f"Fashion-MNIST verified in {target}")


def _fashion_mnist_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="directory with the four IDX files (default: the Debian package's "
                                         "files, else download)")


COMMANDS = [
    Command("data", "fashion-mnist", "locate or download Fashion-MNIST and verify it", _fashion_mnist,
            _fashion_mnist_args),
]
