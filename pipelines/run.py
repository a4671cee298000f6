"""Run, compile or submit kuberec's pipelines.

    python -m pipelines.run [all|catalog|...] [--param name=value ...] [--compile-only DIR]

Without KFP_HOST the pipeline runs here with the KFP local runner (each component a subprocess of this venv,
steps on the local backend). With KFP_HOST it is compiled and submitted to Kubeflow Pipelines as a run in the
`kuberec` experiment, and the run's URL is printed. `--compile-only DIR` writes the pipeline YAML and stops.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from kuberec.settings import load_settings

log = logging.getLogger("pipelines")

# name -> "module:function"; `all` runs ALL in order.
PIPELINES: dict[str, str] = {
    "catalog": "pipelines.catalog:catalog_pipeline",
    "similarity": "pipelines.similarity:similarity_pipeline",
    "widedeep": "pipelines.widedeep:widedeep_pipeline",
}
ALL: tuple[str, ...] = ("similarity", "widedeep")  # the catalog pipeline is the first step of `similarity`
EXPERIMENT = "kuberec"


def load_pipeline(name: str) -> Callable:
    if name not in PIPELINES:
        raise SystemExit(f"unknown pipeline {name!r}; choose from {', '.join(['all', *PIPELINES])}")
    module, func = PIPELINES[name].split(":")
    return getattr(importlib.import_module(module), func)


def pipeline_inputs(name: str) -> dict:
    return load_pipeline(name).component_spec.inputs or {}


def parse_params(name: str, pairs: list[str]) -> dict[str, object]:
    """The `name=value` pairs that pipeline `name` takes, as its typed inputs: JSON values, except that a String
    input keeps its text. (With `all`, each pipeline gets the parameters it has.)"""
    inputs = pipeline_inputs(name)
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--param expects name=value, got {pair!r}")
        if key not in inputs:
            continue
        try:
            params[key] = value if inputs[key].type == "String" else json.loads(value)
        except json.JSONDecodeError:
            raise SystemExit(f"--param {key}: {value!r} is not a valid {inputs[key].type} (JSON)") from None
    return params


def compile_pipeline(name: str, out_dir: Path) -> Path:
    from kfp import compiler

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.yaml"
    compiler.Compiler().compile(load_pipeline(name), str(path))
    return path


def run_local(name: str, params: dict[str, object]) -> dict[str, object]:
    from kfp import local

    settings = load_settings()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(settings.home / "kfp"))
    task = load_pipeline(name)(**params)
    return dict(task.outputs) if task.outputs else {"output": task.output}


def submit(name: str, params: dict[str, object], host: str) -> str:
    import kfp

    client = kfp.Client(host=host)
    run = client.create_run_from_pipeline_func(load_pipeline(name), arguments=params, experiment_name=EXPERIMENT,
                                               run_name=f"{name}-{load_settings().image_tag}")
    return f"{host.rstrip('/')}/#/runs/details/{run.run_id}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="all", choices=["all", *PIPELINES])
    parser.add_argument("--param", action="append", default=[], help="pipeline parameter name=value (JSON value)")
    parser.add_argument("--compile-only", type=Path, metavar="DIR", help="write pipeline YAML to DIR and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = list(ALL) if args.pipeline == "all" else [args.pipeline]
    unknown = {pair.partition("=")[0] for pair in args.param} - {key for name in names for key in pipeline_inputs(name)}
    if unknown:
        parser.error(f"no pipeline of {', '.join(names)} takes --param {', '.join(sorted(unknown))}; see "
                     f"{', '.join(f'{n}: {sorted(pipeline_inputs(n))}' for n in names)}")
    settings = load_settings()
    summary: dict[str, object] = {}
    for name in names:
        params = parse_params(name, args.param)
        if args.compile_only:
            summary[name] = str(compile_pipeline(name, args.compile_only))
        elif settings.kfp_host:
            summary[name] = {"run_url": submit(name, params, settings.kfp_host)}
        else:
            summary[name] = run_local(name, params)
    print("\n== kuberec pipeline summary ==")
    print(json.dumps(_rounded(summary), indent=2, sort_keys=True, default=str))
    if not (args.compile_only or settings.kfp_host):
        from kuberec import tracking

        print(f"MLflow (runs, metrics, registry): {tracking.tracking_uri(settings)}\n"
              f"serve the champions: kuberec serve --demo   (then kuberec recommend --item-id 30)")
    return 0


def _rounded(value: object) -> object:
    """Metrics to 4 decimals, for reading."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


if __name__ == "__main__":
    sys.exit(main())
