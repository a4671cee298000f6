"""CLI: `kuberec lake history | added-since` — what changed in a Delta table."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

from kuberec.cli import Command


def _table_uri(name: str) -> str:
    from kuberec.settings import load_settings

    return name if "/" in name else load_settings().table_uri(name)


def _history(args: argparse.Namespace) -> None:
    from kuberec.lake.delta import history

    for entry in history(_table_uri(args.table), args.limit):
        when = datetime.fromtimestamp(entry.get("timestamp", 0) / 1000, tz=timezone.utc)
        metrics = entry.get("operationMetrics", {})
        summary = ", ".join(f"{k}={v}" for k, v in sorted(metrics.items()) if k.startswith("num") and "Files" not in k)
        print(f"v{entry.get('version')}  {when:%Y-%m-%d %H:%M:%S}  {entry.get('operation')}  {summary}")


def _added_since(args: argparse.Namespace) -> None:
    from kuberec.lake.delta import rows_added_since

    for row in rows_added_since(_table_uri(args.table), args.version, columns=["split", "label", "source"]):
        print(f"{row['item_id']}\t{row['split']}\t{row['label']}\t{row['source']}\tv{row['_commit_version']}")


def _table_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", nargs="?", default="fashion_mnist", help="table name in the lake, or a URI")


def _history_args(parser: argparse.ArgumentParser) -> None:
    _table_arg(parser)
    parser.add_argument("--limit", type=int, default=None)


def _added_since_args(parser: argparse.ArgumentParser) -> None:
    _table_arg(parser)
    parser.add_argument("--version", type=int, required=True, help="rows added after this version")


COMMANDS = [
    Command("lake", "history", "commit history of a Delta table", _history, _history_args),
    Command("lake", "added-since", "rows added to a catalog table after a version", _added_since,
            _added_since_args),
]
