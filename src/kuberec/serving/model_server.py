"""A model server process: KServe's data plane (V2 REST and gRPC) over kuberec's models, on the address it is given.

    python -m kuberec.serving.model_server --repository DIR  [--host H --http-port P --grpc-port G]   (kuberec serve)
    python -m kuberec.serving.model_server --model-dir /mnt/models --model-name NAME  [...]          (KServe)

Built from KServe's own parts (its FastAPI application and V2 endpoints, its gRPC servicer and error interceptors,
`DataPlane`, `ModelRepository`) rather than `kserve.ModelServer`, which listens on every address: `kuberec serve`
listens on loopback unless told otherwise. Both ports are bound with SO_REUSEPORT, so `kuberec serve --workers N`
runs N of these processes on the same ports and the kernel spreads connections between them.

Models load before the ports open (a probe is ready only once every model is). A repository model then follows its
spec (kuberec.serving.repository): when `kuberec serve` rewrites it (an alias moved), this process loads the new
version beside the old one in a thread, swaps it in (requests never see a model that is not loaded) and records the
outcome in its status file, which is how `kuberec serve` learns that each of its processes has switched. A version that
fails to load is recorded as an error and the old one keeps serving. `POST /v2/repository/models/<name>/load` does
the same at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from http import HTTPStatus
from pathlib import Path

from kuberec.entrypoint import run_program
from kuberec.inference import MAX_REQUEST_BYTES

log = logging.getLogger(__name__)

FOLLOW_S = 0.5  # how often each process looks at its models' spec files
GRACE_S = 10  # seconds in-flight requests get to finish on SIGTERM


def reuse_port_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted connections inherit it. Without it a response written in two parts (headers, body) waited for the
    # client's delayed ACK: 48 ms per request on one connection instead of 2 (measured, serving_bench.py).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    return sock


async def serve(repository, *, host: str, http_port: int, grpc_port: int, follow_s: float) -> None:
    import uvicorn
    from fastapi.responses import JSONResponse
    from grpc import aio
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    from kuberec.serving.runtime import KuberecDataPlane, PayloadTooLarge

    dataplane = KuberecDataPlane(model_registry=repository)
    extension = ModelRepositoryExtension(model_registry=repository)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, dataplane, extension, http_port)
    rest.create_application()  # KServe's app: V1/V2 endpoints, /metrics, its error handlers
    from kserve.model_server import app

    async def too_large(_, err: PayloadTooLarge) -> JSONResponse:
        return JSONResponse(status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE, content={"error": str(err)})

    app.add_exception_handler(PayloadTooLarge, too_large)
    http = uvicorn.Server(uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=GRACE_S,
                                         timeout_keep_alive=65))
    grpc_server = aio.server(interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
                             options=[("grpc.max_send_message_length", MAX_REQUEST_BYTES),
                                      ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
                                      ("grpc.so_reuseport", 1)])
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(dataplane, extension),
                                                                        grpc_server)
    address = f"[{host}]:{grpc_port}" if ":" in host else f"{host}:{grpc_port}"
    grpc_server.add_insecure_port(address)
    await grpc_server.start()
    follower = asyncio.create_task(repository.follow(follow_s)) if repository.root is not None else None
    log.info("serving %s on http://%s:%d and gRPC %s (pid %d)", ", ".join(repository.names()), host, http_port,
             address, os.getpid())
    try:
        await http.serve(sockets=[reuse_port_socket(host, http_port)])  # until SIGTERM/SIGINT
    finally:
        if follower is not None:
            follower.cancel()
        await grpc_server.stop(GRACE_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuberec.serving.model_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--repository", type=Path, help="a repository that `kuberec serve` wrote")
    which.add_argument("--model-dir", type=Path, help="one MLflow model directory (KServe's /mnt/models)")
    parser.add_argument("--model-name", help="with --model-dir: the name the model is served under")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=8081)
    parser.add_argument("--follow", type=float, default=FOLLOW_S, metavar="SECONDS",
                        help="how often to look at the repository's model specs")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.model_dir is not None and not args.model_name:
        parser.error("--model-dir needs --model-name")
    # kserve.model_server parses sys.argv when imported; it must not read (or prefix-match) these arguments.
    sys.argv = sys.argv[:1]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from kserve import logging as kserve_logging

    kserve_logging.configure_logging()
    # KServe's timing middleware logs two lines per request (wall and CPU time) beside the access log's one; the
    # request_*_seconds histograms on /metrics carry the same numbers.
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with these handlers that ends in a clean exit.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    from kuberec.serving.runtime import FollowedRepository

    if args.repository is not None:
        repository = FollowedRepository(root=args.repository)
    else:
        repository = FollowedRepository(single=(args.model_name, str(args.model_dir)))
    repository.load_all()
    asyncio.run(serve(repository, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                      follow_s=args.follow))
    return 0


if __name__ == "__main__":
    run_program("kuberec.serving.model_server", main)
