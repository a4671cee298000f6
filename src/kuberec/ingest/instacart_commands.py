"""CLI: `kuberec data instacart-synth`, `kuberec ingest instacart`, `kuberec features instacart`.

The generator is plain numpy and runs in this process; ingestion and features are Spark jobs launched through the
configured backend by the data steps (kuberec.ingest.steps), so the same modules run locally and
as SparkApplications.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kuberec.cli import Command


def _synth(args: argparse.Namespace) -> None:
    from kuberec.datasets.instacart_synth import generate
    from kuberec.ingest.steps import SYNTH_DIR
    from kuberec.settings import load_settings

    out = Path(args.out) if args.out else load_settings().data_dir / SYNTH_DIR
    result = generate(out, args.users, seed=args.seed, products=args.products)
    print(f"wrote {result.users:,} users, {result.products:,} products, {result.orders:,} orders, "
          f"{result.prior_lines:,} prior and {result.train_lines:,} train order lines to {result.out} "
          f"(reordered share {result.reordered_share_prior:.3f}, {result.seconds:.1f}s)")


def _synth_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, required=True, help="number of users (Instacart has 206,209)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the output is a function of it")
    parser.add_argument("--products", type=int, help="catalogue size (default: Instacart's 49,688)")
    parser.add_argument("--out", help="output directory, replaced as a whole (default: <home>/data/instacart-synth)")


def _ingest(args: argparse.Namespace) -> None:
    from kuberec.ingest import steps
    from kuberec.settings import load_settings

    settings = load_settings()
    versions = steps.ingest_instacart(settings, args.source or str(settings.data_dir / steps.SYNTH_DIR))
    print("bronze tables: " + ", ".join(f"{name} v{version}" for name, version in sorted(versions.items())))


def _ingest_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", help="directory with the six Instacart CSV files: your download, or "
                                         "(default) <home>/data/instacart-synth from `kuberec data instacart-synth`")


def _features(args: argparse.Namespace) -> None:
    from kuberec.ingest import steps
    from kuberec.settings import load_settings

    print(f"gold examples: {steps.build_features(load_settings(), force=args.force)}")


def _features_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="rebuild even if the bronze tables did not change")


COMMANDS = [
    Command("data", "instacart-synth", "generate Instacart-format CSV files from a model of grocery shopping",
            _synth, _synth_args),
    Command("ingest", "instacart", "Spark job: validate the six Instacart CSV files -> bronze Delta tables "
                                   "(idempotent)", _ingest, _ingest_args),
    Command("features", "instacart", "Spark job: bronze Instacart tables -> gold features, labels and splits "
                                     "(idempotent)", _features, _features_args),
]
