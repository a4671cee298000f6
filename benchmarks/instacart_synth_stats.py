"""How generated Instacart data compares with the real thing: the statistics docs/instacart-synth.md reports.

Generates `--users` users with `kuberec.datasets.instacart_synth` (into --dir, or a temporary directory), or reads
--dir when it already holds the six CSV files (e.g. your own download of the public release), then prints each
statistic next to the value measured from 64 complete real Instacart histories:

    .venv/bin/python benchmarks/instacart_synth_stats.py --users 20000 --seed 1 [--products P] [--dir DIR]

Only users with a `train` final order count (the public data's `test` users have no final-order contents).

Affinity signal, as pooled within-bucket AUCs of "in the final order" over candidate (user, product) pairs (the AUC
inside each bucket, averaged with weights positives x negatives; 0.5 = no information beyond the bucket):
- "affinity AUC | count, recency": pairs bucketed by prior purchase count and orders since the last purchase (what
  the features say), scored by the generator's pair_affinity. Generated data only (the seed comes from
  instacart-synth.json): about 0.5 when the generator ignores affinity (v1), above it when pairs with equal
  histories differ by affinity;
- "cycle AUC | count, recency": the same buckets, scored by how soon the product is due again (minus its
  replenishment cycle, the generator's catalogue). Above 0.5 when products differ in how long they last beyond what
  count and recency say; a product x recency cross learns it directly, product features' reorder shares
  hint at it;
- "count AUC": one bucket, scored by the prior purchase count: how much a pair's history predicts. Computable on
  real data too; affinity raises it, because favourites pile up purchases;
- "n-1 label AUC | count": pairs bucketed by count, scored by whether order n-1 contained the product. This is
  mostly recency: within a window, affinity changes how many purchases a pair gets, not when.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from kuberec.datasets import instacart as ic
from kuberec.datasets.instacart_synth import MANIFEST, catalogue_for, generate, pair_affinity

# Measured from 64 complete real Instacart histories (users with all their orders, the final one included).
REAL = {
    "reordered share, prior lines": 0.53,
    "reordered share, final-order lines": 0.59,
    "lines per order, prior orders": 9.1,
    "lines per order, final order": 11.8,
    "orders per user: mean (final included)": 15.6,
    "orders per user: median": 11,
    "days between orders: mean": 11.3,
    "days between orders: median": 8,
    "candidate products per user (mean)": 65,
    "share of candidates in the final order": 0.108,
    "share of final-order lines bought for the first time": 0.41,
}
COUNT_CAP, RECENCY_CAP = 20, 10  # AUC buckets: purchase counts and orders since the last purchase above are pooled


def load(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Orders of users with a train order, and their order lines with user_id and back = n - order_number."""
    orders = pd.read_csv(directory / ic.ORDERS.name, engine="pyarrow")
    train_users = orders.loc[orders.eval_set == "train", "user_id"]
    orders = orders[orders.user_id.isin(train_users)].copy()
    orders["n"] = orders.groupby("user_id").order_number.transform("max")
    lines = pd.concat([pd.read_csv(directory / name, engine="pyarrow", usecols=["order_id", "product_id",
                                                                              "reordered"])
                       for name in (ic.ORDER_PRODUCTS_PRIOR.name, ic.ORDER_PRODUCTS_TRAIN.name)])
    lines = lines.merge(orders[["order_id", "user_id", "order_number", "n"]], on="order_id")
    lines["back"] = (lines.n - lines.order_number).astype(np.int32)  # 0: final order, 1: the one before, ...
    return orders, lines


