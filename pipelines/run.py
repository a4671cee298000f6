"""Run, compile, submit or upload kuberec's pipelines.

    python -m pipelines.run [all|catalog|...] [--param name=value ...]
                            [--compile-only DIR | --upload | --schedule CRON] [--runner subprocess|docker]

Without KFP_HOST the pipeline runs here with the KFP local runner: each component a subprocess of this venv
(`--runner subprocess`, the default; steps on the configured backend), or each component in its container
(kuberec's runtime image, or the one with Horovod) on the Docker daemon DOCKER_HOST names (`--runner docker`: the
same compiled components Kubeflow runs; it needs KUBEREC_BACKEND=kubernetes and an s3:// lake, since the images
launch no Spark or Horovod job of their own and their containers keep no files).

With KFP_HOST it is compiled and submitted to Kubeflow Pipelines as a run in the `kuberec` experiment (service
account kuberec-runner), and the run's URL is printed. `--compile-only DIR` writes
the pipeline YAML and stops. `--upload` compiles each pipeline and uploads it to KFP_HOST: a new pipeline the first
time, else a new version of it named `<image tag>-<UTC time>`; it prints the pipeline's dashboard URL.
`--schedule CRON` uploads that way and makes the new version a recurring run (`kuberec-<pipeline>-schedule` in the
`kuberec` experiment, replacing an earlier one of that name) on KFP's 6-field cron (seconds first: "0 0 * * * *" is
hourly), at most one run at a time and no catch-up of missed times; `--param` values become the runs' inputs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from kuberec.backends.k8s.pods import LOCAL_ONLY_ENV
from kuberec.champion import DEFAULT_POLICY, DEFAULT_TOLERANCE, check_policy
from kuberec.errors import KuberecError
from kuberec.models import MODELS
from kuberec.settings import load_settings

log = logging.getLogger("pipelines")

# Every model has its pipeline, `pipelines/<model>.py` defining `<model>_pipeline`; `all` runs them in order. The
# catalog pipeline (Fashion-MNIST ingestion alone) is the first step of `similarity`; `refresh` grows the similarity
# champion's index with staged catalog images (a recurring run: --schedule).
ALL: tuple[str, ...] = tuple(MODELS)
PIPELINES: tuple[str, ...] = ("catalog", *ALL, "refresh")
SUMMARY_MARK = "== kuberec pipeline summary =="  # the line before main's JSON summary
KFP_HOST_ENV = "KFP_HOST"  # the Kubeflow Pipelines API endpoint: runs are submitted there instead of run here
# Parameters every model's pipeline has but that name one model's things: `all` cannot give one value to both.
PER_MODEL_PARAMS = ("model_name",)


class PipelineError(KuberecError):
    """A pipeline run, compile or upload that cannot be done as asked; nothing was started."""


EXPERIMENT = "kuberec"
# The service account pipeline pods run as: manifests/base/rbac.yaml lets it create kuberec's custom resources.
# kfp-kubernetes has no per-task service account, so it is a setting of each run.
SERVICE_ACCOUNT = "kuberec-runner"
RUNNERS = ("subprocess", "docker")
# What a component's container gets from this environment (as a Kubeflow pod gets them from the kuberec-settings
# ConfigMap and the Secrets): kuberec's settings and backend options, MLflow's and the lake's, not this machine's
# paths.
CONTAINER_ENV_PREFIXES = ("KUBEREC_", "MLFLOW_", "AWS_")
CONTAINER_KUBECONFIG = "/var/run/kuberec/kubeconfig"  # the kubeconfig, mounted read-only
CONTAINER_HOME = "/tmp"  # writable by whichever user the container runs as


def load_pipeline(name: str) -> Callable:
    if name not in PIPELINES:
        raise PipelineError(f"unknown pipeline {name!r}; choose from {', '.join(['all', *PIPELINES])}")
    return getattr(importlib.import_module(f"pipelines.{name}"), f"{name}_pipeline")


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
            raise PipelineError(f"--param expects name=value, got {pair!r}")
        if key not in inputs:
            continue
        # A String input named *_json (a model config) is checked here: a shell that ate its quotes would
        # otherwise fail a task minutes into the run.
        as_json = inputs[key].type != "String" or key.endswith("_json")
        try:
            parsed = json.loads(value) if as_json else value
        except json.JSONDecodeError as err:
            raise PipelineError(f"--param {key}: {value!r} is not valid JSON ({err.msg}); quote the whole pair "
                                f"for the shell, e.g. --param '{key}={{\"epochs\": 2}}'") from None
        params[key] = value if inputs[key].type == "String" else parsed
    if "champion" in params or "champion_tolerance" in params:  # refused now, not after training
        check_policy(params.get("champion", DEFAULT_POLICY), params.get("champion_tolerance", DEFAULT_TOLERANCE))
    return params


def compile_pipeline(name: str, out_dir: Path) -> Path:
    from kfp import compiler

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.yaml"
    compiler.Compiler().compile(load_pipeline(name), str(path))
    return path


def container_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a component's container under `--runner docker`, from this process's `environ`."""
    env = {key: value for key, value in environ.items()
           if key.startswith(CONTAINER_ENV_PREFIXES) and key not in LOCAL_ONLY_ENV}
    env.update(HOME=CONTAINER_HOME, KUBEREC_HOME=f"{CONTAINER_HOME}/kuberec", KUBECONFIG=CONTAINER_KUBECONFIG)
    return env


