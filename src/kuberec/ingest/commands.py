"""CLI: `kuberec ingest fashion-mnist | images` — the Spark jobs, launched through the configured backend."""

from __future__ import annotations

import argparse

from kuberec.cli import Command


def _fashion_mnist(args: argparse.Namespace) -> None:
    from kuberec.ingest import steps

    table = steps.ingest_fashion_mnist(source=args.source, max_per_split=args.max_per_split)
    print(f"catalog table {table}")


def _fashion_mnist_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="directory or s3a:// prefix with the IDX files "
                                         "(default: verified copy under <home>/data, acquired if needed)")
    parser.add_argument("--max-per-split", type=int, help="only the first N images of each split")


def _images(args: argparse.Namespace) -> None:
    from kuberec.ingest import steps
    from kuberec.ingest.images import expand_paths

    expand_paths(args.paths)  # a bad path fails here, before a JVM starts
    # The directories as given, not the files in them: a job's command line cannot hold tens of thousands of names.
    table = steps.ingest_images(None, args.paths, args.label, args.chunk_size)
    print(f"catalog table {table}")


def _images_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="PNG/JPEG files or directories of them")
    parser.add_argument("--label", type=int, help="class 0..9 for all of them (default: unlabelled)")
    parser.add_argument("--chunk-size", type=int, help="pictures per Delta commit (default 1,000)")


COMMANDS = [
    Command("ingest", "fashion-mnist", "Spark job: Fashion-MNIST -> Delta catalog table (idempotent)",
            _fashion_mnist, _fashion_mnist_args),
    Command("ingest", "images", "Spark job: append new catalog images (PNG/JPEG) to the catalog table",
            _images, _images_args),
]
