#!/usr/bin/env python3
"""kuberec's ML Metadata (MLMD) gRPC server: `ml_metadata.MetadataStoreService` for Kubeflow Pipelines.

KFP's driver, launcher and UI need an MLMD server. Upstream ships it as the image
gcr.io/tfx-oss-public/ml_metadata_store_server, which this project can neither pull nor build (Bazel). The PyPI
`ml-metadata` wheel has no server binary, but its C++ extension holds the whole store and offers one function per
RPC (serialized request in, `(response, error, status)` out). This server hands the request bytes to that function
and the response bytes back, unparsed, so it speaks the same wire API as the upstream server.

It takes the flags of the upstream binary that KFP's `metadata-grpc-deployment` passes (so the manifest's `command`
and `args` stay as they are), plus `--sqlite_filename` (SQLite; in memory when empty) and `--self_check`.
"""
from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import time
from concurrent import futures
from typing import Callable

import grpc
from ml_metadata.metadata_store.pywrap.metadata_store_extension import metadata_store as store_ext
from ml_metadata.proto import metadata_store_pb2, metadata_store_service_pb2

SERVICE = "ml_metadata.MetadataStoreService"
log = logging.getLogger("metadata_store_server")

# MLMD's status codes are absl's, which are gRPC's numbering.
_STATUS_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# Errors of a MySQL store whose connection died (server restart, wait_timeout) or whose own reconnect failed.
_CONNECTION_LOST = ("MySQL server has gone away", "Lost connection to MySQL server", "mysql_real_connect failed",
                    "MySQL database was not initialized", "Can't connect to MySQL server")


class ConnectError(RuntimeError):
    """The metadata database could not be opened (the caller exits non-zero so that the pod restarts)."""


def _flag_bool(text: str) -> bool:
    """gflags-style booleans (`--enable_database_upgrade=true`), as the upstream binary takes them."""
    value = text.strip().lower()
    if value in ("1", "true", "t", "yes", "y"):
        return True
    if value in ("0", "false", "f", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The upstream binary's flag names and defaults, so KFP's Deployment args work unchanged."""
    p = argparse.ArgumentParser(
        prog="metadata_store_server", allow_abbrev=False,
        description="ML Metadata gRPC server (ml_metadata.MetadataStoreService) on the ml-metadata wheel's C++ store.")
    p.add_argument("--grpc_port", type=int, default=8080, help="port of the gRPC API (default 8080)")
    p.add_argument("--grpc_channel_arguments", default="",
                   help="comma-separated gRPC server arguments, e.g. grpc.max_receive_message_length=104857600")
    p.add_argument("--mysql_config_host", default="", help="MySQL/MariaDB host; with port and database: use MySQL")
    p.add_argument("--mysql_config_port", type=int, default=0)
    p.add_argument("--mysql_config_database", default="", help="created when missing")
    p.add_argument("--mysql_config_user", default="")
    p.add_argument("--mysql_config_password", default="")
    p.add_argument("--enable_database_upgrade", type=_flag_bool, nargs="?", const=True, default=False,
                   help="migrate an older MLMD schema to this library's version at start")
    p.add_argument("--sqlite_filename", default="",
                   help="SQLite database file when no MySQL is configured (empty: in memory, not persistent)")
    p.add_argument("--connect_timeout_s", type=float, default=120.0,
                   help="how long to keep retrying an unreachable MySQL at start before exiting (default 120)")
    p.add_argument("--self_check", action="store_true",
                   help="serve in-memory SQLite on a local port, do a round trip through the gRPC stubs, exit")
    args = p.parse_args(argv)
    mysql_given = [bool(args.mysql_config_host), args.mysql_config_port != 0, bool(args.mysql_config_database)]
    if any(mysql_given) and not all(mysql_given):
        p.error("MySQL needs all of --mysql_config_host, --mysql_config_port and --mysql_config_database")
    if any(mysql_given) and args.sqlite_filename:
        p.error("--sqlite_filename and --mysql_config_* exclude each other")
    if not 0 < args.grpc_port < 65536:
        p.error(f"--grpc_port is invalid: {args.grpc_port}")
    return args


def channel_options(text: str) -> list[tuple[str, int | str]]:
    """`k=v,k=v` into grpc options; integer values as ints (as the upstream server does), others as strings."""
    options: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            options.append((key, int(value)))
        except ValueError:
            options.append((key, value))
    return options


class Store:
    """One C++ MetadataStore (one database connection), used by one call at a time.

    The C++ store is not safe for concurrent use, so every call holds the lock. A MySQL store whose connection died
    (server restart, wait_timeout) is thrown away, never used again: the C++ side then tries to reconnect by itself
    and, when that fails, leaves a store that crashes the process on its next call (seen with ml-metadata 1.17.1).
    A fresh store is opened and the call repeated once: the failed statement's transaction was not committed, and
    the upstream server, which connects per call, would have used a fresh connection anyway. While MySQL is down,
    calls answer UNAVAILABLE and the next call tries again.
    """

    def __init__(self, config: metadata_store_pb2.ConnectionConfig, upgrade: bool):
        self._config = config.SerializeToString()
        self._migration = metadata_store_pb2.MigrationOptions(enable_upgrade_migration=upgrade).SerializeToString()
        self._mysql = (config.mysql.host, config.mysql.port) if config.HasField("mysql") else None
        self._lock = threading.Lock()
        self._closed = False
        self._handle = self._open()

    def _open(self):
        if self._mysql:
            unreachable = _reachable(*self._mysql, timeout=5.0)
            if unreachable:
                raise ConnectError(unreachable)
        try:
            return store_ext.CreateMetadataStore(self._config, self._migration)
        except Exception as exc:  # the extension raises RuntimeError/ValueError with MLMD's message
            raise ConnectError(" ".join(str(exc).split()) or type(exc).__name__) from exc

    def _unavailable(self, why) -> tuple[bytes, int, str]:
        host, port = self._mysql
        return b"", grpc.StatusCode.UNAVAILABLE.value[0], f"metadata database (MySQL at {host}:{port}) down: {why}"

    def call(self, method: Callable, request: bytes) -> tuple[bytes, int, str]:
        """Runs one RPC's extension function: (response bytes, status number, error message)."""
        with self._lock:
            if self._closed:
                return b"", grpc.StatusCode.UNAVAILABLE.value[0], "metadata server is stopping"
            for _attempt in (1, 2):
                if self._handle is None:
                    try:
                        self._handle = self._open()
                        log.info("reconnected to the metadata database")
                    except ConnectError as exc:
                        return self._unavailable(exc)
                response, error, status = method(self._handle, request)
                if status == 0 or not self._mysql or not _lost_connection(error):
                    break
                log.warning("database connection lost (%s): opening a new one", _text(error))
                self._handle = None
            else:
                return self._unavailable(_text(error))
        return response, status, _text(error)

    def close(self) -> None:
        """Drops the C++ store, which closes its connection."""
        with self._lock:
            self._closed = True
            self._handle = None


def _text(message) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message or "")
    return text.strip()


