"""What a query image's embedding costs per TensorFlow call size, and whether a row's bits depend on its call.

For the default architecture (untrained: cost and arithmetic do not depend on the weights), exported as serving
loads it: the time of one model call of 1, 8, 16 and 64 rows, of 64 rows as four calls of FIXED_CALL_ROWS, and for
calls of a fixed size (8 and FIXED_CALL_ROWS) whether every image gets the same bits wherever it sits in the call.
oneDNN's instruction set can be capped to see other CPUs' kernels: run it again under ONEDNN_MAX_CPU_ISA=AVX2.

    .venv/bin/python benchmarks/embedding_calls.py
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/embedding_calls.py
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

import kuberec  # noqa: F401  (legacy Keras before TensorFlow)


def per_call_ms(call, blocks: int = 5, repeats: int = 40) -> float:
    """Median over `blocks` of the mean time of `repeats` calls, after 10 warm-up calls."""
    for _ in range(10):
        call()
    means = []
    for _ in range(blocks):
        started = time.perf_counter()
        for _ in range(repeats):
            call()
        means.append((time.perf_counter() - started) / repeats * 1000)
    return round(float(np.median(means)), 2)


def same_bits_anywhere(model, images: np.ndarray, call_rows: int) -> bool:
    """Each of a few images, placed at different offsets of calls of exactly `call_rows` rows among other images,
    gets the bits it gets at the start of such a call."""
    reference = model(images[:call_rows])
    fillers = images[call_rows:]
    for count in (1, 3, call_rows - 1):
        for offset in range(0, call_rows - count + 1, max(1, (call_rows - count) // 3)):
            call = np.concatenate([fillers[:offset], images[:count],
                                   fillers[offset:offset + call_rows - offset - count]])
            out = model(call)
            if not all(np.array_equal(out[offset + i], reference[i]) for i in range(count)):
                return False
    return True


def main() -> int:
    from kuberec.similarity.config import SimilarityConfig
    from kuberec.similarity.model import FIXED_CALL_ROWS, build_model, export_embedding_model, load_embedding_model

    config = SimilarityConfig()
    with tempfile.TemporaryDirectory(prefix="kuberec-embedding-calls-") as tmp:
        model = load_embedding_model(export_embedding_model(build_model(config), Path(tmp) / "embedding",
                                                            config=config))
        images = np.random.default_rng(0).integers(0, 255, size=(128, 28, 28), dtype=np.uint8)
        report = {"architecture": config.architecture, "machine": platform.platform(),
                  "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "(default)"),
                  "ms_per_call": {rows: per_call_ms(lambda: model(images[:rows])) for rows in (1, 8, 16, 64)}}

        def in_fixed_calls() -> None:
            for start in range(0, 64, FIXED_CALL_ROWS):
                model(images[start:start + FIXED_CALL_ROWS])

        report[f"ms_64_rows_as_calls_of_{FIXED_CALL_ROWS}"] = per_call_ms(in_fixed_calls, repeats=10)
        report["same_bits_anywhere_in_a_call_of"] = {rows: same_bits_anywhere(model, images, rows)
                                                     for rows in (8, FIXED_CALL_ROWS)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
