"""Real training on a 2,000-image Delta table (written by the real Spark ingestion job): one process, an interrupted
run resumed from its checkpoint, two Horovod workers under horovodrun (through `kuberec train similarity`), and the
evaluation step on the trained model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from kuberec.cli import main as kuberec_main
from kuberec.datasets import fashion_mnist as fm
from kuberec.ingest.fashion_mnist import ingest_fashion_mnist
from kuberec.similarity.config import SimilarityConfig
from kuberec.similarity.model import load_embedding_model
from kuberec.similarity.train import ClassBalancedSampler, TrainResult, train_similarity
from kuberec.training.worker import TrainingError, weights_checksum

pytestmark = pytest.mark.slow

PER_SPLIT = 1000  # 1,000 train + 1,000 test images
# Tiny runs: the point is behaviour (sync, resume, outputs), not quality.
TINY = SimilarityConfig(architecture="vgg", classes_per_batch=5, examples_per_class=4, steps_per_epoch=5, epochs=3,
                        lr_schedule="constant")


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("similarity-lake") / "fashion_mnist")
    ingest_fashion_mnist(spark, str(fm.DEBIAN_DIR), uri, PER_SPLIT)
    return uri


def test_sampler_draws_balanced_seeded_batches():
    labels = np.repeat(np.arange(4), [5, 7, 9, 1])  # class 3 has one image: unusable for positive pairs
    labels = np.concatenate([labels, [-1, -1]])  # unlabelled rows are never drawn
    sampler = ClassBalancedSampler(labels, classes_per_batch=3, examples_per_class=4, seed=7)
    batches = sampler.epoch(0, steps=12)
    assert batches.shape == (12, 12)
    for row in batches:
        classes, counts = np.unique(labels[row], return_counts=True)
        assert len(classes) == 3 and set(classes) <= {0, 1, 2} and (counts == 4).all()
    # Within a class every image comes up before any repeats: class 0 (5 images) over its first 5 draws.
    draws = [i for row in batches for i in row if labels[i] == 0]
    assert sorted(draws[:5]) == list(range(5))
    np.testing.assert_array_equal(batches, sampler.epoch(0, steps=12))  # resumable: same seed, same epoch
    assert not np.array_equal(batches, sampler.epoch(1, steps=12))
    other_rank = ClassBalancedSampler(labels, 3, 4, seed=7, rank=1)
    assert not np.array_equal(batches, other_rank.epoch(0, steps=12))
    with pytest.raises(TrainingError, match="at least 2 classes"):
        ClassBalancedSampler(np.array([0, 0, 0, 1]), 2, 2)


def test_train_in_one_process_then_evaluate(lake, tmp_path, settings, capsys):
    config = SimilarityConfig(architecture="seed", steps_per_epoch=25, epochs=3)
    seen = []
    result = train_similarity(config, lake, None, tmp_path / "run", on_epoch_end=lambda m, model: seen.append(m))
    assert result.table_version == 0 and result.table_uri == lake
    assert result.world_size == 1 and result.train_examples == PER_SPLIT and result.steps_per_epoch == 25
    assert [m.epoch for m in result.history] == [1, 2, 3] and seen == result.history
    assert all(np.isfinite(m.loss) and m.images_per_second > 0 for m in result.history)
    assert result.history[-1].loss < result.history[0].loss
    assert result.history[-1].learning_rate < config.learning_rate  # cosine decay
    saved = TrainResult.load(tmp_path / "run")
    assert saved == result
    model = load_embedding_model(result.model_dir)
    assert model.embedding_dim == 128 and model.metadata["table_version"] == 0
    assert model.metadata["config"] == config.to_dict()

    # The evaluation step, as a user runs it: 1,000 test queries against the 1,000 train images.
    assert kuberec_main(["evaluate", "similarity", "--model", str(result.model_dir), "--table", lake,
                         "--map-queries", "200"]) == 0
    printed = capsys.readouterr().out
    assert "precision_at_5" in printed and "raw pixels" in printed
    out = tmp_path / "run" / "evaluation"
    report = json.loads((out / "similarity_evaluation.json").read_text())
    assert report["table_version"] == 0 and report["model"]["queries"] == PER_SPLIT
    assert report["model"]["index_size"] == PER_SPLIT and report["model"]["map_queries"] == 200
    for name in ("model", "raw_pixels"):
        values = [*report[name]["precision"].values(), *report[name]["recall"].values(), report[name]["map_at_r"]]
        assert all(0.0 <= v <= 1.0 for v in values)
        # recall@k ("any of the top k") can only grow with k and is never below precision@k
        assert report[name]["recall"]["1"] <= report[name]["recall"]["5"] <= report[name]["recall"]["10"]
        assert report[name]["recall"]["5"] >= report[name]["precision"]["5"]
    assert (out / "neighbours.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class Interrupted(Exception):
    pass


def test_resume_continues_an_interrupted_run(lake, tmp_path):
    out = tmp_path / "run"
    at_interruption = {}

    def crash_after_epoch_2(metrics, model):
        if metrics.epoch == 2:
            at_interruption["weights"] = weights_checksum(model)
            at_interruption["history"] = metrics
            raise Interrupted("simulated crash after the epoch-2 checkpoint")

    with pytest.raises(Interrupted):
        train_similarity(TINY, lake, 0, out, on_epoch_end=crash_after_epoch_2)
    assert not (out / "model").exists()
    with pytest.raises(TrainingError, match="did not finish"):
        TrainResult.load(out)
    with pytest.raises(TrainingError, match="pass --resume"):
        train_similarity(TINY, lake, 0, out)
    with pytest.raises(TrainingError, match="differs from the interrupted run"):
        train_similarity(TINY.replace(architecture="seed"), lake, 0, out, resume=True)

    # Resuming with the epochs already done trains nothing: the exported weights are the checkpoint's.
    restored = train_similarity(TINY.replace(epochs=2), lake, 0, out, resume=True)
    assert restored.resumed_from_epoch == 2 and restored.weights_sha256 == at_interruption["weights"]
    assert restored.history[-1] == at_interruption["history"]

    finished = train_similarity(TINY, lake, 0, out, resume=True)
    assert finished.resumed_from_epoch == 2
    assert [m.epoch for m in finished.history] == [1, 2, 3]
    assert finished.history[:2] == restored.history
    assert finished.weights_sha256 != restored.weights_sha256
    assert load_embedding_model(finished.model_dir).metadata["epochs_trained"] == 3


def test_two_horovod_workers_end_with_identical_weights(lake, tracked_settings, capsys):
    from kuberec import tracking

    # No --out: the step writes under the home, in the directory its MLflow run names (what a rerun continues).
    command = [sys.executable, "-m", "kuberec.cli", "train", "similarity", "--workers", "2", "--table", lake,
               "--config", json.dumps(TINY.replace(epochs=2).to_dict())]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    run_id = re.search(r"^MLflow run: (\w+)$", done.stdout, re.M)[1]
    out = tracked_settings.home / "runs" / f"similarity-{run_id}"
    assert re.search(r"^model: (.+)$", done.stdout, re.M)[1] == str(out / "model")

    checksums = dict(re.findall(r"rank (\d): weights sha256 ([0-9a-f]{64})", log))
    assert set(checksums) == {"0", "1"} and checksums["0"] == checksums["1"]
    shards = {rank: int(n) for rank, n in re.findall(r"rank (\d)/2: (\d+) train images", log)}
    assert set(shards) == {"0", "1"} and all(n > 0 for n in shards.values())
    assert sum(shards.values()) == PER_SPLIT  # the shards partition the split

    result = TrainResult.load(out)
    assert result.world_size == 2 and result.weights_sha256 == checksums["0"]
    assert result.train_examples == PER_SPLIT
    assert result.history[-1].learning_rate == pytest.approx(2 * TINY.learning_rate)  # scaled by workers
    # Only rank 0 writes: one export, one set of checkpoints, logged by rank 0 alone.
    exports = [line for line in log.splitlines() if "exported embedding model" in line]
    assert len(exports) == 1 and "[rank 0]" in exports[0]
    assert (out / "checkpoints" / "ckpt-2.index").is_file()
    assert load_embedding_model(result.model_dir).embedding_dim == TINY.embedding_dim

    # The run the CLI created: params, lineage, each epoch's loss (logged by rank 0 alone) and the exported model.
    run_id = re.search(r"MLflow run: ([0-9a-f]{32})", log).group(1)
    client = tracking.client(tracked_settings)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["workers"] == "2"
    assert tracking.parse_lineage(run.data.tags) == {"fashion_mnist": (lake, 0)}
    losses = client.get_metric_history(run_id, "loss")
    assert [m.step for m in losses] == [1, 2] and losses[-1].value == pytest.approx(result.history[-1].loss)
    assert {a.path for a in client.list_artifacts(run_id, "train")} >= {"train/model", "train/train_result.json"}
    assert "trained vgg" in done.stdout  # the CLI's summary

    # The next verbs find the model, and the table version it trained on, by run id (as wide & deep's do).
    assert kuberec_main(["evaluate", "similarity", "--run", run_id, "--queries", "40"]) == 0
    assert f"logged to MLflow run {run_id}" in capsys.readouterr().out
    assert kuberec_main(["register", "similarity", "--run", run_id, "--name", "test-similarity-cli"]) == 0
    assert re.search(rf"^registered test-similarity-cli version 1 \(champion\): \d+ items from {re.escape(lake)} v0, "
                     r"models:/test-similarity-cli/1$", capsys.readouterr().out, re.M)
