"""CLI: `kuberec index build | refresh` — index the catalog and register the recommender; re-index new rows.

Both steps are light (one process: TensorFlow inference on CPU, FAISS, the MLflow client), so the CLI and the pipeline
components run them in their own process. Argument defaults that live in heavy modules are None here and resolved by
the step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kuberec.champion import DEFAULT_TOLERANCE, POLICIES
from kuberec.cli import Command
from kuberec.similarity.config import REGISTERED_NAME

MODEL_HELP = f"registered model name (default: {REGISTERED_NAME})"


def build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="exported embedding model: a directory, or a runs:/<run>/<path> or models:/ URI")
    parser.add_argument("--table", help="catalog table URI (default: the lake's fashion_mnist)")
    parser.add_argument("--table-version", type=int, help="table version to index (default: latest)")
    parser.add_argument("--splits", help="comma-separated splits to index (default: all: train, test, catalog)")
    parser.add_argument("--m", type=int, help="HNSW links per node (default: the measured default, "
                                              "docs/BENCHMARKS.md)")
    parser.add_argument("--ef-construction", type=int, help="HNSW build candidate list (default: measured)")
    parser.add_argument("--ef-search", type=int, help="HNSW query candidate list (default: measured)")
    parser.add_argument("--name", help=MODEL_HELP)
    parser.add_argument("--training-run-id", help="MLflow run that trained the model (lineage tag); taken from a "
                                                  "runs:/ model URI when not given")
    champion = parser.add_mutually_exclusive_group()
    champion.add_argument("--set-champion", dest="set_champion", action="store_true", default=None,
                          help="move the champion alias to the new version")
    champion.add_argument("--no-set-champion", dest="set_champion", action="store_false",
                          help="never move it (default: set it only when the model has no champion yet)")
    parser.add_argument("--save-index", help="also keep a copy of the index directory here")


def refresh_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help=MODEL_HELP)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="model version to refresh (default: the champion)")
    which.add_argument("--alias", help="model alias to refresh (default: champion)")
    parser.add_argument("--champion", choices=POLICIES, default="never",
                        help="whether the new version takes the champion alias: never (default: leave it where it "
                             "is), always, or gate (when the grown index holds the champion's precision@5 within "
                             "--tolerance)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"the gate's tolerance (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--table", help="catalog table URI (default: the one the index was built from)")


def _build(args: argparse.Namespace) -> None:
    from kuberec import tracking
    from kuberec.settings import load_settings
    from kuberec.similarity.index.build import build_and_register
    from kuberec.similarity.index.items import HnswParams

    tuned = {"m": args.m, "ef_construction": args.ef_construction, "ef_search": args.ef_search}
    result = build_and_register(
        load_settings(), args.model, table_uri=args.table, version=args.table_version,
        splits=[s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None,
        params=HnswParams(**{k: v for k, v in tuned.items() if v is not None}), name=args.name or REGISTERED_NAME,
        training_run_id=args.training_run_id, set_champion=args.set_champion,
        save_to=Path(args.save_index) if args.save_index else None)
    print(f"registered {result.name} version {result.version}: {result.items} items from {result.table_uri} "
          f"v{result.table_version} (run {result.run_id})" + (f"; now @{tracking.CHAMPION}" if result.champion else ""))


def _refresh(args: argparse.Namespace) -> None:
    from kuberec import tracking
    from kuberec.settings import load_settings
    from kuberec.similarity.index.refresh import refresh

    result = refresh(load_settings(), name=args.name or REGISTERED_NAME, version=args.version, alias=args.alias,
                     policy=args.champion, tolerance=args.tolerance, table_uri=args.table)
    if result.new_version is None:
        print(f"{result.name} version {result.source_version} is up to date (table v{result.table_version}, "
              f"{result.items} items); nothing registered")
    else:
        ids = result.added_item_ids
        print(("already registered: " if result.reused else "") +
              f"{result.name} version {result.new_version}: +{len(ids)} items "
              f"({ids[0]}..{ids[-1]}), {result.items} in all, table v{result.indexed_table_version} -> "
              f"v{result.table_version}, from version {result.source_version}; "
              + (f"now @{tracking.CHAMPION}" if result.champion
                 else f"@{tracking.CHAMPION} unchanged (promote with --champion always)")
              + f"\n{result.decision.summary()}")


COMMANDS = [
    Command("index", "build", "embed the catalog table, build the ANN index, register model + index in MLflow",
            _build, build_arguments),
    Command("index", "refresh", "add catalog rows new since the indexed table version and register a new version "
            "with the same weights (champion unchanged unless --champion always|gate)", _refresh, refresh_arguments),
]
