"""CLI: `kuberec serve`, `kuberec recommend`, `kuberec demo`."""

from __future__ import annotations

import argparse

from kuberec.cli import Command
from kuberec.errors import KuberecError


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    from kuberec.serving.server import add_arguments

    add_arguments(parser)


def _serve(args: argparse.Namespace) -> int:
    from kuberec.serving.server import run

    return run(args)


def _recommend_arguments(parser: argparse.ArgumentParser) -> None:
    from kuberec.serving.client import DEFAULT_URL

    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="a PNG/JPEG file: the most similar catalog items")
    query.add_argument("--item-id", type=int, help="a catalog item: the most similar other items")
    query.add_argument("--user-id", type=int, help="a shopper: the top products (wide & deep)")
    parser.add_argument("--candidates", default=None, help="with --user-id: comma-separated product ids to rank")
    parser.add_argument("--k", type=int, default=None, help="how many results (default 5 similar, 10 products)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the model server (default {DEFAULT_URL})")


def _recommend(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kuberec.serving import client

    if args.user_id is not None:
        candidates = [int(c) for c in args.candidates.split(",") if c.strip()] if args.candidates else None
        results = client.recommend_products(args.url, args.user_id, candidates, k=args.k or 10)
    else:
        if args.image is not None and not Path(args.image).is_file():
            raise KuberecError(f"--image {args.image}: no such file")
        results = client.recommend_similar(args.url, image=args.image, item_id=args.item_id, k=args.k or 5)
    print(client.format_table(results))
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from kuberec.serving.demo import add_arguments

    add_arguments(parser)


def _demo(args: argparse.Namespace) -> int:
    from kuberec.serving.demo import run

    return run(args)


COMMANDS = [
    Command("serve", None, "serve the registered recommenders on MLServer (V2 REST + gRPC) on loopback",
            _serve, _serve_arguments),
    Command("recommend", None, "ask a running server for similar items (--image/--item-id) or products "
            "(--user-id)", _recommend, _recommend_arguments),
    Command("demo", None, "the demo web page for a running server (kuberec serve)", _demo, _demo_arguments),
]
