"""Canary rollouts and autoscaling of an InferenceService on the cluster of `make cluster-up`, under load.

The registered model (--model, default kuberec-similarity) needs two versions: its champion and another one, the
newest other, called "earlier" below (run `make e2e` twice). Every request goes through `kubectl proxy` on
127.0.0.1 (the API server's proxy sends each request to a ready endpoint of the Service, as an ingress would), from
--clients threads asking the model's probe query one request after another; the answer (the response's outputs)
says which version answered.

1. The earlier version is deployed as the stable one (`kuberec k8s deploy`).
2. For each --percent N: the champion as a canary (`kuberec k8s deploy ... --canary-percent N`), then --requests
   requests to the service's split (the InferenceGraph <model>-split): the canary's share of the answers.
3. Promotion under load: `kuberec k8s promote`; no request may fail, the last answers are the champion's.
4. Rollback under load: the earlier version as a 30% canary, then `kuberec k8s rollback`; no request may fail, the
   last answers are the champion's.
5. Autoscaling: the champion with --min-replicas 1 --max-replicas 2 (KServe's HPA on CPU, metrics-server): under the
   load through the predictor's Service the replicas go to 2; under a light load (one client, a request a second)
   back to 1 after the HPA's 5-minute downscale window. The replicas are read every 5 s; no request may fail.

Prints one JSON summary (also written to --out) for docs/BENCHMARKS.md; exits non-zero when a check fails.

    KUBEREC_HOME=... .venv/bin/python benchmarks/canary_rollout.py [--model kuberec-similarity] [--percent 10 30]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script: the repository, for tests/e2e
from tests.e2e.cluster_access import ClusterAccess  # noqa: E402
from tests.e2e.driver import ContinuousLoad, answer_key  # noqa: E402


def kuberec(args: list[str], env: dict[str, str]) -> float:
    """Run a kuberec command to the end (its output shown); its wall time."""
    started = time.monotonic()
    subprocess.run([str(Path(sys.executable).parent / "kuberec"), *args], env=env, check=True)
    return round(time.monotonic() - started, 1)


def ask(url: str, path: str, body: str) -> str:
    from kuberec import inference

    status, data = inference.post(url, path, body, timeout=60)
    if status != 200:
        raise RuntimeError(f"{url}{path} answered {status}: {inference.error_message(data)}")
    return answer_key(data)


def versions(load: ContinuousLoad, answers: dict[str, str]) -> dict[str, int]:
    """Requests answered by each named version ({name: answer}); answers of neither count as 'other'."""
    by_answer = {answer: name for name, answer in answers.items()}
    counts: dict[str, int] = {}
    for answer, n in load.answers.items():
        counts[by_answer.get(answer, "other")] = counts.get(by_answer.get(answer, "other"), 0) + n
    return counts


def until_requests(load: ContinuousLoad, requests: int) -> None:
    while len(load.latencies) < requests:
        time.sleep(0.2)


def under_load(url: str, path: str, body: str, clients: int, command: list[str], env: dict[str, str],
               answers: dict[str, str], settle_s: float) -> dict[str, Any]:
    """Run `command` while `clients` clients ask; the load's summary, the command's time and answers by version."""
    with ContinuousLoad(url, path, body, clients) as load:
        time.sleep(settle_s)
        seconds = kuberec(command, env)
        time.sleep(settle_s)
    return {"command": " ".join(command), "command_s": seconds, **load.summary(),
            "by version": versions(load, answers),
            "last answer": next((n for n, a in answers.items() if a == load.last_answer), "other")}


def replicas(apps, autoscaling, namespace: str, name: str) -> dict[str, Any]:
    deployment = apps.read_namespaced_deployment(f"{name}-predictor", namespace)
    hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler(f"{name}-predictor", namespace)
    cpu = next((m.resource.current.average_utilization for m in hpa.status.current_metrics or []
                if m.resource and m.resource.current), None)
    return {"ready": deployment.status.ready_replicas or 0, "desired": hpa.status.desired_replicas, "cpu_pct": cpu}


def autoscale(access: ClusterAccess, proxy_url: str, name: str, path: str, body: str, clients: int,
              timeout_s: float) -> dict[str, Any]:
    """Replicas under load (to 2), then under a light load (back to 1): a timeline every 5 s, and both loads."""
    from kubernetes import client, config

    api = config.new_client_from_config(str(access.kubeconfig))
    apps, autoscaling = client.AppsV1Api(api), client.AutoscalingV2Api(api)
    url = proxy_url + access.service_path(f"{name}-predictor", 80)
    timeline: list[dict[str, Any]] = []
    started = time.monotonic()

    def follow(load: ContinuousLoad, want: int) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = replicas(apps, autoscaling, access.namespace, name)
            timeline.append({"s": round(time.monotonic() - started), **now, "requests": len(load.latencies)})
            print(f"autoscaling: {timeline[-1]}", flush=True)
            if now["ready"] == want and now["desired"] == want:
                return True
            time.sleep(5)
        return False

    with ContinuousLoad(url, path, body, clients) as heavy:
        up = follow(heavy, 2)
        time.sleep(30)  # both replicas answering
    with ContinuousLoad(url, path, body, 1, pause_s=1.0) as light:
        down = follow(light, 1)
    return {"scaled to 2": up, "scaled back to 1": down, "timeline": timeline,
            "heavy load": heavy.summary(), "light load": light.summary()}


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient

    from kuberec import inference
    from kuberec.models import MODELS
    from kuberec.settings import load_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kuberec-similarity", help="the registered model (and service) name")
    parser.add_argument("--percent", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--requests", type=int, default=2000, help="requests per canary share")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--settle", type=float, default=10, help="seconds of load before and after each command")
    parser.add_argument("--scale-timeout", type=float, default=900)
    parser.add_argument("--skip-autoscaling", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("canary-rollout.json"))
    args = parser.parse_args(argv)

    name = args.model
    record = next(record for record in MODELS.values() if record.registered_name == name)
    path, body = f"/v2/models/{name}/infer", inference.body_text(record.serving.probe, {"k": 5})
    access = ClusterAccess.from_settings(load_settings())
    summary: dict[str, Any] = {"model": name, "clients": args.clients, "shares": []}
    with access.forward("svc/minio", 9000) as minio, access.forward("svc/mlflow", 5000) as mlflow, \
            access.proxy() as proxy:
        env = access.client_env(minio.url, mlflow.url, "s3://kuberec/e2e")
        registry = MlflowClient(env["MLFLOW_TRACKING_URI"])
        champion = int(registry.get_model_version_by_alias(name, "champion").version)
        others = [int(v.version) for v in registry.search_model_versions(f"name='{name}'")
                  if int(v.version) != champion]
        if not others:
            raise SystemExit(f"{name} has one registered version; the canary needs two (run make e2e again)")
        earlier = max(others)  # the champion gate may have kept an earlier champion
        champion_uri, earlier_uri = f"models:/{name}/{champion}", f"models:/{name}/{earlier}"
        summary.update(champion=champion, earlier=earlier)
        service = proxy.url + access.service_path(f"{name}-predictor", 80)
        split = proxy.url + access.service_path(f"{name}-split", 80)

        summary["deploy earlier_s"] = kuberec(["k8s", "deploy", name, "--model-uri", earlier_uri], env)
        answers = {"earlier": ask(service, path, body)}
        for percent in args.percent:
            seconds = kuberec(["k8s", "deploy", name, "--model-uri", champion_uri, "--canary-percent", str(percent)],
                              env)
            answers["champion"] = ask(proxy.url + access.service_path(f"{name}-canary-predictor", 80), path, body)
            if answers["champion"] == answers["earlier"]:
                raise SystemExit("the two versions give the same answer: their share cannot be told apart")
            with ContinuousLoad(split, path, body, args.clients) as load:
                until_requests(load, args.requests)
            counts = versions(load, answers)
            share = 100 * counts.get("champion", 0) / max(sum(counts.values()), 1)
            summary["shares"].append({"percent": percent, "deploy_s": seconds, "canary share %": round(share, 1),
                                      "within 5 points": abs(share - percent) <= 5, **load.summary(),
                                      "by version": counts})
            print(json.dumps(summary["shares"][-1]), flush=True)
        summary["promote"] = under_load(split, path, body, args.clients, ["k8s", "promote", name], env, answers,
                                        args.settle)
        print(json.dumps(summary["promote"]), flush=True)
        kuberec(["k8s", "deploy", name, "--model-uri", earlier_uri, "--canary-percent", "30"], env)
        summary["rollback"] = under_load(split, path, body, args.clients, ["k8s", "rollback", name], env, answers,
                                         args.settle)
        print(json.dumps(summary["rollback"]), flush=True)
        if not args.skip_autoscaling:
            kuberec(["k8s", "deploy", name, "--model-uri", champion_uri, "--min-replicas", "1", "--max-replicas",
                     "2"], env)
            summary["autoscaling"] = autoscale(access, proxy.url, name, path, body, args.clients,
                                               args.scale_timeout)
    checks = {f"share {s['percent']}% within 5 points": s["within 5 points"] and not s["errors"]
              for s in summary["shares"]}
    for step in ("promote", "rollback"):
        checks[f"{step}: 0 failed, ends on the champion"] = (not summary[step]["errors"]
                                                            and summary[step]["last answer"] == "champion")
    if "autoscaling" in summary:
        scaling = summary["autoscaling"]
        checks["replicas 1 -> 2 -> 1, 0 failed"] = (scaling["scaled to 2"] and scaling["scaled back to 1"] and
                                                   not scaling["heavy load"]["errors"]
                                                   and not scaling["light load"]["errors"])
    summary["checks"] = checks
    args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(checks, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
