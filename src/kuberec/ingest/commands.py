"""CLI: `kuberec ingest fashion-mnist | images` — run the Spark jobs through the configured backend."""

from __future__ import annotations

import argparse

from kuberec.cli import Command


def _run_spark(name: str, module: str, args: list[str]) -> None:
    from kuberec.backends import SparkJob, get_backend
    from kuberec.settings import load_settings

    get_backend(load_settings()).run_spark(SparkJob(name=name, module=module, args=tuple(args)))


def _fashion_mnist(args: argparse.Namespace) -> None:
    extra = [] if args.max_per_split is None else ["--max-per-split", str(args.max_per_split)]
    extra += ["--source", args.source] if args.source else []
    _run_spark("ingest-fashion-mnist", "kuberec.ingest.fashion_mnist", extra)


def _fashion_mnist_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="directory or s3a:// prefix with the IDX files "
                                         "(default: <home>/data/fashion-mnist from `kuberec data fashion-mnist`)")
    parser.add_argument("--max-per-split", type=int, help="only the first N images of each split")


def _images(args: argparse.Namespace) -> None:
    extra = list(args.paths) + ([] if args.label is None else ["--label", str(args.label)])
    _run_spark("ingest-images", "kuberec.ingest.images", extra)


def _images_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="PNG/JPEG files or directories of them")
    parser.add_argument("--label", type=int, help="class 0..9 for all of them (default: unlabelled)")


COMMANDS = [
    Command("ingest", "fashion-mnist", "Spark job: Fashion-MNIST -> Delta catalog table (idempotent)",
            _fashion_mnist, _fashion_mnist_args),
    Command("ingest", "images", "Spark job: append new catalog images (PNG/JPEG) to the catalog table",
            _images, _images_args),
]
