"""CLI: `kuberec serve`, `kuberec recommend`, `kuberec demo`."""

from __future__ import annotations

import argparse

from kuberec.cli import Command
from kuberec.errors import KuberecError
from kuberec.models import MODELS, SIMILARITY, WIDEDEEP

DEFAULT_MODELS = tuple(record.registered_name for record in MODELS.values())


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    from kuberec import tracking
    from kuberec.serving.demo import DEFAULT_PORT as DEMO_PORT
    from kuberec.serving.server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, FOLLOW_S, HOST

    parser.add_argument("--models", default=None,
                        help="comma-separated registered models: name, name@alias or name:version "
                             f"(default: {','.join(DEFAULT_MODELS)}, those that are registered)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--alias", default=tracking.CHAMPION, help="registry alias to serve (default: champion)")
    which.add_argument("--version", type=int, default=None, help="registry version to serve (one model only)")
    parser.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST}: this machine only; "
                                                     "elsewhere is reachable by others, with no authentication)")
    parser.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT, help="HTTP (V2 REST) port")
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT, help="gRPC port")
    parser.add_argument("--workers", type=int, default=None,
                        help="model server processes, each loading every model, sharing the ports (default: 1 on up "
                             "to 2 CPUs, else one per CPU; see docs/serving.md)")
    parser.add_argument("--follow", type=float, default=FOLLOW_S, metavar="SECONDS",
                        help=f"check the registry every SECONDS and serve the version the alias points at now, "
                             f"switching without failed requests (default {FOLLOW_S:g}; 0: never)")
    parser.add_argument("--demo", nargs="?", type=int, const=DEMO_PORT, default=None, metavar="PORT",
                        help=f"also serve the demo page (default port {DEMO_PORT})")


def _serve(args: argparse.Namespace) -> int:
    from kuberec.serving.server import ModelSpec, ServingError, serve
    from kuberec.settings import load_settings

    names = [n for n in (args.models or "").split(",") if n.strip()] or list(DEFAULT_MODELS)
    if args.version is not None and len(names) > 1:
        raise ServingError("--version picks one version of one model; with several models use "
                           "--models name:version,other@alias")
    specs = [ModelSpec.parse(n, alias=args.alias, version=args.version) for n in names]
    # The default list serves those that are registered; models the user names must all be.
    return serve(load_settings(), specs, http_port=args.port, grpc_port=args.grpc_port, required=bool(args.models),
                 demo_port=args.demo, workers=args.workers, follow_s=args.follow,
                 host=args.host)


def _recommend_arguments(parser: argparse.ArgumentParser) -> None:
    from kuberec.serving.client import DEFAULT_URL

    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="a PNG/JPEG file: the most similar catalog items")
    query.add_argument("--item-id", type=int, help="a catalog item: the most similar other items")
    query.add_argument("--user-id", type=int, help="a shopper: the top products (wide & deep)")
    parser.add_argument("--candidates", default=None, help="with --user-id: comma-separated product ids to rank")
    parser.add_argument("--k", type=int, default=None, help=f"how many results (default {SIMILARITY.default_k} "
                                                            f"similar, {WIDEDEEP.default_k} products)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the model server (default {DEFAULT_URL})")


def _recommend(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kuberec.serving import client

    if args.user_id is not None:
        candidates = [int(c) for c in args.candidates.split(",") if c.strip()] if args.candidates else None
        results = client.recommend_products(args.url, args.user_id, candidates, k=args.k or WIDEDEEP.default_k)
    else:
        if args.image is not None and not Path(args.image).is_file():
            raise KuberecError(f"--image {args.image}: no such file")
        results = client.recommend_similar(args.url, image=args.image, item_id=args.item_id,
                                           k=args.k or SIMILARITY.default_k)
    print(client.format_table(results))
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from kuberec.serving.client import DEFAULT_URL
    from kuberec.serving.demo import DEFAULT_PORT, HOST

    parser.add_argument("--url", default=DEFAULT_URL, help="the model server (kuberec serve)")
    parser.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST}: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port for the page")


def _demo(args: argparse.Namespace) -> int:
    from kuberec.serving.demo import start_demo

    demo = start_demo(args.url, args.port, host=args.host)
    print(f"demo page at {demo.url} (model server {args.url}); Ctrl-C stops it", flush=True)
    try:
        demo.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()
    return 0


COMMANDS = [
    Command("serve", None, "serve the registered recommenders on KServe's model server (V2 REST + gRPC) on loopback",
            _serve, _serve_arguments),
    Command("recommend", None, "ask a running server for similar items (--image/--item-id) or products "
            "(--user-id)", _recommend, _recommend_arguments),
    Command("demo", None, "the demo web page for a running server (kuberec serve)", _demo, _demo_arguments),
]