def _lost_connection(error) -> bool:
    text = _text(error)
    return any(marker in text for marker in _CONNECTION_LOST)


def rpc_handlers(store: Store) -> tuple[dict[str, grpc.RpcMethodHandler], list[str]]:
    """A bytes-in/bytes-out handler for every RPC of the service; those the extension lacks answer UNIMPLEMENTED."""
    service = metadata_store_service_pb2.DESCRIPTOR.services_by_name["MetadataStoreService"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    missing: list[str] = []
    for rpc in service.methods:
        method = getattr(store_ext, rpc.name, None)
        if method is None:
            missing.append(rpc.name)
            handlers[rpc.name] = grpc.unary_unary_rpc_method_handler(_unimplemented(rpc.name))
        else:
            handlers[rpc.name] = grpc.unary_unary_rpc_method_handler(_passthrough(store, method))
    return handlers, missing


def _passthrough(store: Store, method: Callable):
    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        response, status, message = store.call(method, request)
        if status != 0:
            context.abort(_STATUS_BY_NUMBER.get(status, grpc.StatusCode.UNKNOWN), message)
        return response
    return handle


def _unimplemented(name: str):
    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      f"{SERVICE}/{name} is not implemented by this server (the ml-metadata wheel lacks it)")
    return handle


def connection_config(args: argparse.Namespace) -> tuple[metadata_store_pb2.ConnectionConfig, str]:
    """The store's ConnectionConfig and a one-line description of it for the logs."""
    config = metadata_store_pb2.ConnectionConfig()
    if args.mysql_config_host:
        config.mysql.host = args.mysql_config_host
        config.mysql.port = args.mysql_config_port
        config.mysql.database = args.mysql_config_database
        config.mysql.user = args.mysql_config_user
        config.mysql.password = args.mysql_config_password
        return config, f"mysql {args.mysql_config_host}:{args.mysql_config_port}/{args.mysql_config_database}"
    config.sqlite.filename_uri = args.sqlite_filename
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return config, f"sqlite {args.sqlite_filename}" if args.sqlite_filename else "sqlite in memory (not persistent)"