def docker_runner(environ: Mapping[str, str]):
    """KFP's DockerRunner for kuberec's components: each task a container of its component's image (kuberec's
    runtime image; the one with Horovod for a component that trains in-process) on the host's network (the
    port-forwards to MLflow, MinIO and the API server listen on its 127.0.0.1), as this user (the pipeline root is
    bind-mounted and the outputs must be ours), with the kubeconfig mounted read-only."""
    import docker
    from docker.types import Mount
    from kfp import local

    from components import IMAGES, RUNTIME_IMAGE

    settings = load_settings()
    if settings.backend != "kubernetes" or settings.lake_is_local:
        raise PipelineError(f"--runner docker runs each component in its image ({RUNTIME_IMAGE}), which starts "
                            f"its Spark, Horovod and Ray steps on a cluster and keeps no files: set "
                            f"KUBEREC_BACKEND=kubernetes and an s3:// KUBEREC_LAKE (make e2e does); the backend is "
                            f"{settings.backend!r}, the lake {settings.lake_uri!r}")
    kubeconfig = Path(environ.get("KUBECONFIG") or Path.home() / ".kube" / "config")
    if not kubeconfig.is_file():
        raise PipelineError(f"--runner docker: no kubeconfig file at {kubeconfig} for the components' containers "
                            f"(set KUBECONFIG to one file)")
    try:
        client = docker.from_env()
        try:
            for image in IMAGES:
                client.images.get(image)
        finally:
            client.close()
    except docker.errors.ImageNotFound as err:
        raise PipelineError(f"--runner docker: the Docker daemon lacks an image of the components ({err.explanation}); "
                            f"build them (make images, or make cluster-images for the cluster of make "
                            f"cluster-up)") from None
    except docker.errors.DockerException as err:
        raise PipelineError(f"--runner docker: cannot reach the Docker daemon (DOCKER_HOST="
                            f"{environ.get('DOCKER_HOST', 'unset')}): {err}") from None
    return local.DockerRunner(
        network_mode="host", user=f"{os.getuid()}:{os.getgid()}", environment=container_environment(environ),
        mounts=[Mount(CONTAINER_KUBECONFIG, str(kubeconfig.resolve()), type="bind", read_only=True)])


def run_local(name: str, params: dict[str, object], runner: str = "subprocess") -> dict[str, object]:
    from kfp import local

    settings = load_settings()
    chosen = docker_runner(os.environ) if runner == "docker" else local.SubprocessRunner(use_venv=False)
    # Absolute: the Docker runner mounts the pipeline root into each container at the same path.
    local.init(runner=chosen, pipeline_root=str((settings.home / "kfp").absolute()))
    task = load_pipeline(name)(**params)
    return dict(task.outputs) if task.outputs else {"output": task.output}


