"""The serving and MLflow images' requirement lists, checked and sized in virtualenvs of their own.

For each role (images/<role>/requirements.txt, installed with -c constraints.txt as its Dockerfile does; the serving
one then adds kuberec without dependencies) a virtualenv under <cache>/image-sizes/ is built once, then checked:
- serving: KServe's model server from that virtualenv (`python -m kuberec.serving.model_server`) serves each
  registered model given, and answers its record's probe query over HTTP;
- mlflow: `mlflow server` from it starts on a SQLite store and creates an experiment over REST, and the PostgreSQL
  driver and boto3 import.
Sizes: each virtualenv's site-packages against the project's .venv (the runtime image's stack plus test tools), and
the images `make cluster-up` built (its images.tsv: build seconds and MB per tag), when there is a cluster.

    .venv/bin/python benchmarks/image_sizes.py \\
        --model kuberec-similarity=$KUBEREC_HOME/serving/models/kuberec-similarity/v1 \\
        --model kuberec-widedeep=$KUBEREC_HOME/serving/models/kuberec-widedeep/v1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from serving_bench import wait_ready  # noqa: E402

ROLES = ("serving", "mlflow")


def tree_mb(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) // 10**6


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3.*/site-packages"))


def role_environment(cache: Path, role: str) -> tuple[Path, float | None]:
    """The role's virtualenv, built when its requirements or the pins changed; (path, install seconds or None)."""
    requirements = REPO / "images" / role / "requirements.txt"
    inputs = [requirements, REPO / "constraints.txt"] + ([REPO / "pyproject.toml"] if role == "serving" else [])
    key = hashlib.sha256(b"".join(p.read_bytes() for p in inputs)).hexdigest()[:12]
    venv = cache / "image-sizes" / f"{role}-{key}"
    if (venv / ".complete").exists():
        return venv, None
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    env = {**os.environ, "PIP_CACHE_DIR": str(cache / "pip")}
    subprocess.run([*pip, "pip==25.3"], check=True, env=env)
    subprocess.run([*pip, "-c", str(REPO / "constraints.txt"), "-r", str(requirements)], check=True, env=env)
    if role == "serving":
        subprocess.run([*pip, "--no-deps", str(REPO)], check=True, env=env)
    (venv / ".complete").write_text(key)
    return venv, round(time.monotonic() - started, 1)


def check_serving(venv: Path, models: dict[str, Path], scratch: Path) -> dict:
    """Each model on KServe's model server from the role's virtualenv, asked its record's probe query."""
    from kuberec.inference import infer
    from kuberec.models import served_record
    from kuberec.ports import free_port

    answers = {}
    for name, model_dir in models.items():
        port, log = free_port(), scratch / f"{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen([str(venv / "bin" / "python"), "-m", "kuberec.serving.model_server",
                                        "--model-dir", str(model_dir), "--model-name", name, "--http-port",
                                        str(port), "--grpc-port", str(free_port())], stdout=out, stderr=out,
                                       env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
        try:
            started = time.monotonic()
            url = f"http://127.0.0.1:{port}"
            wait_ready(f"{url}/v2/models/{name}/ready", process, log)
            serving = served_record(name).serving
            answer = infer(url, name, serving.probe, {"k": 3})[serving.answer_column]
            answers[name] = {"ready_s": round(time.monotonic() - started, 1), serving.answer_column: answer}
        finally:
            process.terminate()
            process.wait(timeout=60)
    return answers


def check_mlflow(venv: Path, scratch: Path) -> dict:
    """`mlflow server` from the role's virtualenv on a SQLite store: health, then an experiment created over REST."""
    from kuberec.ports import free_port

    subprocess.run([str(venv / "bin" / "python"), "-c", "import boto3, psycopg2"], check=True)
    port, log = free_port(), scratch / "mlflow.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(venv / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                                    str(port), "--backend-store-uri", f"sqlite:///{scratch}/mlflow.db",
                                    "--default-artifact-root", str(scratch / "artifacts")], stdout=out, stderr=out,
                                   env={**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/health", process, log)
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/create", method="POST",
                                         data=json.dumps({"name": "image-sizes"}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return {"experiment_id": json.loads(response.read())["experiment_id"]}
    finally:
        process.terminate()
        process.wait(timeout=60)


def built_images(state: Path) -> dict[str, dict]:
    """The newest build of each image `make cluster-up` recorded: {tag: {build_s, size_mb, date}}."""
    report = state / "images.tsv"
    if not report.exists():
        return {}
    images = {}
    for line in report.read_text().splitlines()[1:]:
        tag, build_s, size_mb, date = line.split("\t")
        images[tag] = {"build_s": int(build_s), "size_mb": int(size_mb), "date": date}
    return images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                        help="a registered model's directory (as `kuberec serve` caches it) to serve from the "
                             "serving virtualenv; repeat for each model")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    from kuberec.settings import load_settings

    settings = load_settings()
    models = {name: Path(path) for name, path in (m.split("=", 1) for m in args.model)}
    report: dict = {"machine": os.uname().nodename, "cpus": os.cpu_count(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "project_venv_site_packages_mb": tree_mb(site_packages(REPO / ".venv"))}
    with tempfile.TemporaryDirectory() as scratch:
        for role in ROLES:
            venv, install_s = role_environment(settings.cache_dir, role)
            entry = {"venv": str(venv), "install_s": install_s, "site_packages_mb": tree_mb(site_packages(venv))}
            role_scratch = Path(scratch) / role
            role_scratch.mkdir()
            entry["check"] = (check_serving(venv, models, role_scratch) if role == "serving"
                              else check_mlflow(venv, role_scratch))
            report[role] = entry
    report["images"] = built_images(settings.home / "cluster")
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
