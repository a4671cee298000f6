"""Choose the wide part's FTRL settings by measurement: train the wide-only model (or another kind) for every point
of a grid over WideDeepConfig fields on one gold examples table and score each on the `valid` split (the test split
stays untouched for the quality benchmark).

    .venv/bin/python benchmarks/widedeep_wide_settings.py --root /tmp/wd-bench/seed0 \
        --grid '{"wide_learning_rate": [0.02, 0.05, 0.2], "ftrl_l2": [0.1, 1, 10]}' --json /tmp/wide-grid.json

--root is a lake that benchmarks/widedeep_quality.py built (it holds `home/lake`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from pathlib import Path

from widedeep_quality import lake_settings  # a sibling script: run as python benchmarks/<script>.py

from kuberec.ingest import instacart_features as gold
from kuberec.lake import feed
from kuberec.widedeep import model as wd
from kuberec.widedeep.config import FEED_COLUMNS, WideDeepConfig
from kuberec.widedeep.metrics import metrics
from kuberec.widedeep.train import train_widedeep_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--grid", required=True, help="JSON object: config field -> list of values")
    parser.add_argument("--config", default='{"kind": "wide", "batch_size": 1024}',
                        help="WideDeepConfig fields every point shares")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    examples_uri = lake_settings(args.root).table_uri(gold.EXAMPLES_TABLE)
    valid = feed.load_table_arrays(examples_uri, FEED_COLUMNS, split="valid").columns
    grid = json.loads(args.grid)
    base = json.loads(args.config)
    results = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        config = WideDeepConfig.from_dict({**base, **point})
        started = time.perf_counter()
        result, model = train_widedeep_model(config, examples_uri, args.root / "scratch", save=False)
        scores = metrics(valid["user_id"], valid["label"], wd.predict(model, valid))
        results.append({"point": point, "valid": {k: round(v, 4) for k, v in scores.items()},
                        "epochs": len(result.history), "best_epoch": result.best_epoch,
                        "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(results[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"config": base, "grid": grid, "results": results}, indent=2))


if __name__ == "__main__":
    main()
