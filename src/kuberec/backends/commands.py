"""CLI: `kuberec k8s render | deploy | reap` — see the custom resource a step becomes, roll a model out to KServe,
delete the jobs whose step has stopped."""

from __future__ import annotations

import argparse
import shlex

from kuberec.backends.k8s.kinds import KINDS, Kind
from kuberec.cli import Command


def _kind_choices() -> dict[str, Kind]:
    """`kubectl`'s lower-case names of the kinds the backend creates: {"mpijob": MPIJOB, ...}."""
    return {name.lower(): kind for name, kind in KINDS.items()}


def _render(args: argparse.Namespace) -> None:
    import yaml

    from kuberec.backends.jobs import HorovodJob, RayJob, ServingJob, SparkJob
    from kuberec.backends.k8s.kinds import INFERENCE_SERVICE, MPIJOB, SPARK_APPLICATION
    from kuberec.backends.k8s.options import ClusterOptions
    from kuberec.backends.k8s.render import render
    from kuberec.errors import KuberecError
    from kuberec.settings import load_settings

    kind = _kind_choices()[args.kind]
    job_args = tuple(shlex.split(args.args))
    if kind is INFERENCE_SERVICE:
        if not args.model_uri:
            raise KuberecError("an InferenceService needs --model-uri (the MLflow model's storage URI)")
        job = ServingJob(args.name or "model", args.model_uri)
    else:
        if not args.module:
            raise KuberecError(f"a {args.kind} needs --module (the step's python -m entrypoint)")
        name = args.name or args.module.rsplit(".", 1)[-1]
        if kind is SPARK_APPLICATION:
            job = SparkJob(name, args.module, job_args, executors=args.workers)
        elif kind is MPIJOB:
            job = HorovodJob(name, args.module, job_args, workers=args.workers,
                             slots_per_worker=args.slots_per_worker, gpus_per_worker=args.gpus_per_worker)
        else:
            job = RayJob(name, args.module, job_args, workers=args.workers, gpus_per_worker=args.gpus_per_worker)
    class NoAliases(yaml.SafeDumper):  # the containers share one env list; print it in full each time
        def ignore_aliases(self, data) -> bool:
            return True

    body = render(job, load_settings(), ClusterOptions.from_env())
    print(yaml.dump(body, Dumper=NoAliases, sort_keys=False), end="")


def _render_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=list(_kind_choices()))
    parser.add_argument("--module", help="the step's module, e.g. kuberec.similarity.train")
    parser.add_argument("--name", help="step name (default: the module's last part)")
    parser.add_argument("--workers", type=int, default=2, help="MPI workers, Ray workers or Spark executors")
    parser.add_argument("--slots-per-worker", type=int, default=1)
    parser.add_argument("--gpus-per-worker", type=int, default=0)
    parser.add_argument("--model-uri", help="InferenceService: storage URI of the MLflow model")
    parser.add_argument("--args", default="", help="the module's arguments as one shell-quoted string, "
                                                   "e.g. --args '--epochs 3'")


def _deploy(args: argparse.Namespace) -> None:
    from kuberec import tracking
    from kuberec.backends.jobs import ServingJob
    from kuberec.backends.kubernetes import KubernetesBackend
    from kuberec.settings import load_settings

    backend = KubernetesBackend(load_settings())
    storage_uri = tracking.artifact_store_uri(backend.settings, args.model_uri, backend.options.mlflow_artifacts)
    if storage_uri != args.model_uri:
        print(f"{args.model_uri} is stored at {storage_uri}")
    job = ServingJob(args.name, storage_uri, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                     cpu_target=args.cpu_target)
    url = backend.deploy(job, canary_percent=args.canary_percent)
    if args.canary_percent is None:
        print(f"InferenceService {args.name} ready at {url}")
    else:
        print(f"InferenceService {args.name}: the canary {storage_uri} takes {args.canary_percent}% of the inference "
              f"requests sent to {url}/v2/models/{args.name}/infer (promote or roll back: kuberec k8s promote|"
              f"rollback {args.name})")


def _deploy_args(parser: argparse.ArgumentParser) -> None:
    from kuberec.backends.jobs import ServingJob

    parser.add_argument("name", help="InferenceService name (the model's, e.g. similarity); an existing one is "
                                     "rolled to the new model")
    parser.add_argument("--model-uri", required=True,
                        help="the MLflow model: a registry URI (models:/similarity@champion), runs:/<id>/<path> or "
                             "its storage URI (s3://...)")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=1,
                        help="above --min-replicas, KServe's HorizontalPodAutoscaler adds pods on CPU")
    parser.add_argument("--cpu-target", type=int, default=ServingJob.cpu_target, metavar="PERCENT",
                        help="the pods' CPU, in percent of their request, that the autoscaler keeps them at")
    parser.add_argument("--canary-percent", type=int, metavar="N",
                        help="serve the model as a canary beside the existing one, taking N percent of the "
                             "requests through the service's split (<name>-split); again with another N changes "
                             "the share")


def _canary_command(action: str):
    def run(args: argparse.Namespace) -> None:
        from kuberec.backends.kubernetes import KubernetesBackend
        from kuberec.settings import load_settings

        backend = KubernetesBackend(load_settings())
        url = getattr(backend, action)(args.name)
        print(f"InferenceService {args.name}: canary {'promoted' if action == 'promote' else 'rolled back'}; "
              f"{url} sends every request to its predictor")
    return run


def _canary_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="the InferenceService with a canary")


def _reap(args: argparse.Namespace) -> None:
    from kuberec.backends.kubernetes import KubernetesBackend, reap_forever
    from kuberec.settings import load_settings

    if args.every is None:
        for job in KubernetesBackend(load_settings()).reap():
            print(f"deleted {job}")
    else:
        reap_forever(load_settings(), args.every)


def _reap_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--every", type=float, metavar="SECONDS",
                        help="keep going, looking every SECONDS (as the cluster's kuberec-reaper does); without it, "
                             "look once and print what was deleted")


COMMANDS = [
    Command("k8s", "render", "print the custom resource a step becomes with KUBEREC_BACKEND=kubernetes",
            _render, _render_args),
    Command("k8s", "deploy", "create or roll out a KServe InferenceService for an MLflow model and wait until "
                             "it is ready", _deploy, _deploy_args),
    Command("k8s", "promote", "make an InferenceService's canary its stable version, with no request failing",
            _canary_command("promote"), _canary_args),
    Command("k8s", "rollback", "remove an InferenceService's canary, sending every request to the stable version",
            _canary_command("rollback"), _canary_args),
    Command("k8s", "reap", "delete the unfinished Spark, MPI and Ray jobs whose step's pod has stopped (a "
                           "terminated Kubeflow Pipelines run's)", _reap, _reap_args),
]