def _reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection opens, else why not. Checked before the C++ connect, which may block for minutes
    on an address that drops packets, and which holds the store's lock while it does."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__


def open_store(config: metadata_store_pb2.ConnectionConfig, upgrade: bool, timeout_s: float) -> Store:
    """Opens the store; MySQL is retried until timeout_s (it may still be starting), SQLite is not."""
    if not config.HasField("mysql"):
        return Store(config, upgrade)
    address = f"{config.mysql.host}:{config.mysql.port}"
    deadline = time.monotonic() + timeout_s
    attempt, delay = 0, 1.0
    while True:
        attempt += 1
        try:
            return Store(config, upgrade)
        except ConnectError as exc:
            error = str(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConnectError(f"cannot open MySQL at {address} after {attempt} attempts in {timeout_s:g} s: "
                               + error)
        log.warning("MySQL at %s not ready (attempt %d, retrying for %.0f s more): %s", address, attempt, left, error)
        time.sleep(min(delay, left))
        delay = min(delay * 2, 10.0)


def start_server(store: Store, port: int, options: list, host: str = "0.0.0.0") -> tuple[grpc.Server, int, list]:
    """Starts the gRPC server; returns it, the bound port (port 0 picks one) and the unimplemented RPC names."""
    handlers, missing = rpc_handlers(store)
    # Calls run one at a time on the store; a few threads keep slow clients from blocking the queue.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="mlmd"), options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:  # older grpcio returns 0 instead of raising
        raise RuntimeError(f"cannot listen on {host}:{port}")
    server.start()
    return server, bound, missing


def self_check() -> int:
    """Build-time check: in-memory SQLite served on a local port, PutExecutionType then GetExecutionTypes through
    ml_metadata's own stubs, and an unknown type answering NOT_FOUND. Exit status 0 when all of it works."""
    from ml_metadata.proto import metadata_store_service_pb2_grpc as service_grpc

    config, _ = connection_config(argparse.Namespace(mysql_config_host="", sqlite_filename=""))
    store = Store(config, upgrade=True)
    server, port, missing = start_server(store, 0, channel_options("grpc.max_receive_message_length=104857600"),
                                         host="127.0.0.1")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_grpc.MetadataStoreServiceStub(channel)
            request = metadata_store_service_pb2.PutExecutionTypeRequest(
                execution_type=metadata_store_pb2.ExecutionType(name="kuberec.SelfCheck"))
            request.execution_type.properties["step"] = metadata_store_pb2.STRING
            type_id = stub.PutExecutionType(request, timeout=10).type_id
            types = stub.GetExecutionTypes(metadata_store_service_pb2.GetExecutionTypesRequest(), timeout=10)
            found = [(t.id, t.name) for t in types.execution_types]
            if (type_id, "kuberec.SelfCheck") not in found:
                print(f"self-check failed: wrote execution type {type_id}, read back {found}", file=sys.stderr)
                return 1
            try:
                stub.GetExecutionType(metadata_store_service_pb2.GetExecutionTypeRequest(type_name="no.such.type"),
                                      timeout=10)
                print("self-check failed: an unknown type did not answer NOT_FOUND", file=sys.stderr)
                return 1
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    print(f"self-check failed: unknown type answered {exc.code()}: {exc.details()}", file=sys.stderr)
                    return 1
    finally:
        server.stop(None)
        store.close()
    print(f"self-check passed: ml_metadata.MetadataStoreService round trip on 127.0.0.1:{port} "
          f"(execution type id {type_id}; unimplemented: {', '.join(missing) or 'none'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.self_check:
        return self_check()
    try:
        options = channel_options(args.grpc_channel_arguments)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    config, described = connection_config(args)
    try:
        store = open_store(config, args.enable_database_upgrade, args.connect_timeout_s)
    except ConnectError as exc:
        log.error("%s", " ".join(str(exc).split()))
        return 1
    server, port, missing = start_server(store, args.grpc_port, options)
    log.info("serving %s on 0.0.0.0:%d, database %s, schema upgrade %s, unimplemented: %s", SERVICE, port,
             described, "on" if args.enable_database_upgrade else "off", ", ".join(missing) or "none")

    stopped = threading.Event()

    def stop(signum, _frame):
        # Graceful: refuse new calls, let those in flight finish for a few seconds (the pod's grace period is 30 s).
        if not stopped.is_set():
            stopped.set()
            log.info("%s received: stopping", signal.Signals(signum).name)
            server.stop(grace=10)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.wait_for_termination()
    store.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
