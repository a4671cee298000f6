"""Pipelines compile deterministically and run end to end with the KFP local runner on a small subset."""

from __future__ import annotations

import pytest

from kuberec.lake.delta import table_version
from pipelines import run


@pytest.mark.parametrize("name", sorted(run.PIPELINES))
def test_compiles_deterministically(name, tmp_path):
    first = run.compile_pipeline(name, tmp_path / "a").read_text()
    second = run.compile_pipeline(name, tmp_path / "b").read_text()
    assert first == second
    assert "kuberec" in first


def test_catalog_pipeline_runs_locally(settings):
    outputs = run.run_local("catalog", {"max_per_split": 30})
    assert outputs["Output"] == settings.table_uri("fashion_mnist") or settings.table_uri("fashion_mnist") in str(outputs)
    assert table_version(settings.table_uri("fashion_mnist")) == 0
