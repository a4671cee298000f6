"""Helpers shared by the serving tests and their conftest."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

N_ITEMS = 200
MODEL = "kuberec-similarity"


def raw_post(url: str, path: str, body: bytes | str) -> tuple[int, str]:
    """POST exactly these bytes as JSON; (status, body text) whatever the status."""
    from kuberec.inference import post

    status, data = post(url, path, body)
    return status, data.decode()


def png_b64(image: np.ndarray, size: int = 28) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).resize((size, size)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def fixture_module(area: str):
    """Another test area's conftest, loaded by path so its fixtures can be shared rather than copied.

    `tests.<area>.conftest` is not importable: a third-party wheel installs a top-level `tests` package.
    """
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / area / "conftest.py"
    spec = importlib.util.spec_from_file_location(f"kuberec_tests_{area}_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
