"""How much a signal could add to the deep-only model: the test of whether memorisation has anything left to learn.

Trains the deep-only model (the shipped config, one process, batch 2,048, at most 3 epochs) on a generated lake
that benchmarks/widedeep_quality.py built, scores the test split, then for each candidate signal fits a logistic
regression of the label on [the deep model's logit, the signal] on half of the test users and reports the per-user
AUC on the other half, next to the deep logit alone refitted the same way. A signal that raises it carries
information the deep part lacks. Signals:

- oracle affinity: log pair_affinity, the generator's hidden per-(user, product) value (no model can see it);
- oracle due: log min(1, (orders since the last purchase + 1) / cycle) and log cycle, the generator's hidden
  per-product replenishment cycle with the pair's recency;
- rate since first purchase: log((purchases + 0.5) / (orders since the first purchase + 1)) and that length, from
  the files: the pair's own history, i.e. what a memorised user x product weight could learn at best;
- user's aisle and department shares: the user's other purchases in the product's aisle and department, over all
  their purchases (what a user x aisle cross could memorise).

    .venv/bin/python benchmarks/widedeep_headroom.py --root /tmp/wd-bench/seed0 --json /tmp/headroom.json

--root is a seed directory of benchmarks/widedeep_quality.py (it holds `home/lake` and `instacart/`).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from widedeep_quality import lake_settings  # a sibling script: run as python benchmarks/<script>.py

from kuberec.datasets import instacart as ic
from kuberec.datasets.instacart_synth import MANIFEST, catalogue_for, pair_affinity
from kuberec.ingest import instacart_features as gold
from kuberec.lake import feed
from kuberec.widedeep import model as wd
from kuberec.widedeep.config import FEED_COLUMNS, WideDeepConfig
from kuberec.widedeep.metrics import user_auc
from kuberec.widedeep.train import train_widedeep_model


def history_signals(directory: Path, test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per test row: the pair's rate since its first purchase and the user's aisle/department shares, from the
    prior orders (the history every test row's features come from)."""
    orders = pd.read_csv(directory / ic.ORDERS.name, usecols=["order_id", "user_id", "order_number"])
    products = pd.read_csv(directory / ic.PRODUCTS.name, usecols=["product_id", "aisle_id", "department_id"])
    lines = pd.read_csv(directory / ic.ORDER_PRODUCTS_PRIOR.name, usecols=["order_id", "product_id"]) \
        .merge(orders, on="order_id").merge(products, on="product_id")
    final = orders.groupby("user_id").order_number.max().rename("final")
    pairs = lines.groupby(["user_id", "product_id"]).agg(count=("order_number", "size"),
                                                         first=("order_number", "min")).reset_index()
    rows = test.merge(pairs, on=["user_id", "product_id"], how="left").merge(final, on="user_id", how="left") \
        .merge(products, on="product_id", how="left")
    for what in ("aisle_id", "department_id"):
        per = lines.groupby(["user_id", what]).size().rename(f"in_{what}").reset_index()
        rows = rows.merge(per, on=["user_id", what], how="left")
    rows = rows.merge(lines.groupby("user_id").size().rename("lines").reset_index(), on="user_id", how="left")
    since_first = rows["final"] - rows["first"]
    return {
        "rate since first purchase": np.c_[np.log((rows["count"] + 0.5) / (since_first + 1)), np.log1p(since_first)],
        "user's aisle and department shares": np.c_[
            np.log((rows["in_aisle_id"] - rows["count"] + 0.5) / rows["lines"]),
            np.log((rows["in_department_id"] - rows["count"] + 0.5) / rows["lines"])],
    }


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="a seed directory of widedeep_quality.py")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    examples_uri = lake_settings(args.root).table_uri(gold.EXAMPLES_TABLE)
    manifest = json.loads((args.root / "instacart" / MANIFEST).read_text())
    config = WideDeepConfig(kind="deep", batch_size=2048, epochs=3)  # the budget of 2 workers x 1,024
    _, model = train_widedeep_model(config, examples_uri, args.root / "headroom", save=False)
    columns = feed.load_table_arrays(examples_uri, FEED_COLUMNS, split="test").columns
    probability = np.clip(wd.predict(model, columns), 1e-7, 1 - 1e-7)
    deep_logit = np.log(probability / (1 - probability))
    users, products, labels = columns["user_id"], columns["product_id"], columns["label"]
    recency = np.asarray(columns[wd.RECENCY_FEATURE], np.float64)
    cycle = catalogue_for(manifest["seed"], manifest["products"]).cycle[products - 1]
    signals = {
        "none (deep logit refitted)": np.empty((len(users), 0)),
        "oracle affinity": np.log(pair_affinity(manifest["seed"], users, products))[:, None],
        "oracle due": np.c_[np.log(np.minimum(1.0, (recency + 1) / cycle)), np.log(cycle)],
        **history_signals(args.root / "instacart", pd.DataFrame({"user_id": users, "product_id": products})),
    }
    fit_half = users % 2 == 0
    report = {"root": str(args.root), "test_rows": int(len(users)), "config": config.to_dict(), "user_auc": {}}
    for name, signal in signals.items():
        x = np.c_[deep_logit, signal]
        regression = LogisticRegression(max_iter=1000).fit(x[fit_half], labels[fit_half])
        score = regression.decision_function(x[~fit_half])
        report["user_auc"][name] = round(user_auc(users[~fit_half], labels[~fit_half], score), 4)
        print(f"deep + {name:<40} per-user AUC {report['user_auc'][name]:.4f}  coefficients "
              f"{np.round(regression.coef_[0], 3).tolist()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
