"""Index build and refresh on a real Delta table (real Spark ingestion) and a real MLflow registry: images added
with the lead's `ingest_images` become recommendable in a new version with the same weights; nothing else moves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kuberec import cli, tracking
from kuberec.datasets import fashion_mnist as fm
from kuberec.ingest.fashion_mnist import ingest_fashion_mnist
from kuberec.ingest.images import ingest_images
from kuberec.lake.delta import TableRef
from kuberec.similarity import steps as similarity_steps
from kuberec.similarity.index import refresh as refresh_step
from kuberec.similarity.index.build import build_and_register
from kuberec.similarity.pyfunc import SOURCE_VERSION_TAG, SimilarityInputError, png_b64

NAME = "test-similarity-refresh"
PER_SPLIT = 100


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("lake") / "fashion_mnist")
    assert ingest_fashion_mnist(spark, str(fm.DEBIAN_DIR), uri, PER_SPLIT) == 0
    return uri


@pytest.fixture(scope="module")
def new_images(fashion_mnist_slice, tmp_path_factory) -> tuple[np.ndarray, list[str]]:
    """Three test-split pictures that are not in the table yet, as PNG files an operator would upload."""
    images, _ = fashion_mnist_slice("test", 500, 503)
    folder = tmp_path_factory.mktemp("uploads")
    paths = []
    for number, image in enumerate(images):
        path = folder / f"new-{number}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return images, paths


def test_build_refresh_and_promote(spark, registry, lake, new_images, embedding_model_dir, capsys):
    import mlflow.pyfunc

    first = build_and_register(registry, str(embedding_model_dir), table_uri=lake, name=NAME,
                               training_run_id="train-1")
    assert first.version == 1 and first.champion and first.items == 2 * PER_SPLIT and first.table_version == 0

    # Nothing new yet: nothing registered.
    unchanged = refresh_step.refresh(registry, name=NAME)
    assert unchanged.new_version is None and unchanged.items == 2 * PER_SPLIT

    images, paths = new_images
    added = ingest_images(spark, paths, lake)
    new_ids = sorted(added.added.values())
    assert len(new_ids) == 3 and added.version == 1

    rows = refresh_step.catalog_rows_added_since(lake, 0)
    assert rows.item_ids.tolist() == new_ids and rows.version == 1
    assert (rows.labels == -1).all() and np.array_equal(rows.images, images)
    assert refresh_step.catalog_rows_added_since(lake, 0, splits=["train"]).item_ids.tolist() == []

    result = refresh_step.refresh(registry, name=NAME)
    assert result.source_version == 1 and result.new_version == 2 and not result.champion
    assert result.added_item_ids == new_ids and result.items == 2 * PER_SPLIT + 3
    assert result.indexed_table_version == 0 and result.table_version == 1
    assert tracking.alias_version(registry, NAME).version == "1"  # champion stays unless asked

    grown = mlflow.pyfunc.load_model(tracking.model_uri(NAME, version=2))
    out = grown.predict(pd.DataFrame({"image_b64": [png_b64(image) for image in images]}), params={"k": 3})
    first_hits = out[out["rank"] == 1]
    assert first_hits["item_id"].tolist() == new_ids and (first_hits["distance"] < 1e-5).all()
    assert (first_hits["label"] == -1).all() and (first_hits["label_name"] == "").all()
    by_id = grown.predict(pd.DataFrame({"item_id": [new_ids[0]]}), params={"k": 4})
    assert len(by_id) == 4 and new_ids[0] not in by_id["item_id"].tolist()

    version = tracking.get_version(registry, NAME, version=2)
    assert version.tags[SOURCE_VERSION_TAG] == "1" and version.tags["kuberec.training_run_id"] == "train-1"
    assert version.tags["kuberec.lineage.fashion_mnist"] == f"{lake}@v1"
    # Same weights: the exported model files are byte-identical between the versions.
    old = mlflow.pyfunc.load_model(tracking.model_uri(NAME, version=1))
    old_model, new_model = old.unwrap_python_model(), grown.unwrap_python_model()
    assert (old_model.embedding_model_path / "variables").exists()
    for path in sorted(p for p in old_model.embedding_model_path.rglob("*") if p.is_file()):
        twin = new_model.embedding_model_path / path.relative_to(old_model.embedding_model_path)
        assert twin.read_bytes() == path.read_bytes()
    # The previous version is untouched: it still serves, and does not know the new items.
    assert len(old_model.index) == 2 * PER_SPLIT
    with pytest.raises(SimilarityInputError, match=f"unknown item_id {new_ids[0]}"):
        old.predict(pd.DataFrame({"item_id": [new_ids[0]]}))

    # Refreshing the same champion again hands back version 2 rather than registering a twin ...
    again = refresh_step.refresh(registry, name=NAME)
    assert again.reused and again.new_version == 2
    assert sorted(int(v.version) for v in tracking.client(registry).search_model_versions(f"name = '{NAME}'")) \
        == [1, 2]
    # ... version 2 itself is up to date ...
    assert refresh_step.refresh(registry, name=NAME, version=2).new_version is None
    # ... and the CLI promotes it when asked.
    assert cli.main(["index", "refresh", "--name", NAME, "--champion", "always"]) == 0
    assert "version 2" in capsys.readouterr().out
    assert tracking.alias_version(registry, NAME).version == "2"


def test_refresh_of_a_missing_model_says_so(registry):
    assert cli.main(["index", "refresh", "--name", "never-registered"]) == 2


def _exported(tmp_path, name: str, kernel: str) -> str:
    """A real exported model: Flatten -> Dense(16) -> unit norm, with the kernel `kernel` ("zeros": every image gets
    the same vector, retrieval at chance) or a seeded random projection (it keeps pixel neighbours together)."""
    import tensorflow as tf

    from kuberec.similarity.model import export_embedding_model

    tf.keras.utils.set_random_seed(7)
    inputs = tf.keras.layers.Input(shape=(28, 28, 1))
    dense = tf.keras.layers.Dense(16, kernel_initializer=kernel, bias_initializer="ones")
    outputs = tf.keras.layers.UnitNormalization()(dense(tf.keras.layers.Flatten()(inputs)))
    return str(export_embedding_model(tf.keras.Model(inputs, outputs), tmp_path / name))


def test_the_register_step_gates_champion_on_precision_at_5_of_both_models(registry, lake, tmp_path):
    """The pipeline's register step (the KFP component's own function) with a known answer: a model that embeds
    every image alike (precision@5 at chance) against a random projection of the pixels (far better). The better
    challenger is promoted, the worse one and a tie (the same model again) leave the champion where it is; `never`
    and `always` do as they say. Each decision is in the output, the training run, the version's tags and the KFP
    Model and Markdown artifacts."""
    from kfp.dsl import Markdown, Model

    from components.similarity import register_similarity
    from kuberec.reports import markdown_text
    from kuberec.similarity.train import MODEL_DIR

    runs = {}
    for kind, kernel in (("flat", "zeros"), ("projection", "glorot_uniform")):
        runs[kind] = tracking.create_run(registry, "test-similarity-register", run_name=f"train-{kind}")
        tracking.client(registry).log_artifacts(runs[kind], _exported(tmp_path, kind, kernel),
                                                f"{tracking.TRAIN_ARTIFACTS}/{MODEL_DIR}")
    name = "test-similarity-gate"

    def register(kind: str, champion: str = "gate", model_name: str = name):
        step = len(list(tmp_path.glob("out-*")))
        model, report = Model(uri=str(tmp_path / f"out-{step}-model")), Markdown(uri=str(tmp_path / f"out-{step}-md"))
        out = register_similarity.python_func(
            run_id=runs[kind], table_uri=lake, table_version=0, champion=champion, champion_tolerance=0.001,
            max_queries=0, model_name=model_name, model=model, report=report, kfp_run_id="run-1",
            kfp_run_name="similarity-gate")
        assert model.metadata["version"] == out.version and model.metadata["champion"] == out.champion
        assert model.metadata["champion_decision"] == out.decision["reason"]
        assert markdown_text(out.decision["reason"]) in Path(report.path).read_text()
        return out

    first = register("flat")
    assert first.version == 1 and first.champion and first.decision["reason"] == "first version: no champion to beat"
    better = register("projection")
    assert better.champion and better.decision["challenger"] > better.decision["champion"] + 0.1
    assert better.decision["champion_version"] == 1
    worse = register("flat")
    assert not worse.champion and worse.decision["challenger"] < worse.decision["champion"]
    tie = register("projection")
    assert not tie.champion and tie.decision["challenger"] == tie.decision["champion"] == better.decision["challenger"]
    assert "within tolerance" in tie.decision["reason"]
    assert tracking.alias_version(registry, name).version == "2"
    # The challenger's score is what its evaluation measures: the same data, the same protocol.
    assert better.decision["challenger"] == pytest.approx(
        similarity_steps.evaluate(registry, runs["projection"], TableRef(lake, 0)).metrics()["precision_at_5"])

    version = tracking.get_version(registry, name, version=3)
    assert version.tags["kuberec.champion_gate.promote"] == "False"
    assert version.tags[tracking.KFP_RUN_ID_TAG] == "run-1"
    training = tracking.client(registry).get_run(runs["flat"]).data
    assert training.tags["kuberec.champion_gate.reason"] == worse.decision["reason"]
    assert training.metrics["champion_gate_champion_precision_at_5"] == worse.decision["champion"]

    always = register("flat", champion="always")
    assert always.champion and tracking.alias_version(registry, name).version == "5"
    never = register("projection", champion="never", model_name="test-similarity-never")
    assert not never.champion and tracking.alias_version(registry, "test-similarity-never") is None


def test_images_ingested_during_a_refresh_wait_for_the_next_one(spark, registry, new_images, embedding_model_dir,
                                                                 tmp_path, monkeypatch):
    """An upload that commits while a refresh is reading the catalog (made certain by committing it from inside
    the refresh, between its reading the table's version and reading the rows): the refresh indexes exactly the
    rows up to the version it read and records that version; the next refresh adds the upload, once."""
    name = "test-similarity-refresh-race"
    uri = str(tmp_path / "catalog")
    assert ingest_fashion_mnist(spark, str(fm.DEBIAN_DIR), uri, 20) == 0
    build_and_register(registry, str(embedding_model_dir), table_uri=uri, name=name, training_run_id="train-race")
    _, paths = new_images
    first = ingest_images(spark, paths[:2], uri)  # v1: what the refresh will index
    uploaded_during = []
    real_rows = refresh_step.catalog_rows_added_since

    def rows_while_another_upload_commits(*args, **kwargs):
        if not uploaded_during:
            uploaded_during.append(ingest_images(spark, paths[2:], uri))  # v2, after the refresh read v1
        return real_rows(*args, **kwargs)

    monkeypatch.setattr(refresh_step, "catalog_rows_added_since", rows_while_another_upload_commits)
    during = refresh_step.refresh(registry, name=name)
    monkeypatch.undo()
    late = sorted(uploaded_during[0].added.values())
    assert uploaded_during[0].version == 2 and len(late) == 1
    assert during.table_version == 1 and during.added_item_ids == sorted(first.added.values())

    after = refresh_step.refresh(registry, name=name, version=during.new_version)
    assert after.indexed_table_version == 1 and after.table_version == 2
    assert after.added_item_ids == late and after.items == during.items + 1 == 2 * 20 + 3
