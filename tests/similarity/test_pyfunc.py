"""The similarity pyfunc through a real MLflow server: log -> register -> load models:/name@champion -> predict."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kuberec import tracking
from kuberec.model_input import ModelInputError
from kuberec.similarity.index import HnswParams, ItemIndex, items_frame
from kuberec.similarity.pyfunc import (
    INDEX_VERSION_TAG,
    TRAINING_RUN_TAG,
    SimilarityInputError,
    log_similarity_model,
)

NAME = "test-similarity"
N_ITEMS = 300


def png_b64(image: np.ndarray, fmt: str = "PNG", size: int = 28) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).resize((size, size)).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def catalog(fashion_mnist_slice):
    return fashion_mnist_slice("train", 0, N_ITEMS)


@pytest.fixture(scope="module")
def registered(registry, catalog, embedding_model, embedding_model_dir):
    from kuberec.similarity.model import embed

    images, labels = catalog
    index = ItemIndex.build(embed(embedding_model, images), items_frame(np.arange(N_ITEMS), labels, images),
                            HnswParams(), table_uri="/lake/fashion_mnist", table_version=0)
    return log_similarity_model(registry, embedding_model_dir, index, name=NAME, training_run_id="train-run-1")


@pytest.fixture(scope="module")
def champion(registered):
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(tracking.model_uri(NAME))


def test_registered_version_records_lineage_and_becomes_first_champion(registry, registered):
    assert registered.version == 1 and registered.champion and registered.items == N_ITEMS
    version = tracking.alias_version(registry, NAME)
    assert version.version == "1"
    assert version.tags["kuberec.lineage.fashion_mnist"] == "/lake/fashion_mnist@v0"
    assert version.tags[TRAINING_RUN_TAG] == "train-run-1" and version.tags[INDEX_VERSION_TAG] == "0"
    run = tracking.client(registry).get_run(registered.run_id).data
    assert tracking.parse_lineage(run.tags) == {"fashion_mnist": ("/lake/fashion_mnist", 0)}
    assert run.metrics["index_items"] == N_ITEMS and run.metrics["index_recall_at_5_vs_exact"] >= 0.95


def test_signature_is_explicit_and_has_no_array_columns(champion):
    signature = champion.metadata.signature
    assert [(c.name, c.type.name, c.required) for c in signature.inputs.inputs] == [
        ("image_b64", "string", False), ("pixels", "string", False), ("item_id", "long", False)]
    assert {p.name: p.default for p in signature.params.params} == {"k": 5, "with_images": False,
                                                                      "include_query": False}


def test_predict_by_image_finds_the_item_itself_first(champion, catalog):
    images, labels = catalog
    queries = pd.DataFrame({"image_b64": [png_b64(images[5]), "data:image/png;base64," + png_b64(images[17]),
                                          png_b64(images[42], size=112)]})
    out = champion.predict(queries)
    assert list(out.columns) == ["query", "rank", "item_id", "distance", "label", "label_name"]
    assert len(out) == 15 and out["query"].tolist() == [0] * 5 + [1] * 5 + [2] * 5
    first = out[out["rank"] == 1].set_index("query")
    assert first.loc[0, "item_id"] == 5 and first.loc[0, "distance"] < 1e-5
    assert first.loc[1, "item_id"] == 17
    assert first.loc[2, "item_id"] == 42  # an upscaled copy is resized back to 28x28
    assert first.loc[0, "label"] == labels[5]
    jpeg = champion.predict(pd.DataFrame({"image_b64": [png_b64(images[5], fmt="JPEG")]}))
    assert 5 in jpeg["item_id"].tolist()  # lossy, but still among the nearest


def test_predict_by_pixels_in_every_accepted_spelling(champion, catalog):
    images, _ = catalog
    flat = images[9].ravel().tolist()
    out = champion.predict(pd.DataFrame({"pixels": [json.dumps(flat), json.dumps(images[9].tolist()),
                                                    ",".join(map(str, flat)), " ".join(map(str, flat))]}),
                           params={"k": 3})
    assert len(out) == 12 and (out[out["rank"] == 1]["item_id"] == 9).all()


def test_predict_by_item_id_excludes_the_item_and_ranks_by_distance(champion, catalog):
    _, labels = catalog
    out = champion.predict(pd.DataFrame({"item_id": [3, 250]}), params={"k": 7})
    assert len(out) == 14
    for query, item in ((0, 3), (1, 250)):
        rows = out[out["query"] == query]
        assert rows["rank"].tolist() == list(range(1, 8)) and item not in rows["item_id"].tolist()
        assert rows["distance"].is_monotonic_increasing and (rows["distance"] >= 0).all()
    assert (out["label"].to_numpy() == labels[out["item_id"].to_numpy()]).all()
    from kuberec.datasets.fashion_mnist import LABEL_NAMES

    assert out["label_name"].tolist() == [LABEL_NAMES[label] for label in out["label"]]


def test_images_and_the_query_item_on_request(champion, catalog):
    images, _ = catalog
    out = champion.predict(pd.DataFrame({"item_id": [11]}),
                           params={"k": 2, "with_images": True, "include_query": True})
    assert out["rank"].tolist() == [0, 1, 2] and out.loc[0, "item_id"] == 11 and out.loc[0, "distance"] == 0
    for item_id, encoded in zip(out["item_id"], out["image_png_b64"]):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))
        assert np.array_equal(decoded, images[item_id])


def test_a_batch_may_mix_query_kinds(champion, catalog):
    images, _ = catalog
    out = champion.predict(pd.DataFrame({"image_b64": [png_b64(images[1]), None, None],
                                         "pixels": [None, None, json.dumps(images[2].ravel().tolist())],
                                         "item_id": [-1, 4, -1]}), params={"k": 2})
    first = out[out["rank"] == 1].set_index("query")["item_id"]
    assert first.to_dict()[0] == 1 and first.to_dict()[2] == 2 and 4 not in out[out["query"] == 1]["item_id"].tolist()


@pytest.mark.parametrize("frame, params, message", [
    ({"image_b64": ["not base64!!"]}, None, "row 0: image_b64 is not valid base64"),
    ({"image_b64": [base64.b64encode(b"hello").decode()]}, None, "row 0: image_b64: not a readable PNG/JPEG"),
    ({"pixels": ["[1, 2, 3]"]}, None, "row 0: pixels has 3 values, expected 784"),
    ({"pixels": [json.dumps([0.5] * 784)]}, None, "integers 0..255"),
    ({"pixels": [json.dumps([300] * 784)]}, None, "integers 0..255"),
    ({"pixels": ["a,b,c"]}, None, "could not parse"),
    ({"item_id": [5, 999999]}, None, "unknown item_id 999999"),
    ({"item_id": [5], "pixels": [json.dumps([0] * 784)]}, None, "row 0: set exactly one of .*got pixels, item_id"),
    ({"item_id": [-1]}, None, "row 0: set exactly one .*got none"),
    ({"other": [1]}, None, "no queries"),
    ({"item_id": [5]}, {"k": 0}, "k must be between 1 and 100"),
    ({"item_id": [5]}, {"k": 101}, "k must be between 1 and 100"),
])
def test_bad_requests_say_what_is_wrong(champion, frame, params, message):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=message) as raised:
        champion.predict(pd.DataFrame(frame), params=params)
    assert raised.value.error_code == "INVALID_PARAMETER_VALUE"


def test_bad_params_and_oversized_batches_directly(champion):
    model = champion.unwrap_python_model()
    with pytest.raises(ModelInputError, match="k must be an integer"):
        model.predict(None, pd.DataFrame({"item_id": [1]}), params={"k": "five"})
    with pytest.raises(ModelInputError, match="unknown parameters"):
        model.predict(None, pd.DataFrame({"item_id": [1]}), params={"top": 3})
    with pytest.raises(SimilarityInputError, match="at most 1024"):
        model.predict(None, pd.DataFrame({"item_id": list(range(1025))}))


def test_champion_moves_only_when_asked_and_old_versions_stay_loadable(registry, registered, embedding_model_dir,
                                                                        champion):
    import mlflow.pyfunc

    index = champion.unwrap_python_model().index
    second = log_similarity_model(registry, embedding_model_dir, index, name=NAME, set_champion=False)
    assert second.version == 2 and not second.champion
    assert tracking.alias_version(registry, NAME).version == "1"
    third = log_similarity_model(registry, embedding_model_dir, index, name=NAME, set_champion=True)
    assert tracking.alias_version(registry, NAME).version == str(third.version)
    old = mlflow.pyfunc.load_model(tracking.model_uri(NAME, version=1))
    assert len(old.predict(pd.DataFrame({"item_id": [1]}))) == 5
    tracking.set_alias(registry, NAME, 1)  # leave the module's champion as it was


def test_loading_needs_no_tensorflow_similarity(registered, mlflow_server):
    script = (
        "import sys; sys.modules['tensorflow_similarity'] = None\n"  # any import of it now fails
        "import mlflow.pyfunc, pandas as pd\n"
        f"mlflow.set_tracking_uri({mlflow_server.url!r})\n"
        f"model = mlflow.pyfunc.load_model('models:/{NAME}@champion')\n"
        "out = model.predict(pd.DataFrame({'item_id': [7]}), params={'k': 3})\n"
        "print(out['item_id'].tolist())\n"
        "assert not [m for m in sys.modules if m.startswith('tensorflow_similarity') and sys.modules[m]]\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(json.loads(done.stdout.strip().splitlines()[-1])) == 3
