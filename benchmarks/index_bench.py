"""ANN index benchmark: single-thread, single-query lookups per second at recall@k against exact search.

Catalog: the 60,000 Fashion-MNIST train images; queries: the 10,000 test images (timed on the first --timed ones,
recall on all). Embeddings come from, in order of preference:

  --model DIR      an exported embedding model (kuberec.similarity.model.export_embedding_model): real embeddings
  --source pca     no model: raw pixels projected on their top-D principal components (real data, similar cluster
                   structure, no training needed)
  --source random  random clustered unit vectors (synthetic)

For each HNSW setting (M, efConstruction) it builds one index (one thread) and times efSearch values; exact
search (FAISS IndexFlatIP) is the ground truth and the baseline. Results print as a Markdown table and, with
--json, as JSON. Example:

    .venv/bin/python benchmarks/index_bench.py --source pca --json /tmp/index-bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import kuberec  # noqa: F401  (legacy Keras before TensorFlow)

K_DEFAULT = 5


def fashion_mnist(settings) -> tuple[np.ndarray, np.ndarray]:
    from kuberec.datasets.fashion_mnist import acquire, decompress, find_file, idx_file, parse_idx

    directory = acquire(settings)
    arrays = []
    for split in ("train", "test"):
        spec = idx_file(split, "images")
        path = find_file(directory, spec)
        arrays.append(parse_idx(spec, decompress(str(path), path.read_bytes())))
    return arrays[0], arrays[1]


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embeddings(args) -> tuple[np.ndarray, np.ndarray, str]:
    if args.source == "random":
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(args.clusters, args.dim)).astype(np.float32)
        def draw(n: int) -> np.ndarray:
            which = rng.integers(0, args.clusters, n)
            return normalise(centres[which] + args.spread * rng.normal(size=(n, args.dim)).astype(np.float32))
        return draw(60_000), draw(10_000), (f"random: {args.clusters} Gaussian clusters in {args.dim}-d, "
                                            f"spread {args.spread}, L2-normalised")
    from kuberec.settings import load_settings

    train, test = fashion_mnist(load_settings())
    if args.source == "model":
        from kuberec.similarity.model import embed, load_embedding_model

        model = load_embedding_model(args.model)
        started = time.perf_counter()
        catalog, queries = embed(model, train), embed(model, test)
        return catalog, queries, (f"model {args.model} ({model.metadata.get('config', {}).get('architecture')}, "
                                  f"{model.embedding_dim}-d; embedding 70,000 images took "
                                  f"{time.perf_counter() - started:.1f} s)")
    x_train = train.reshape(len(train), -1).astype(np.float32) / 255.0
    x_test = test.reshape(len(test), -1).astype(np.float32) / 255.0
    mean = x_train.mean(axis=0)
    _, _, vt = np.linalg.svd(x_train - mean, full_matrices=False)
    basis = vt[:args.dim].T
    return (normalise((x_train - mean) @ basis), normalise((x_test - mean) @ basis),
            f"pca: Fashion-MNIST raw pixels projected on the top {args.dim} principal components, L2-normalised")


def timed_pass(search, rows: list[np.ndarray], k: int) -> tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) to run every query of `rows` as its own search call.

    On a shared machine other processes take turns on the cores, which stretches wall time far more than the CPU
    time this thread uses, so lookups per CPU-second of the calling thread is the steadier measure of
    single-thread speed (FAISS runs on the calling thread with one OpenMP thread). Both are reported.
    """
    cpu, wall = time.thread_time(), time.perf_counter()
    for q in rows:
        search(q, k)
    return time.thread_time() - cpu, time.perf_counter() - wall