def submit(name: str, params: dict[str, object], host: str, out_dir: Path,
           service_account: str = SERVICE_ACCOUNT) -> str:
    """Compile pipeline `name` into out_dir and start a run of that package on Kubeflow Pipelines; returns its URL."""
    import kfp

    package = compile_pipeline(name, out_dir)
    client = kfp.Client(host=host)
    run = client.create_run_from_pipeline_package(str(package), arguments=params, experiment_name=EXPERIMENT,
                                                  run_name=f"{name}-{load_settings().image_tag}",
                                                  service_account=service_account or None)
    return f"{host.rstrip('/')}/#/runs/details/{run.run_id}"


def upload_description(name: str) -> str:
    """What the dashboard shows of an uploaded pipeline and its versions: its description, then each parameter's
    (KFP 2.17's run form shows a parameter's name and type only; the compiled spec keeps the descriptions too)."""
    from kuberec.reports import markdown_text

    pipeline = load_pipeline(name)
    inputs = pipeline.component_spec.inputs or {}
    lines = [f"- **{markdown_text(key)}**: {markdown_text(' '.join((spec.description or '').split()))}"
             for key, spec in sorted(inputs.items())]
    return f"{pipeline.description}\n\nParameters:\n" + "\n".join(lines) if lines else pipeline.description


def version_name(now: datetime | None = None) -> str:
    """A pipeline version's name: the image tag the components run (the package version by default) and when."""
    now = now or datetime.now(timezone.utc)
    return f"{load_settings().image_tag}-{now:%Y%m%d-%H%M%S}"


