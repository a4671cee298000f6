"""CLI: `kuberec serve`, `kuberec recommend`, `kuberec demo`."""

from __future__ import annotations

import argparse

from kuberec.cli import Command
from kuberec.errors import KuberecError
from kuberec.models import MODELS

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
    from kuberec.inference import DEFAULT_URL

    query = parser.add_mutually_exclusive_group(required=True)
    for record in MODELS.values():
        for option in record.serving.query_options:
            (query if option.starts else parser).add_argument(option.flag, type=option.parse, help=option.help)
    parser.add_argument("--k", type=int, default=None, help="how many results (default: the model's)")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the model server (default {DEFAULT_URL})")


def _recommend(args: argparse.Namespace) -> int:
    from kuberec.inference import format_table

    given = {name: {option.keyword: getattr(args, option.keyword) for option in record.serving.query_options
                    if getattr(args, option.keyword) is not None} for name, record in MODELS.items()}
    asked = [MODELS[name] for name, options in given.items() if options]
    if len(asked) > 1:  # a query option of one model with a refining option of another
        raise KuberecError("options of more than one model: " + "; ".join(
            f"{', '.join('--' + o.replace('_', '-') for o in given[r.name])} ({r.title})" for r in asked))
    record = asked[0]
    print(format_table(record.serving.recommend(args.url, model=record.registered_name, k=args.k,
                                                **given[record.name])))
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from kuberec.inference import DEFAULT_URL
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
    Command("recommend", None, "ask a running server: " + "; ".join(
        f"{record.title} ({'/'.join(o.flag for o in record.serving.query_options if o.starts)})"
        for record in MODELS.values()), _recommend, _recommend_arguments),
    Command("demo", None, "the demo web page for a running server (kuberec serve)", _demo, _demo_arguments),
]
