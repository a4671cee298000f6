"""CLI: `kuberec k8s render | deploy` — see the custom resource a step becomes, and roll a model out to KServe."""

from __future__ import annotations

import argparse
import shlex

from kuberec.cli import Command

KINDS = ("sparkapplication", "mpijob", "rayjob", "inferenceservice")


def _render(args: argparse.Namespace) -> None:
    import yaml

    from kuberec.backends import HorovodJob, RayJob, ServingJob, SparkJob
    from kuberec.backends.kubernetes import KubernetesBackend
    from kuberec.errors import KuberecError
    from kuberec.settings import load_settings

    job_args = tuple(shlex.split(args.args))
    if args.kind == "inferenceservice":
        if not args.model_uri:
            raise KuberecError("an InferenceService needs --model-uri (the MLflow model's storage URI)")
        job = ServingJob(args.name or "model", args.model_uri)
    else:
        if not args.module:
            raise KuberecError(f"a {args.kind} needs --module (the step's python -m entrypoint)")
        name = args.name or args.module.rsplit(".", 1)[-1]
        if args.kind == "sparkapplication":
            job = SparkJob(name, args.module, job_args, executors=args.workers)
        elif args.kind == "mpijob":
            job = HorovodJob(name, args.module, job_args, workers=args.workers,
                             slots_per_worker=args.slots_per_worker, gpus_per_worker=args.gpus_per_worker)
        else:
            job = RayJob(name, args.module, job_args, workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    class NoAliases(yaml.SafeDumper):  # the containers share one env list; print it in full each time
        def ignore_aliases(self, data) -> bool:
            return True

    print(yaml.dump(KubernetesBackend(load_settings()).render(job), Dumper=NoAliases, sort_keys=False), end="")


def _render_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--module", help="the step's module, e.g. kuberec.similarity.train")
    parser.add_argument("--name", help="step name (default: the module's last part)")
    parser.add_argument("--workers", type=int, default=2, help="MPI workers, Ray workers or Spark executors")
    parser.add_argument("--slots-per-worker", type=int, default=1)
    parser.add_argument("--gpus-per-worker", type=int, default=0)
    parser.add_argument("--model-uri", help="InferenceService: storage URI of the MLflow model")
    parser.add_argument("--args", default="", help="the module's arguments as one shell-quoted string, "
                                                   "e.g. --args '--epochs 3'")


def _deploy(args: argparse.Namespace) -> None:
    from kuberec.backends import ServingJob
    from kuberec.backends.kubernetes import KubernetesBackend
    from kuberec.settings import load_settings

    job = ServingJob(args.name, args.model_uri, min_replicas=args.min_replicas, max_replicas=args.max_replicas)
    url = KubernetesBackend(load_settings()).deploy(job)
    print(f"InferenceService {args.name} ready at {url}")


def _deploy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="InferenceService name (the model's, e.g. similarity); an existing one is "
                                     "rolled to the new model")
    parser.add_argument("--model-uri", required=True, help="storage URI of the MLflow model (s3://...)")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=1)


COMMANDS = [
    Command("k8s", "render", "print the custom resource a step becomes with KUBEREC_BACKEND=kubernetes",
            _render, _render_args),
    Command("k8s", "deploy", "create or roll out a KServe InferenceService for an MLflow model and wait until "
                             "it is ready", _deploy, _deploy_args),
]