def upload(name: str, host: str, out_dir: Path) -> dict[str, str]:
    """Compile pipeline `name` into out_dir and upload that package to Kubeflow Pipelines at `host`: the pipeline
    (named as in its @dsl.pipeline) is created the first time, later uploads add a version to it. Returns the
    pipeline's and version's names and ids and the dashboard URL."""
    import kfp

    package = compile_pipeline(name, out_dir)
    pipeline = load_pipeline(name)
    client = kfp.Client(host=host)
    pipeline_id = client.get_pipeline_id(pipeline.name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(str(package), pipeline_name=pipeline.name,
                                             description=upload_description(name)).pipeline_id
        # KFP makes the package the pipeline's first version (named after the pipeline).
        first = client.list_pipeline_versions(pipeline_id, page_size=1).pipeline_versions[0]
        version, version_id = first.display_name, first.pipeline_version_id
        log.info("created pipeline %s (%s) from %s", pipeline.name, pipeline_id, package)
    else:
        version = version_name()
        version_id = client.upload_pipeline_version(str(package), pipeline_version_name=version,
                                                    pipeline_id=pipeline_id,
                                                    description=upload_description(name)).pipeline_version_id
        log.info("uploaded %s as version %s of pipeline %s", package, version, pipeline.name)
    return {"pipeline": pipeline.name, "pipeline_id": pipeline_id, "version": version, "version_id": version_id,
            "url": f"{host.rstrip('/')}/#/pipelines/details/{pipeline_id}/version/{version_id}"}


def schedule(name: str, params: dict[str, object], cron: str, host: str, out_dir: Path,
             service_account: str = SERVICE_ACCOUNT) -> dict[str, str]:
    """Upload pipeline `name` (a new version) and make that version the recurring run `kuberec-<name>-schedule`
    (module docstring), replacing an earlier one of that name; returns its id, the version and the URL."""
    import kfp

    if len(cron.split()) != 6:
        raise PipelineError(f"--schedule {cron!r}: KFP's cron has 6 fields, seconds first (e.g. '0 */10 * * * *' "
                            f"every ten minutes); nothing was uploaded")
    uploaded = upload(name, host, out_dir)
    client = kfp.Client(host=host)
    experiment = client.create_experiment(EXPERIMENT)  # the existing one when it exists
    job_name = f"kuberec-{name}-schedule"
    listed = client.list_recurring_runs(experiment_id=experiment.experiment_id, page_size=100).recurring_runs or []
    for earlier in (job for job in listed if job.display_name == job_name):
        client.delete_recurring_run(earlier.recurring_run_id)
        log.info("replaced recurring run %s (%s)", job_name, earlier.recurring_run_id)
    job = client.create_recurring_run(
        experiment.experiment_id, job_name, description=f"{load_pipeline(name).description} ({cron})",
        cron_expression=cron, max_concurrency=1, no_catchup=True, params=params,
        pipeline_id=uploaded["pipeline_id"], version_id=uploaded["version_id"],
        service_account=service_account or None)
    return {"recurring_run": job_name, "recurring_run_id": job.recurring_run_id, "cron": cron,
            "version": uploaded["version"], "url": f"{host.rstrip('/')}/#/recurringrun/details/{job.recurring_run_id}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run", description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", nargs="?", default="all", choices=["all", *PIPELINES])
    parser.add_argument("--param", action="append", default=[], help="pipeline parameter name=value (JSON value)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--compile-only", type=Path, metavar="DIR", help="write pipeline YAML to DIR and stop")
    mode.add_argument("--upload", action="store_true",
                      help="compile and upload to Kubeflow Pipelines at KFP_HOST as a new pipeline version")
    mode.add_argument("--schedule", metavar="CRON",
                      help="upload (as --upload) and run that version on KFP's 6-field cron at KFP_HOST, one run at "
                           "a time, no catch-up")
    parser.add_argument("--runner", choices=RUNNERS, default="subprocess",
                        help="without KFP_HOST: run each component as a subprocess of this venv (default) or in its "
                             "container on the Docker daemon of DOCKER_HOST (needs KUBEREC_BACKEND=kubernetes)")
    parser.add_argument("--service-account", default=SERVICE_ACCOUNT,
                        help=f"service account of the pipeline's pods for runs submitted to KFP_HOST "
                             f"(default {SERVICE_ACCOUNT}; empty: the KFP default)")
    args = parser.parse_args(argv)
    if args.upload and args.param:
        parser.error("--param sets a run's inputs; an uploaded pipeline takes them when a run is started from it")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = list(ALL) if args.pipeline == "all" else [args.pipeline]
    shared = sorted({pair.partition("=")[0] for pair in args.param} & set(PER_MODEL_PARAMS)) if len(names) > 1 else []
    if shared:
        parser.error(f"--param {', '.join(shared)} names one model's registered model; set it on one pipeline "
                     f"(PIPELINE={' or PIPELINE='.join(ALL)})")
    unknown = {pair.partition("=")[0] for pair in args.param} - {key for name in names for key in pipeline_inputs(name)}
    if unknown:
        parser.error(f"no pipeline of {', '.join(names)} takes --param {', '.join(sorted(unknown))}; see "
                     f"{', '.join(f'{n}: {sorted(pipeline_inputs(n))}' for n in names)}")
    kfp_host = os.environ.get(KFP_HOST_ENV, "")
    if args.schedule and len(names) > 1:
        parser.error("--schedule makes one pipeline a recurring run: name it (e.g. refresh)")
    if args.runner != "subprocess" and (args.compile_only or args.upload or kfp_host):
        parser.error("--runner chooses how a run here executes its components; Kubeflow Pipelines (KFP_HOST, "
                     "--upload) always runs them in their containers, and --compile-only runs nothing")
    if (args.upload or args.schedule) and not kfp_host:
        mode_flag = "--upload" if args.upload else "--schedule"
        raise PipelineError(f"{mode_flag} needs KFP_HOST, the Kubeflow Pipelines API endpoint (e.g. "
                            "KFP_HOST=https://kubeflow.example.com/pipeline make pipeline-upload); nothing was "
                            "uploaded")
    summary: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="kuberec-pipelines-") as packages:
        for name in names:
            params = parse_params(name, args.param)
            if args.compile_only:
                summary[name] = str(compile_pipeline(name, args.compile_only))
            elif args.upload:
                summary[name] = upload(name, kfp_host, Path(packages))
            elif args.schedule:
                summary[name] = schedule(name, params, args.schedule, kfp_host, Path(packages), args.service_account)
            elif kfp_host:
                url = submit(name, params, kfp_host, Path(packages), args.service_account)
                summary[name] = {"run_url": url}
            else:
                summary[name] = run_local(name, params, args.runner)
    print(f"\n{SUMMARY_MARK}")
    print(json.dumps(_rounded(summary), indent=2, sort_keys=True, default=str))
    if not (args.compile_only or kfp_host):
        from kuberec import tracking

        print(f"MLflow (runs, metrics, registry): {tracking.tracking_uri(load_settings())}\n"
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
    from kuberec.entrypoint import run_program

    run_program("pipelines.run", main)
