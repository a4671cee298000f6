"""Training through the real Petastorm feed: the generic table reader, one process, and two Horovod workers
(`horovodrun -np 2 --gloo`) that must end with identical weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kuberec.ingest.instacart_features import NUMERIC_FEATURES
from kuberec.lake import feed
from kuberec.lake.delta import table_version
from kuberec.training.worker import TrainingError
from kuberec.widedeep import model as wd
from kuberec.widedeep.config import FEED_COLUMNS, WideDeepConfig
from kuberec.widedeep.metrics import log_loss
from kuberec.widedeep.train import TrainResult, train_widedeep


def test_table_feed_shards_cover_the_split_once(spark, examples_uri):
    key = ("snapshot", "user_id", "product_id")  # a row's identity: a pair is in several snapshots
    truth = spark.read.format("delta").load(examples_uri).where("split = 'train'").select(*key)
    expected = sorted(tuple(r) for r in truth.collect())
    whole = feed.load_table_arrays(examples_uri, (*key, "label"), split="train")
    assert whole.version == table_version(examples_uri)
    assert sorted(zip(*(whole.columns[k].tolist() for k in key))) == expected
    shards = [feed.load_table_arrays(examples_uri, key, split="train", shard=r, num_shards=2) for r in range(2)]
    rows = [set(zip(*(s.columns[k].tolist() for k in key))) for s in shards]
    assert rows[0] and rows[1] and not rows[0] & rows[1]
    assert sorted(rows[0] | rows[1]) == expected
    with feed.make_table_dataset(examples_uri, ("user_id", "label", NUMERIC_FEATURES[0]), split="train",
                                 batch_size=100) as dataset:
        batches = list(dataset)
    assert sum(len(b["user_id"]) for b in batches) == len(expected)
    assert all(len(b["label"]) == 100 for b in batches[:-1])
    assert batches[0][NUMERIC_FEATURES[0]].dtype.name == "float32"
    with pytest.raises(feed.FeedError, match="no rows in split 'nope'"):
        feed.load_table_arrays(examples_uri, ("user_id",), split="nope")
    # A sample keeps about that share of the rows, whole rows of the snapshot, the same ones for the same seed.
    sample = feed.load_table_arrays(examples_uri, (*key, "label"), split="train", fraction=0.3, seed=4)
    sampled = sorted(zip(*(sample.columns[k].tolist() for k in key)))
    assert 0.25 * len(expected) < len(sampled) < 0.35 * len(expected)
    assert set(sampled) <= set(expected) and len(set(sampled)) == len(sampled)
    assert sampled == sorted(zip(*(feed.load_table_arrays(examples_uri, key, split="train", fraction=0.3,
                                                          seed=4).columns[k].tolist() for k in key)))
    with pytest.raises(feed.FeedError, match="fraction must be in"):
        feed.load_table_arrays(examples_uri, key, split="train", fraction=0)


def test_single_process_training(trained, examples_uri, test_config):
    result = TrainResult.load(trained)
    assert result.world_size == 1 and result.examples_uri == examples_uri
    assert result.tables[examples_uri] == table_version(examples_uri)
    assert any(uri.endswith("instacart_gold_user_features") for uri in result.tables)  # versions recorded
    rows = len(feed.load_table_arrays(examples_uri, ("label",), split="train"))
    assert result.train_examples == rows == sum(result.rank_examples)
    assert result.steps_per_epoch == rows // test_config["batch_size"]
    assert 1 < len(result.history) <= test_config["epochs"]
    assert result.history[-1]["loss"] < result.history[0]["loss"] + 0.05
    assert (trained / "weights-rank0.sha256").read_text().strip() == result.weights_sha256
    # The wide part's vocabularies are the train split's ids, exactly.
    ids = feed.load_table_arrays(examples_uri, wd.VOCABULARY_COLUMNS, split="train").columns
    assert result.vocabulary == wd.Vocabulary.from_columns(ids).sizes()
    model = wd.load_model(result.model_dir)
    # Early stopping kept the epoch with the best valid-split log loss, and the saved model is that epoch's.
    valid_losses = [entry["valid_log_loss"] for entry in result.history]
    assert result.best_epoch == 1 + int(np.argmin(valid_losses))
    valid = feed.load_table_arrays(examples_uri, FEED_COLUMNS, split="valid").columns
    assert log_loss(valid["label"], wd.predict(model, valid)) == pytest.approx(min(valid_losses), rel=1e-5)
    test = feed.load_table_arrays(examples_uri, ("user_id", "product_id", "aisle_id", "department_id",
                                                 *NUMERIC_FEATURES), split="test")
    probabilities = wd.predict(model, test.columns)
    assert ((probabilities > 0) & (probabilities < 1)).all() and probabilities.std() > 0


def test_missing_table_is_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match="run `kuberec features instacart` first"):
        train_widedeep(WideDeepConfig(), str(tmp_path / "lake" / "instacart_gold_examples"), tmp_path / "out")


def test_two_horovod_workers_end_with_identical_averaged_weights(examples_uri, tmp_path, test_config):
    horovodrun = shutil.which("horovodrun", path=os.path.dirname(sys.executable))
    assert horovodrun, "horovodrun is not installed in the virtualenv (make setup builds it)"
    config = {**test_config, "epochs": 1, "steps_per_epoch": 12}
    out = tmp_path / "hvd"
    command = [horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-m",
               "kuberec.widedeep.train", "--table", examples_uri, "--out", str(out),
               "--config", json.dumps(config)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    result = TrainResult.load(out)
    assert result.world_size == 2 and result.steps_per_epoch == 12
    checksums = [(out / f"weights-rank{r}.sha256").read_text().strip() for r in range(2)]
    assert checksums[0] == checksums[1] == result.weights_sha256
    # Each worker read a different, non-empty shard, yet no final broadcast ran: only averaged gradients keep
    # the two copies equal for 12 steps.
    assert len(result.rank_examples) == 2 and min(result.rank_examples) > 0
    shards = [feed.load_table_arrays(examples_uri, ("user_id", "product_id"), split="train", shard=r,
                                     num_shards=2) for r in range(2)]
    assert [len(s) for s in shards] == result.rank_examples
    assert not np.array_equal(shards[0].columns["user_id"][:50], shards[1].columns["user_id"][:50])


def test_cli_trains_through_the_local_backend(tracked_settings, gold, examples_uri, capsys, monkeypatch):
    import re

    from kuberec import tracking
    from kuberec.cli import main
    from kuberec.training.launch import default_train_dir
    from kuberec.widedeep.config import EXPERIMENT

    def train_runs() -> int:
        return len(tracking.client(tracked_settings).search_runs([tracking.experiment_id(EXPERIMENT)]))

    monkeypatch.setenv("KUBEREC_LAKE", gold.lake_uri)  # registering copies features from the lake's gold tables
    code = main(["train", "widedeep", "--table", examples_uri, "--epochs", "1", "--steps-per-epoch", "3",
                 "--hidden-units", "8", "--batch-size", "64"])
    assert code == 0
    run_id = re.search(r"MLflow run (\w+)", capsys.readouterr().out).group(1)
    result = TrainResult.load(default_train_dir(tracked_settings, "widedeep", run_id))
    assert result.steps_per_epoch == 3 and result.config.hidden_units == 8 and result.config.batch_size == 64
    runs = train_runs()
    assert main(["train", "widedeep", "--examples", examples_uri, "--width-decline", "1.5"]) == 2  # the old flag
    assert "width_decline must be in (0, 1]" in capsys.readouterr().err
    assert train_runs() == runs  # a bad config fails before any run is created
    # The next verbs find the model by run id (the steps themselves: tests/widedeep/test_widedeep_pipeline.py).
    assert main(["evaluate", "widedeep", "--run", run_id]) == 0
    assert "popularity" in capsys.readouterr().out
    assert main(["register", "widedeep", "--run", run_id, "--name", "test-widedeep-cli"]) == 0
    assert "registered test-widedeep-cli version 1 (champion): models:/test-widedeep-cli/1" in capsys.readouterr().out
