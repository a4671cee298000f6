"""Serving benchmark: a registered model on KServe's model server (`kuberec serve`), on MLServer (the server kuberec
used before, in an environment of its own) and on `mlflow models serve`: same model, same queries, one run.

For each server and each query kind, k=5 (the similarity model: a base64 PNG of a Fashion-MNIST test image, not in
the catalog, and a catalog item id; the wide & deep ranker, `--model kuberec-widedeep@champion`: a known user's top
products), the load comes from `wrk` (Debian's C load generator, one thread: `apt-get install wrk`), a separate
process that costs the server little CPU, cycling through the request bodies with a Lua script:
  - one connection for --single-seconds, then --clients connections for --concurrent-seconds (each after a 2 s
    warm-up): requests/s, p50/p90/p99, errors (non-2xx and socket errors; any error fails the run);
  - the server's CPU per request: CPU seconds of the server's process tree during the run / requests.
Also times the pyfunc's predict in-process for the same requests (what the model itself costs), so the table shows
how much the HTTP server layer adds, and records the model directory's size, the pyfunc's load time and memory, and
each server process's resident memory after the concurrent run. Everything runs on loopback. `--workers 1,2` runs
KServe's model server once per process count (default: what `kuberec serve` picks for this machine).

`mlserver`: kuberec as of MLSERVER_REF (MLServer 1.7.1 + mlserver-mlflow and that commit's pins) installed once into
a virtualenv under the cache (<cache>/serving-bench/, minutes the first time: pip from the cache `make setup`
filled), running `kuberec serve` on the same cached model directory.

`--servers ...,inferenceservice` adds the model's KServe InferenceService on the cluster of `make cluster-up` (or
the one KUBECONFIG names), reached through `kubectl port-forward svc/<model>-predictor` on 127.0.0.1; `--model`
must then name the registered model it serves (e.g. kuberec-widedeep@champion), which the local servers fetch from
the cluster's MLflow through a port-forward too, so that the same queries go to the same model everywhere.

The model: `--model NAME[@alias|:version]` from the configured registry, or by default a model built here and
registered under a temporary home: the default architecture (untrained weights: serving cost depends on the
architecture and the index size, not on the weights) over an HNSW index of the 60,000 Fashion-MNIST train images.

    .venv/bin/python benchmarks/serving_bench.py --json /tmp/serving-bench.json
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import kuberec  # noqa: F401  (legacy Keras before TensorFlow)

K = 5
MLSERVER_REF = "8d5cfec"  # the last kuberec commit that served on MLServer 1.7.1
REPO = Path(__file__).resolve().parents[1]


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    from kuberec.datasets import fashion_mnist as fm

    arrays = []
    for kind in ("images", "labels"):
        spec = fm.idx_file(split, kind)
        path = fm.find_file(fm.DEBIAN_DIR, spec)
        arrays.append(fm.parse_idx(spec, fm.decompress(str(path), path.read_bytes()), check_sha256=False))
    return arrays[0], arrays[1]


def build_and_register(settings, catalog_size: int) -> str:
    """Default-architecture embedding model + HNSW index over the train images, registered; returns the spec."""
    from kuberec.similarity.config import SimilarityConfig
    from kuberec.similarity.index import HnswParams, ItemIndex, items_frame
    from kuberec.similarity.model import build_model, embed, export_embedding_model, load_embedding_model
    from kuberec.similarity.pyfunc import log_similarity_model

    config = SimilarityConfig()
    model_dir = export_embedding_model(build_model(config), settings.home / "bench-embedding", config=config)
    images, labels = fashion_mnist("train")
    images, labels = images[:catalog_size], labels[:catalog_size]
    started = time.monotonic()
    vectors = embed(load_embedding_model(model_dir), images)
    index = ItemIndex.build(vectors, items_frame(np.arange(len(images)), labels, images), HnswParams(),
                            table_uri="bench://fashion_mnist", table_version=0)
    print(f"built index of {len(images)} items ({config.architecture}, {vectors.shape[1]}-d) in "
          f"{time.monotonic() - started:.0f} s", flush=True)
    registered = log_similarity_model(settings, model_dir, index, name="kuberec-similarity", set_champion=True)
    return f"{registered.name}:{registered.version}"


WRK_SCRIPT = """
local bodies, i = {}, 0
for line in io.lines(os.getenv("KUBEREC_BENCH_BODIES")) do bodies[#bodies + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i + 1
  return wrk.format(nil, nil, nil, bodies[(i % #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "seconds": %.3f, "non_2xx": %d, "socket_errors": %d, '
    .. '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\\n', summary.requests,
    summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout, latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def v2_body(column: str, value) -> bytes:
    datatype = "BYTES" if isinstance(value, str) else "INT64"
    return json.dumps({"inputs": [{"name": column, "shape": [1], "datatype": datatype, "data": [value]}],
                       "parameters": {"k": K}}).encode()


def mlflow_body(column: str, value) -> bytes:
    return json.dumps({"dataframe_split": {"columns": [column], "data": [[value]]}, "params": {"k": K}}).encode()


def tree_cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU seconds of `pids` and all their descendants (None: no local process)."""
    if not pids:
        return None
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, list(pids)
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo += children.get(current, [])
    return total


def wrk_load(url: str, bodies: Path, script: Path, connections: int, seconds: float,
             server_pids: list[int]) -> dict:
    """One wrk run (after a 2 s warm-up, so first-call costs such as TF tracing are not measured)."""
    env = {**os.environ, "KUBEREC_BENCH_BODIES": str(bodies)}

    def run(duration: float) -> dict:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s",
                              str(script), url], env=env, capture_output=True, text=True, check=True).stdout
        return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT ")).split(" ", 1)[1])

    run(2)
    cpu_before = tree_cpu_seconds(server_pids)
    result = run(seconds)
    cpu_after = tree_cpu_seconds(server_pids)
    result["connections"] = connections
    result["req_per_s"] = round(result["requests"] / result["seconds"], 1)
    result["errors"] = result["non_2xx"] + result["socket_errors"]
    if cpu_before is not None and result["requests"]:
        result["server_cpu_ms_per_request"] = round((cpu_after - cpu_before) / result["requests"] * 1000, 3)
    return result


GRPC_LOAD = """
import json, sys, threading, time
import numpy as np
import tritonclient.grpc as triton

address, model, column, values_file, k, connections, seconds = sys.argv[1:8]
values, connections, seconds = json.load(open(values_file)), int(connections), float(seconds)
latencies, errors, stop = [], [], threading.Event()


def tensor(value):
    is_text = isinstance(value, str)
    item = triton.InferInput(column, [1], "BYTES" if is_text else "INT64")
    item.set_data_from_numpy(np.array([value.encode() if is_text else value], dtype=object if is_text else np.int64))
    return [item]


def client(offset):
    server, i = triton.InferenceServerClient(address), offset  # one channel (HTTP/2 connection) per client
    while not stop.is_set():
        started = time.perf_counter()
        try:
            server.infer(model, tensor(values[i % len(values)]), parameters={"k": int(k)})
            latencies.append(time.perf_counter() - started)
        except triton.InferenceServerException as err:
            errors.append(str(err)[:200])
        i += connections


for warm_up in range(3):
    triton.InferenceServerClient(address).infer(model, tensor(values[warm_up]), parameters={"k": int(k)})
threads = [threading.Thread(target=client, args=(n,)) for n in range(connections)]
started = time.perf_counter()
for thread in threads:
    thread.start()
time.sleep(seconds)
stop.set()
for thread in threads:
    thread.join()
elapsed = time.perf_counter() - started
ms = np.asarray(latencies) * 1000
print("RESULT " + json.dumps({"requests": len(latencies), "seconds": round(elapsed, 3), "errors": len(errors),
                              "p50_ms": round(float(np.percentile(ms, 50)), 3),
                              "p99_ms": round(float(np.percentile(ms, 99)), 3), "first_errors": errors[:3]}))
"""


def grpc_load(address: str, model: str, column: str, values: list, connections: int, seconds: float,
              server_pids: list[int]) -> dict:
    """The same queries over gRPC with tritonclient, from a Python process of its own (its threads cost CPU that
    wrk's C loop does not: the client's CPU per request is recorded beside the server's)."""
    values_file = Path(tempfile.mkdtemp(prefix="kuberec-grpc-load-")) / "values.json"
    values_file.write_text(json.dumps(values))  # 200 base64 PNGs do not fit on a command line
    command = [sys.executable, "-c", GRPC_LOAD, address, model, column, str(values_file), str(K),
               str(connections), str(seconds)]
    cpu_before = tree_cpu_seconds(server_pids)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out, _ = process.communicate()
    cpu_after = tree_cpu_seconds(server_pids)
    shutil.rmtree(values_file.parent, ignore_errors=True)
    if process.returncode != 0:
        raise SystemExit(f"the gRPC load generator failed ({process.returncode})")
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT ")).split(" ", 1)[1])
    result["connections"] = connections
    result["req_per_s"] = round(result["requests"] / result["seconds"], 1)
    if result["requests"]:
        result["server_cpu_ms_per_request"] = round((cpu_after - cpu_before) / result["requests"] * 1000, 3)
    return result


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 600) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}; see {log_path}:\n"
                             f"{log_path.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready in {timeout} s")


def model_queries(served, catalog_size: int) -> dict[str, tuple[str, list]]:
    """{query kind: (input column, values cycled through)} for the served model."""
    from kuberec.models import SIMILARITY, WIDEDEEP

    rng = np.random.default_rng(0)
    if served.name == WIDEDEEP.registered_name:
        import pandas as pd

        users = pd.read_parquet(next(served.path.rglob("users.parquet")), columns=["user_id"])["user_id"]
        return {"user": ("user_id", [int(u) for u in rng.choice(users.to_numpy(), min(500, len(users)),
                                                                 replace=False)])}
    if served.name != SIMILARITY.registered_name:
        raise SystemExit(f"no queries for model {served.name!r}: this benchmark knows "
                         f"{SIMILARITY.registered_name} and {WIDEDEEP.registered_name}")
    from PIL import Image

    test_images, _ = fashion_mnist("test")
    pngs = []
    for image in test_images[:200]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(base64.b64encode(buffer.getvalue()).decode())
    item_ids = [int(i) for i in rng.integers(0, min(catalog_size, 60_000), 500)]
    return {"image": ("image_b64", pngs), "item_id": ("item_id", item_ids)}


def tree_rss_gib(pids: list[int]) -> list[float]:
    """Resident memory (GiB) of `pids` and each of their descendants, largest first ([]: no local process)."""
    import psutil

    sizes = []
    for pid in pids:
        root = psutil.Process(pid)
        for process in (root, *root.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                sizes.append(round(process.memory_info().rss / 2 ** 30, 2))
    return sorted(sizes, reverse=True)


def mlserver_environment(cache: Path) -> Path:
    """A virtualenv with kuberec as of MLSERVER_REF and that commit's pins (MLServer 1.7.1), built once."""
    venv = cache / "serving-bench" / f"mlserver-{MLSERVER_REF}"
    if (venv / ".complete").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    source = venv / "src"
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", MLSERVER_REF], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    constraints = [line for line in (source / "constraints.txt").read_text().splitlines()
                   if not line.startswith("horovod")]  # built from source by make setup; serving does not use it
    (venv / "constraints.txt").write_text("\n".join(constraints) + "\n")
    print(f"installing kuberec {MLSERVER_REF} (MLServer 1.7.1) into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    env = {**os.environ, "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR", str(cache / "pip"))}
    subprocess.run([*pip, "pip==25.3"], check=True, env=env)
    subprocess.run([*pip, "-c", str(venv / "constraints.txt"), str(source)], check=True, env=env)
    (venv / ".complete").write_text(MLSERVER_REF)
    return venv


def in_process(model_dir: Path, queries: dict[str, list], repeats: int) -> dict:
    """The pyfunc's load time and this process's memory growth loading it; p50 of its own predict per query kind
    (no HTTP)."""
    import mlflow.pyfunc
    import pandas as pd
    import psutil

    me = psutil.Process()
    rss_before, started = me.memory_info().rss, time.perf_counter()
    model = mlflow.pyfunc.load_model(str(model_dir))
    out = {"load_s": round(time.perf_counter() - started, 2),
           "load_rss_growth_gib": round((me.memory_info().rss - rss_before) / 2 ** 30, 2)}
    for kind, (column, values) in queries.items():
        times = []
        for i in range(repeats):
            frame = pd.DataFrame({column: [values[i % len(values)]]})
            started = time.perf_counter()
            model.predict(frame, params={"k": K})
            times.append(time.perf_counter() - started)
        out[kind] = {"p50_ms": round(float(np.percentile(np.asarray(times[5:]) * 1000, 50)), 2),
                     "p99_ms": round(float(np.percentile(np.asarray(times[5:]) * 1000, 99)), 2)}
    return out


def profile_runtime(model_dir: Path, name: str, bodies: list[bytes], repeats: int, top: int = 12) -> dict:
    """Where the model server's per-request time goes without HTTP: parse -> decode -> predict -> encode, under
    cProfile."""
    import asyncio
    import cProfile
    import pstats

    from kuberec.serving.runtime import KuberecDataPlane, KuberecModel

    model = KuberecModel(name, str(model_dir))
    model.load()
    loop = asyncio.new_event_loop()
    dataplane = KuberecDataPlane(model_registry=None)

    def one(i: int) -> None:
        request = dataplane.decode_inference_request(bodies[i % len(bodies)], {}, name)
        loop.run_until_complete(model.predict(request)).to_rest()

    for i in range(10):
        one(i)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for i in range(repeats):
        one(i)
    profiler.disable()
    per_request = (time.perf_counter() - started) / repeats * 1000
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    rows = []
    for (filename, line, function), (_, _, _, cumulative, _) in stats.stats.items():
        rows.append((cumulative, f"{Path(filename).parent.name}/{Path(filename).name}:{function}"))
    rows.sort(reverse=True)
    loop.close()
    return {"ms_per_request_profiled": round(per_request, 2),
            "top_cumulative_share": [(name_, round(c / total, 3)) for c, name_ in rows[:top]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="registered NAME[@alias|:version] (default: build one)")
    parser.add_argument("--catalog-size", type=int, default=60_000)
    parser.add_argument("--single-seconds", type=float, default=20)
    parser.add_argument("--concurrent-seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=8, help="wrk connections of the concurrent run")
    parser.add_argument("--servers", default="kserve,mlserver,mlflow",
                        help="of kserve, mlserver, mlflow, inferenceservice")
    parser.add_argument("--workers", default=None,
                        help="comma-separated model server process counts to compare, e.g. 1,2 (default: kuberec "
                             "serve's choice for this machine)")
    parser.add_argument("--profile", action="store_true", help="also cProfile the runtime in-process")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    on_cluster = "inferenceservice" in args.servers.split(",")
    if on_cluster and not args.model:
        parser.error("the inferenceservice server needs --model, the registered model it serves "
                     "(e.g. kuberec-widedeep@champion)")
    if shutil.which("wrk") is None:
        parser.error("the load generator is wrk (Debian package: apt-get install wrk); it is not on PATH")
    worker_counts = [int(w) for w in args.workers.split(",")] if args.workers else [None]

    import logging

    logging.basicConfig(level=logging.WARNING)
    from kuberec import tracking
    from kuberec.ports import free_port
    from kuberec.serving.server import ModelSpec, default_workers, fetch_model, running, usable_cpus
    from kuberec.settings import load_settings
    from kuberec.tracking import server as mlflow_server

    tmp = None
    cluster = contextlib.ExitStack()
    if on_cluster:  # the cluster's MLflow (and the lake, for its artifacts) through port-forwards, as make e2e does
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests/e2e
        from tests.e2e.cluster_access import ClusterAccess

        access = ClusterAccess.from_settings(load_settings())
        minio, mlflow_forward = (cluster.enter_context(access.forward("svc/minio", 9000)),
                                 cluster.enter_context(access.forward("svc/mlflow", 5000)))
        env = access.client_env(minio.url, mlflow_forward.url, "s3://kuberec/e2e")
        os.environ.update({key: env[key] for key in env if key.startswith(("MLFLOW_", "AWS_"))})
    if args.model is None:
        tmp = tempfile.TemporaryDirectory(prefix="kuberec-serving-bench-")
        os.environ["KUBEREC_HOME"] = tmp.name
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    settings = load_settings()
    try:
        spec_text = args.model or build_and_register(settings, args.catalog_size)
        spec = ModelSpec.parse(spec_text)
        served = fetch_model(settings, spec)
        queries = model_queries(served, args.catalog_size)
        report = {"model": f"{served.name} v{served.version}", "catalog_size": args.catalog_size, "k": K,
                  "model_size_mib": round(sum(f.stat().st_size for f in served.path.rglob("*") if f.is_file())
                                          / 2 ** 20, 1),
                  "machine": platform.platform(), "cpus": usable_cpus(), "load_generator": "wrk -t1",
                  "results": {}}
        work = Path(tempfile.mkdtemp(prefix="kuberec-serving-bench-wrk-"))
        script = work / "post.lua"
        script.write_text(WRK_SCRIPT)
        report["in_process"] = in_process(served.path, queries, repeats=200)
        print("in-process predict:", json.dumps(report["in_process"]), flush=True)
        if args.profile:
            report["profile"] = {kind: profile_runtime(served.path, served.name,
                                                       [v2_body(column, v) for v in values], repeats=300)
                                 for kind, (column, values) in queries.items()}
            print("profile:", json.dumps(report["profile"], indent=1), flush=True)

        def measure(name: str, port: int, path: str, body, server_pids: list[int]) -> None:
            for kind, (column, values) in queries.items():
                bodies = work / f"{name}-{kind}.txt"
                bodies.write_bytes(b"\n".join(body(column, v) for v in values) + b"\n")
                url = f"http://127.0.0.1:{port}{path}"
                single = wrk_load(url, bodies, script, 1, args.single_seconds, server_pids)
                concurrent = wrk_load(url, bodies, script, args.clients, args.concurrent_seconds, server_pids)
                concurrent["server_rss_gib"] = tree_rss_gib(server_pids)  # after the load: every process
                report["results"].setdefault(name, {})[kind] = {"one_client": single, "concurrent": concurrent}
                print(name, kind, "1 connection:", json.dumps(single), flush=True)
                print(name, kind, f"{args.clients} connections:", json.dumps(concurrent), flush=True)

        servers = args.servers.split(",")
        if "kserve" in servers:
            for workers in worker_counts:
                name = "kserve" if workers is None else f"kserve-workers-{workers}"
                report.setdefault("kserve_workers", {})[name] = \
                    default_workers(usable_cpus()) if workers is None else workers
                with running(settings, [ModelSpec(served.name, version=served.version)], http_port=free_port(),
                             grpc_port=free_port(), workers=workers) as server:
                    pids = [p.pid for p in server.processes]
                    measure(name, server.http_port, f"/v2/models/{served.name}/infer", v2_body, pids)
                    if workers == worker_counts[0]:  # gRPC, once: the same queries to the same server
                        for kind, (column, values) in queries.items():
                            for connections, seconds in ((1, args.single_seconds),
                                                         (args.clients, args.concurrent_seconds)):
                                result = grpc_load(f"127.0.0.1:{server.grpc_port}", served.name, column, values,
                                                   connections, seconds, pids)
                                report["results"].setdefault("kserve-grpc", {}).setdefault(kind, {})[
                                    "one_client" if connections == 1 else "concurrent"] = result
                                print("kserve-grpc", kind, f"{connections} connection(s):", json.dumps(result),
                                      flush=True)
        if "mlserver" in servers:
            venv = mlserver_environment(settings.cache_dir)
            port = free_port()
            log_path = settings.home / "mlserver-bench.log"
            env = {**os.environ, "KUBEREC_HOME": str(settings.home),
                   "MLFLOW_TRACKING_URI": tracking.tracking_uri(settings)}
            with open(log_path, "wb") as log_file:  # the cached version: it starts without the registry
                process = subprocess.Popen([str(venv / "bin" / "kuberec"), "serve", "--models",
                                            f"{served.name}:{served.version}", "--port", str(port), "--grpc-port",
                                            str(free_port()), "--follow", "0"], stdout=log_file,
                                           stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process, log_path)
                report["mlserver"] = f"kuberec {MLSERVER_REF} (MLServer 1.7.1) in {venv}"
                measure("mlserver", port, f"/v2/models/{served.name}/infer", v2_body, [process.pid])
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, 15)
                    process.wait(timeout=60)
        if "mlflow" in servers:
            port = free_port()
            # Same model directory, one worker (as MLServer's one process), no conda/virtualenv.
            # It execs `uvicorn` from PATH: put the venv's bin first.
            env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
            log_path = settings.home / "mlflow-models-serve.log"
            with open(log_path, "wb") as log_file:
                process = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                                            str(served.path), "--env-manager", "local", "-h", "127.0.0.1", "-p",
                                            str(port), "--workers", "1"], stdout=log_file,
                                           stderr=subprocess.STDOUT, env=env, start_new_session=True)
            try:
                wait_ready(f"http://127.0.0.1:{port}/ping", process, log_path)
                measure("mlflow", port, "/invocations", mlflow_body, [process.pid])
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, 15)
                    process.wait(timeout=60)
        if on_cluster:
            with access.forward(f"svc/{served.name}-predictor", 80) as predictor:
                report["inferenceservice"] = f"kubectl port-forward svc/{served.name}-predictor (-n {access.namespace})"
                measure("inferenceservice", predictor.port, f"/v2/models/{served.name}/infer", v2_body, [])
        shutil.rmtree(work, ignore_errors=True)
        results = report["results"]
        for baseline in ("mlserver", "mlflow"):
            if baseline not in results:
                continue
            report[f"ratio_over_{baseline}"] = {
                name: {kind: {"throughput": round(runs[kind]["concurrent"]["req_per_s"] /
                                                  results[baseline][kind]["concurrent"]["req_per_s"], 2),
                              "p50_one_client": round(runs[kind]["one_client"]["p50_ms"] /
                                                      results[baseline][kind]["one_client"]["p50_ms"], 2),
                              "p99_concurrent": round(runs[kind]["concurrent"]["p99_ms"] /
                                                      results[baseline][kind]["concurrent"]["p99_ms"], 2)}
                       for kind in queries}
                for name, runs in results.items() if name.startswith("kserve")}
        print(json.dumps(report, indent=2))
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        failed = [f"{name} {kind} {run}" for name, kinds in results.items() for kind, runs in kinds.items()
                  for run, result in runs.items() if result["errors"]]
        if failed:
            print(f"errors in: {', '.join(failed)}", file=sys.stderr)
            return 1
    finally:
        cluster.close()
        if tmp is not None:
            mlflow_server.stop_server(settings)
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