def recall(approx: np.ndarray, exact: np.ndarray, approx_d: np.ndarray, exact_d: np.ndarray) -> float:
    """Mean fraction of the exact top-k found; a result tying the exact k-th similarity counts as found."""
    kth = exact_d[:, -1:] - 1e-6
    found = (approx[:, :, None] == exact[:, None, :]).any(axis=2) | (approx_d >= kth)
    return float(found.mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="exported embedding model directory (implies --source model)")
    parser.add_argument("--source", choices=("model", "pca", "random"), default=None)
    parser.add_argument("--dim", type=int, default=128, help="dimension for pca/random sources")
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--spread", type=float, default=0.35)
    parser.add_argument("--k", type=int, default=K_DEFAULT)
    parser.add_argument("--timed", type=int, default=5000, help="queries timed one at a time")
    parser.add_argument("--graphs", default="8:200,16:100,16:200,32:200", help="M:efConstruction list")
    parser.add_argument("--ef-search", default="16,24,32,48,64,96")
    parser.add_argument("--passes", type=int, default=5, help="timing passes per configuration (best kept)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.source = args.source or ("model" if args.model else "pca")
    if args.source == "model" and not args.model:
        parser.error("--source model needs --model DIR")

    import faiss

    from kuberec.similarity.index import HnswParams, ItemIndex, items_frame

    faiss.omp_set_num_threads(1)
    catalog, queries, description = embeddings(args)
    timed = queries[:args.timed]
    k = args.k
    print(f"# {description}\n# catalog {catalog.shape}, queries {queries.shape}, k={k}, one thread, "
          f"faiss {faiss.__version__}, {platform.processor() or platform.machine()}, "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)

    flat = faiss.IndexFlatIP(catalog.shape[1])
    flat.add(catalog)
    exact_d, exact = flat.search(queries, k)
    rows = [q[None, :] for q in timed]

    # Every configuration: (result row, search function, efSearch to set before timing it or None).
    configs = [({"index": "exact (IndexFlatIP)", "m": None, "ef_construction": None, "ef_search": None,
                 "build_s": 0.0, "recall": 1.0, "timed": min(1000, len(rows))}, flat.search, None, None)]
    for graph in args.graphs.split(","):
        m, ef_c = (int(v) for v in graph.split(":"))
        hnsw = faiss.IndexHNSWFlat(catalog.shape[1], m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_c
        started = time.thread_time()
        hnsw.add(catalog)
        build_s = time.thread_time() - started  # CPU seconds, for the same reason as the lookup rates
        for ef_s in (int(v) for v in args.ef_search.split(",")):
            hnsw.hnsw.efSearch = max(ef_s, k)
            approx_d, approx = hnsw.search(queries, k)
            row = {"index": "HNSW", "m": m, "ef_construction": ef_c, "ef_search": ef_s, "build_s": build_s,
                   "recall": recall(approx, exact, approx_d, exact_d), "timed": len(rows)}
            configs.append((row, hnsw.search, hnsw, max(ef_s, k)))
            print(f"M={m:<3} efC={ef_c:<4} efS={ef_s:<4} build {build_s:5.1f} CPU-s  recall@{k} {row['recall']:.4f}",
                  flush=True)
    # The shipped defaults through ItemIndex.search, what the served model calls (input checks, normalisation,
    # item-id mapping), to show the wrapper's cost next to the bare FAISS numbers.
    defaults = HnswParams()
    started = time.thread_time()
    index = ItemIndex.build(catalog, items_frame(np.arange(len(catalog))), defaults)
    build_s = time.thread_time() - started
    ids, dist = index.search(queries, k)
    configs.append(({"index": "ItemIndex.search (defaults)", "m": defaults.m,
                     "ef_construction": defaults.ef_construction, "ef_search": defaults.ef_search,
                     "build_s": build_s, "recall": recall(ids, exact, 1 - dist, exact_d), "timed": len(rows)},
                    index.search, None, None))

    # Timing passes go round all configurations in turn, so a busy spell of the shared machine hits them alike;
    # each keeps its fastest pass.
    for row, search, graph_index, ef in configs:
        if graph_index is not None:
            graph_index.hnsw.efSearch = ef
        for q in rows[:200]:  # warm caches and code paths
            search(q, k)
        row["cpu_s"] = row["wall_s"] = float("inf")
    for _ in range(args.passes):
        for row, search, graph_index, ef in configs:
            if graph_index is not None:
                graph_index.hnsw.efSearch = ef
            cpu_s, wall_s = timed_pass(search, rows[:row["timed"]], k)
            row["cpu_s"], row["wall_s"] = min(row["cpu_s"], cpu_s), min(row["wall_s"], wall_s)
    results = []
    for row, *_ in configs:
        row["qps_cpu"], row["qps_wall"] = row["timed"] / row.pop("cpu_s"), row["timed"] / row.pop("wall_s")
        results.append(row)

    print(f"\n| index | M | efC | efS | build (CPU s) | recall@{k} vs exact | lookups per CPU-second | "
          "lookups/s wall clock |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['index']} | {r['m'] or '-'} | {r['ef_construction'] or '-'} | {r['ef_search'] or '-'} | "
              f"{r['build_s']:.1f} | {r['recall']:.4f} | {r['qps_cpu']:,.0f} | {r['qps_wall']:,.0f} |")
    print(f"# load average at end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"source": description, "k": k, "queries": len(queries),
                                         "load_average": os.getloadavg()[0],
                                         "timed_queries": len(timed), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
