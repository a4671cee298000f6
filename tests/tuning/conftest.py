"""Fixtures for the sweep tests: a small real Fashion-MNIST Delta table (written by the real Spark ingestion) and the
wide & deep tests' real gold tables, shared rather than rebuilt."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from kuberec.lake.delta import TableRef

PER_SPLIT = 600  # Fashion-MNIST images per split: enough for a held-out validation slice and tiny trials


def _module(path: Path, name: str):
    # tests.<area> is not importable (a third-party wheel installs a top-level `tests` package): load by path.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_widedeep = _module(Path(__file__).resolve().parents[1] / "widedeep" / "conftest.py", "kuberec_tests_widedeep_fixtures")
gold = _widedeep.gold
examples_uri = _widedeep.examples_uri


@pytest.fixture(scope="session")
def fashion_mnist(spark, tmp_path_factory) -> TableRef:
    from kuberec.datasets import fashion_mnist as fm
    from kuberec.ingest.fashion_mnist import ingest_fashion_mnist

    uri = str(tmp_path_factory.mktemp("tuning-lake") / "fashion_mnist")
    return TableRef(uri, ingest_fashion_mnist(spark, str(fm.DEBIAN_DIR), uri, PER_SPLIT))


@pytest.fixture(scope="session")
def examples(gold, examples_uri) -> TableRef:  # noqa: F811
    from kuberec.lake.delta import table_version

    return TableRef(examples_uri, table_version(examples_uri))
