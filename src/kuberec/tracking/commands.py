"""CLI: `kuberec mlflow ui | stop | status` — the embedded MLflow server (tracking UI and model registry)."""

from __future__ import annotations

import argparse

from kuberec.cli import Command


def _ui(args: argparse.Namespace) -> None:
    from kuberec.settings import load_settings, redact_uri
    from kuberec.tracking import server as mlflow_server

    settings = load_settings()
    if settings.mlflow_tracking_uri:
        print(f"MLflow tracking server (configured, not managed by kuberec): "
              f"{redact_uri(settings.mlflow_tracking_uri)}")
        return
    info = mlflow_server.ensure_server(settings, port=args.port)
    print(f"MLflow UI: {info.url}  (pid {info.pid}, store {settings.mlflow_dir}; stop it with `kuberec mlflow stop`)")


def _ui_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (default: the running server's, else a free one)")


def _stop(args: argparse.Namespace) -> None:
    from kuberec.settings import load_settings
    from kuberec.tracking import server as mlflow_server

    stopped = mlflow_server.stop_server(load_settings())
    print(f"stopped the MLflow server at {stopped.url} (pid {stopped.pid})" if stopped
          else "no kuberec MLflow server was running for this home")


def _status(args: argparse.Namespace) -> int:
    from kuberec.settings import load_settings, redact_uri
    from kuberec.tracking import server as mlflow_server

    settings = load_settings()
    if settings.mlflow_tracking_uri:
        up = mlflow_server.healthy(settings.mlflow_tracking_uri)
        print(f"{redact_uri(settings.mlflow_tracking_uri)} (configured): "
              f"{'up' if up else 'not answering /health'}")
        return 0 if up else 1
    info = mlflow_server.running_server(settings)
    print(f"running at {info.url} (pid {info.pid})" if info else "not running (it starts on first use)")
    return 0


COMMANDS = [
    Command("mlflow", "ui", "start (or find) the embedded MLflow server on loopback and print its URL", _ui, _ui_args),
    Command("mlflow", "stop", "stop the embedded MLflow server of this home", _stop),
    Command("mlflow", "status", "is the MLflow tracking server up", _status),
]