def pairs(lines: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, product) bought in the user's prior orders: prior count, orders since the last purchase
    (seen from the final order) and whether order n-1 and the final order n contain it."""
    back = lines.back
    table = lines.assign(prior=back >= 1, y_n=back == 0, y_n1=back == 1, last=back.where(back >= 1)) \
        .groupby(["user_id", "product_id"]) \
        .agg(count_n=("prior", "sum"), recency_n=("last", "min"), y_n=("y_n", "any"), y_n1=("y_n1", "any"))
    return table[table.count_n > 0].reset_index()


def pooled_auc(table: pd.DataFrame, score: np.ndarray | pd.Series, buckets: list[np.ndarray | pd.Series]) -> float:
    """AUC of table.y_n by `score` within each bucket, pooled with weights positives x negatives (Mann-Whitney)."""
    frame = pd.DataFrame({"y": table.y_n.to_numpy(bool), "score": np.asarray(score, float)})
    names = []
    for i, bucket in enumerate(buckets or [np.zeros(len(frame), np.int8)]):
        names.append(f"bucket{i}")
        frame[names[-1]] = np.asarray(bucket)
    frame["positive_rank"] = frame.groupby(names).score.rank().where(frame.y, 0.0)
    per = frame.groupby(names).agg(positives=("y", "sum"), size=("y", "size"), rank_sum=("positive_rank", "sum"))
    wins = per.rank_sum - per.positives * (per.positives + 1) / 2
    return float(wins.sum() / (per.positives * (per["size"] - per.positives)).sum())


def affinity_measures(table: pd.DataFrame, manifest: dict | None) -> dict[str, float]:
    count, recency = table.count_n.clip(upper=COUNT_CAP), table.recency_n.clip(upper=RECENCY_CAP)
    measures = {}
    if manifest is not None:
        seed = manifest["seed"]
        affinity = pair_affinity(seed, table.user_id.to_numpy(), table.product_id.to_numpy())
        measures["affinity AUC | count, recency"] = pooled_auc(table, affinity, [count, recency])
        cycle = catalogue_for(seed, manifest["products"]).cycle[table.product_id.to_numpy() - 1]
        measures["cycle AUC | count, recency"] = pooled_auc(table, -cycle, [count, recency])
    measures["count AUC"] = pooled_auc(table, table.count_n, [])
    measures["n-1 label AUC | count"] = pooled_auc(table, table.y_n1, [count])
    return measures


def statistics(orders: pd.DataFrame, lines: pd.DataFrame, manifest: dict | None) -> dict[str, float]:
    final = lines.back == 0
    size = lines.groupby("order_id").size()
    final_orders = orders.loc[orders.order_number == orders.n, "order_id"]
    per_user = orders.groupby("user_id").n.first()
    days = orders.days_since_prior_order.dropna()
    table = pairs(lines)
    bought_before = lines[final].merge(table[["user_id", "product_id"]], on=["user_id", "product_id"],
                                       how="left", indicator=True)._merge == "both"
    return {
        "reordered share, prior lines": lines.reordered[~final].mean(),
        "reordered share, final-order lines": lines.reordered[final].mean(),
        "lines per order, prior orders": size.drop(final_orders, errors="ignore").mean(),
        "lines per order, final order": size.reindex(final_orders).mean(),
        "orders per user: mean (final included)": per_user.mean(),
        "orders per user: median": per_user.median(),
        "days between orders: mean": days.mean(),
        "days between orders: median": days.median(),
        "candidate products per user (mean)": len(table) / len(per_user),
        "share of candidates in the final order": table.y_n.mean(),
        "share of final-order lines bought for the first time": 1.0 - bought_before.mean(),
        "share of gaps at the 30-day cap": (days == 30).mean(),
        **affinity_measures(table, manifest),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--products", type=int, help="catalogue size (default: the generator's)")
    parser.add_argument("--dir", type=Path, help="read the six CSV files here if present, else generate into it")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="instacart-synth-stats-") as scratch:
        directory = args.dir or Path(scratch) / "instacart"
        seconds = None
        if ic.missing_files(directory):
            began = time.monotonic()
            generate(directory, args.users, seed=args.seed, products=args.products)
            seconds = time.monotonic() - began
            source = f"generated: {args.users:,} users, seed {args.seed}"
        else:
            source = f"read from {directory}"
        began = time.monotonic()
        manifest = directory / MANIFEST
        generated = json.loads(manifest.read_text()) if manifest.exists() else None  # generated data only
        stats = statistics(*load(directory), generated)
        measured = time.monotonic() - began

    rows = pd.DataFrame({"measured": pd.Series(stats), "real Instacart": pd.Series(REAL)}).reindex(list(stats))
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 120):
        print(f"{source}\n{rows.to_string(na_rep='')}")
    if seconds is not None:
        print(f"generation: {seconds:.1f} s", end="; ")
    print(f"statistics: {measured:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
