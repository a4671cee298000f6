"""Fixtures for the wide & deep tests: real gold tables from a small generated dataset (generator -> bronze -> gold
with the real Spark session) and one short real training run on them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kuberec.settings import Settings

# As in tests/conftest.py (not importable from here: both modules are named conftest).
SHARED_CACHE = Path(os.environ.get("KUBEREC_CACHE", Path(__file__).resolve().parents[2] / ".kuberec" / "cache"))

SYNTH_USERS, SYNTH_SEED = 300, 5
# Small and quick: the tests check behaviour, quality is measured by benchmarks/widedeep_quality.py.
TEST_CONFIG = {"hidden_layers": 2, "hidden_units": 32, "batch_size": 128, "epochs": 3, "shuffle_buffer": 512,
               "seed": 3}


@pytest.fixture(scope="session")
def test_config() -> dict:
    return dict(TEST_CONFIG)


@pytest.fixture(scope="session")
def synth_args() -> dict:
    """The generator arguments of the `gold` lake's data (the pipeline test regenerates the same files)."""
    return {"users": SYNTH_USERS, "seed": SYNTH_SEED}


@pytest.fixture(scope="session")
def gold(spark, tmp_path_factory) -> Settings:
    """Settings of a lake holding the bronze and gold Instacart tables of SYNTH_USERS generated users."""
    from kuberec.datasets.instacart_synth import generate
    from kuberec.ingest import instacart_features
    from kuberec.ingest.instacart import ingest_instacart

    root = tmp_path_factory.mktemp("widedeep-lake")
    generate(root / "instacart", SYNTH_USERS, seed=SYNTH_SEED)
    settings = Settings(home=root / "home", cache_dir=SHARED_CACHE, spark_master="local[2]")
    ingest_instacart(settings, root / "instacart", spark)
    instacart_features.build_features(settings, spark)
    return settings


@pytest.fixture(scope="session")
def examples_uri(gold) -> str:
    from kuberec.ingest.instacart_features import EXAMPLES_TABLE

    return gold.table_uri(EXAMPLES_TABLE)


@pytest.fixture(scope="session")
def trained(gold, examples_uri, tmp_path_factory) -> Path:
    """Output directory of one single-process training run (real Petastorm feed, real Horovod in one process)."""
    from kuberec.widedeep.config import WideDeepConfig
    from kuberec.widedeep.train import train_widedeep

    out = tmp_path_factory.mktemp("widedeep-train") / "run"
    train_widedeep(WideDeepConfig.from_dict(TEST_CONFIG), examples_uri, out)
    return out
