"""ANN quality as users see it: precision@5 of the registered similarity model's HNSW search against exact search.

The evaluation protocol of kuberec.similarity.evaluate, through the registered model's own embedding model and
index: the queries are the 10,000 Fashion-MNIST test images, embedded by the model; each asks the index (every
catalog item, test items included) for --fetch neighbours, skips test-split items (the query itself among them:
item ids from 60,000) and keeps the first 5 train items; precision@5 is the share of them with the query's label.
For each efSearch: precision@5, its loss against exact search (FAISS IndexFlatIP over the same vectors, same
filtering), recall@5 of the kept items against the exact ones (ties at the 5th distance count as found), and
single-query lookups per second on one thread (the served model's case), best of --passes passes over --timed
queries, per CPU-second of the timing thread and per wall-clock second.

    .venv/bin/python benchmarks/ann_quality.py --model kuberec-similarity@champion --json /tmp/ann-quality.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

import kuberec  # noqa: F401  (legacy Keras before TensorFlow)

sys.path.insert(0, str(Path(__file__).parent))
from serving_bench import fashion_mnist  # noqa: E402

K = 5


def filtered(ids: np.ndarray, dist: np.ndarray, first_test_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The first K train items of each row (ids -1 / distance inf where fewer were fetched)."""
    out_ids = np.full((len(ids), K), -1, np.int64)
    out_dist = np.full((len(ids), K), np.inf, np.float32)
    for row, (row_ids, row_dist) in enumerate(zip(ids, dist)):
        keep = (row_ids >= 0) & (row_ids < first_test_id)
        kept_ids, kept_dist = row_ids[keep][:K], row_dist[keep][:K]
        out_ids[row, :len(kept_ids)], out_dist[row, :len(kept_dist)] = kept_ids, kept_dist
    return out_ids, out_dist


def precision(ids: np.ndarray, query_labels: np.ndarray, index) -> float:
    found = ids >= 0
    labels = np.full(ids.shape, -2, np.int64)  # a missing result matches no label
    labels[found] = index.labels(ids[found].tolist())[0]
    return float((labels == query_labels[:, None]).mean())


def recall(approx: np.ndarray, approx_d: np.ndarray, exact: np.ndarray, exact_d: np.ndarray) -> float:
    kth = exact_d[:, -1:] + 1e-6
    found = ((approx[:, :, None] == exact[:, None, :]).any(axis=2) | (approx_d <= kth)) & (approx >= 0)
    return float(found.mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kuberec-similarity@champion",
                        help="registered NAME[@alias|:version] in the configured registry")
    parser.add_argument("--fetch", type=int, default=20, help="neighbours asked per query before skipping test items")
    parser.add_argument("--ef-search", default="16,24,32,48,64,96", help="comma-separated efSearch values")
    parser.add_argument("--timed", type=int, default=2000, help="queries in each timing pass")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import faiss
    import mlflow.pyfunc

    from kuberec.datasets.fashion_mnist import SPLIT_ID_OFFSET
    from kuberec.serving.server import ModelSpec, fetch_model
    from kuberec.settings import load_settings

    faiss.omp_set_num_threads(1)
    settings = load_settings()
    served = fetch_model(settings, ModelSpec.parse(args.model))
    recommender = mlflow.pyfunc.load_model(str(served.path)).unwrap_python_model()
    index = recommender.index
    images, labels = fashion_mnist("test")
    queries = recommender.embed(images)
    first_test_id = SPLIT_ID_OFFSET["test"]
    exact_ids, exact_dist = filtered(*index.exact_search(queries, args.fetch), first_test_id)
    exact_precision = precision(exact_ids, labels, index)
    report = {"model": f"{served.name} v{served.version}", "items": len(index), "queries": len(queries),
              "fetch": args.fetch, "hnsw": {"m": index.params.m, "ef_construction": index.params.ef_construction,
                                            "ef_search_default": index.ef_search},
              "machine": platform.platform(), "exact_precision_at_5": round(exact_precision, 4), "rows": []}
    print(f"{report['model']}: {len(index)} items, exact precision@5 {exact_precision:.4f}", flush=True)
    timed = [q[None, :] for q in queries[:args.timed]]
    for ef in [int(v) for v in args.ef_search.split(",")]:
        ids, dist = filtered(*index.search(queries, args.fetch, ef_search=ef), first_test_id)
        best_cpu = best_wall = float("inf")
        for _ in range(args.passes):
            cpu, wall = time.thread_time(), time.perf_counter()
            for q in timed:
                index.search(q, args.fetch, ef_search=ef)
            best_cpu = min(best_cpu, time.thread_time() - cpu)
            best_wall = min(best_wall, time.perf_counter() - wall)
        row = {"ef_search": ef, "effective_ef_search": max(ef, args.fetch),  # the index never searches below k
               "precision_at_5": round(precision(ids, labels, index), 4),
               "recall_at_5_vs_exact": round(recall(ids, dist, exact_ids, exact_dist), 4),
               "lookups_per_cpu_second": round(len(timed) / best_cpu),
               "lookups_per_second": round(len(timed) / best_wall)}
        row["precision_loss"] = round(exact_precision - row["precision_at_5"], 4) + 0.0  # never "-0.0"
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
    ok = [r for r in report["rows"] if r["precision_loss"] <= 0.001]
    report["fastest_within_0.001"] = max(ok, key=lambda r: r["lookups_per_cpu_second"])["ef_search"] if ok else None
    print(f"fastest efSearch losing <= 0.001 precision@5: {report['fastest_within_0.001']}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
