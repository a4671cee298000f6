"""images/: the Dockerfiles cannot be built here (no Docker engine), so they are linted with hadolint, their
versions are checked against the project's pins, and their pinned requirement sets are resolved against the
package registry."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kuberec.backends.k8s.render import SPARK_LAUNCHER
from kuberec.lake.spark import DELTA_VERSION
from kuberec.settings import Settings

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
CACHE = Path(os.environ.get("KUBEREC_CACHE", REPO / ".kuberec" / "cache")).absolute()
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
# The kinds the backend and the manifests name (Settings.image(kind)), plus the MLflow server's image.
KINDS = {"runtime", "horovod-cpu", "horovod-gpu", "spark", "serving", "mlflow"}


def project_requirements() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line.strip())
        if match:
            out[_norm(match[1])] = match[2]
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def arg(dockerfile: Path, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)", dockerfile.read_text(), re.M)
    assert match, f"{dockerfile}: no ARG {name}"
    return match[1]


def test_one_dockerfile_per_image_kind():
    assert {d.parent.name for d in DOCKERFILES} == KINDS
    bake = (IMAGES / "docker-bake.hcl").read_text()
    for kind in KINDS:
        # The tag make images gives each image is the name the backend asks for.
        assert f'tags       = ["${{REGISTRY}}/kuberec-{kind}:${{TAG}}"]' in bake
        assert Settings(image_registry="R", image_tag="T").image(kind) == f"R/kuberec-{kind}:T"


# Kubeflow Pipelines' own parts (images/kfp/*), built only for the cluster of make cluster-up: linted like the rest;
# their pins are KFP's and ML Metadata's, not kuberec's.
KFP_DOCKERFILES = sorted(IMAGES.glob("kfp/*/Dockerfile"))


@pytest.mark.parametrize("dockerfile", [*DOCKERFILES, *sorted(IMAGES.glob("bases/*/Dockerfile")), *KFP_DOCKERFILES],
                         ids=lambda p: str(p.parent.relative_to(IMAGES)))
def test_hadolint(dockerfile, k8s_tool):
    result = subprocess.run([str(k8s_tool("hadolint")), "--config", str(REPO / ".hadolint.yaml"), str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_pip_installs_are_pinned(dockerfile):
    """Every pip install of dependencies goes through constraints.txt (or installs no dependencies)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    installs = [cmd.strip() for line in text.splitlines() for cmd in line.split("&&") if "pip install" in cmd]
    for cmd in installs:
        if '"pip==' in cmd:
            continue
        assert "constraints.txt" in cmd or "--no-deps" in cmd, f"{dockerfile.parent.name}: unpinned `{cmd}`"


def test_versions_match_the_project():
    assert arg(IMAGES / "spark" / "Dockerfile", "DELTA_VERSION") == DELTA_VERSION
    import pyspark

    hadoop = arg(IMAGES / "spark" / "Dockerfile", "HADOOP_VERSION")
    jars = Path(pyspark.__file__).parent / "jars"
    assert (jars / f"hadoop-client-api-{hadoop}.jar").exists(), "hadoop-aws must match pyspark's Hadoop"
    spark_dockerfile = (IMAGES / "spark" / "Dockerfile").read_text()
    assert f"run_module.py {SPARK_LAUNCHER.removeprefix('local://')}" in spark_dockerfile
    cuda = arg(IMAGES / "horovod-gpu" / "Dockerfile", "CUDA_VERSION")
    cuda_runtime = pins(IMAGES / "horovod-gpu" / "requirements.txt")["nvidia-cuda-runtime-cu12"]
    assert cuda.split(".")[:2] == cuda_runtime.split(".")[:2], "CUDA toolkit and TF's CUDA wheels must agree"
    setup_pip = re.search(r'"pip==([^"]+)"', (REPO / "scripts" / "setup.sh").read_text())[1]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        for version in re.findall(r'"pip==([^"]+)"', text):
            assert version == setup_pip
        for version in re.findall(r"FROM python:(\d+\.\d+)", text):
            assert version == python, f"{dockerfile}: Python {version}, the project runs {python}"


def test_image_requirements_resolve_to_exact_pins(tmp_path):
    """The images install pyproject's dependencies + their own requirements.txt with -c constraints.txt. Resolve
    their union the way pip in the image would, and check every package lands on a pin: then each image's subset
    resolves to the same versions. The result is cached per input hash, so reruns are instant."""
    constraints = REPO / "constraints.txt"
    extra_files = sorted(IMAGES.glob("*/requirements.txt"))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(project_requirements()) + "\n")
    pinned = pins(constraints)
    for path in extra_files:
        pinned.update(pins(path))
    key = hashlib.sha256(b"".join(p.read_bytes() for p in (constraints, REPO / "pyproject.toml", *extra_files)))
    stamp = CACHE / "image-resolve" / f"{key.hexdigest()[:16]}.json"
    if stamp.exists():
        report = json.loads(stamp.read_text())
    else:
        # fast-deps: pip reads each wheel's metadata by HTTP range requests. Where an index serves no separate
        # metadata files (PEP 658), pip otherwise downloads every wheel whole, GBs of CUDA wheels for a dry run: a CI
        # machine ran out of disk doing that.
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--use-feature=fast-deps", "--disable-pip-version-check", "-c", str(constraints),
                   "-r", str(requirements),
                   *(a for path in extra_files for a in ("-r", str(path))), "--report", str(tmp_path / "report.json")]
        env = {**os.environ, "PIP_CACHE_DIR": str(CACHE / "pip")}
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
        if result.returncode != 0:
            if re.search(r"NewConnectionError|Temporary failure in name resolution|Network is unreachable|"
                         r"Could not fetch URL|ConnectTimeout|ReadTimeout", result.stderr):
                pytest.skip(f"package registry unreachable, cannot resolve the image requirements: "
                            f"{result.stderr.strip().splitlines()[-1]}")
            pytest.fail(f"the images' requirements do not resolve:\n{result.stderr[-3000:]}")
        report = json.loads((tmp_path / "report.json").read_text())
    resolved = {_norm(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
    unpinned = sorted(f"{name}=={version}" for name, version in resolved.items() if name not in pinned)
    assert not unpinned, f"resolved but pinned nowhere (add to constraints.txt or the image's requirements.txt): " \
                         f"{unpinned}"
    off = sorted(f"{name}: {version} != {pinned[name]}" for name, version in resolved.items()
                 if pinned[name] != version)
    assert not off, off
    for must in ("tensorflow", "kserve", "boto3", "psycopg2-binary", "nvidia-nccl-cu12"):
        assert must in resolved
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(report))
