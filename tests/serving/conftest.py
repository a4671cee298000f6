"""A real MLServer serving a small real similarity model registered in the session's real MLflow server."""

from __future__ import annotations

import numpy as np
import pytest
from serving_helpers import MODEL, N_ITEMS, fixture_module

from kuberec.ports import free_port

# The similarity tests' tiny real embedding model and Fashion-MNIST slice, shared rather than copied.
_similarity = fixture_module("similarity")
fashion_mnist_slice = _similarity.fashion_mnist_slice
embedding_model_dir = _similarity.embedding_model_dir
embedding_model = _similarity.embedding_model


@pytest.fixture(scope="session")
def serving_settings(mlflow_server, tmp_path_factory):
    """A home of its own whose registry is the session's MLflow server (no environment changes leak out)."""
    from kuberec.settings import Settings

    return Settings(home=tmp_path_factory.mktemp("serving-home"), mlflow_tracking_uri=mlflow_server.url)


@pytest.fixture(scope="session")
def catalog(fashion_mnist_slice):  # noqa: F811
    return fashion_mnist_slice("test", 0, N_ITEMS)


@pytest.fixture(scope="session")
def registered(serving_settings, catalog, embedding_model, embedding_model_dir):  # noqa: F811
    """The similarity pyfunc over a 200-item catalog, registered as kuberec-similarity (champion)."""
    from kuberec.similarity.index import HnswParams, ItemIndex, items_frame
    from kuberec.similarity.model import embed
    from kuberec.similarity.pyfunc import log_similarity_model

    images, labels = catalog
    index = ItemIndex.build(embed(embedding_model, images), items_frame(np.arange(N_ITEMS), labels, images),
                            HnswParams(), table_uri="/lake/fashion_mnist", table_version=0)
    return log_similarity_model(serving_settings, embedding_model_dir, index, name=MODEL, set_champion=True)


@pytest.fixture(scope="session")
def model_server(serving_settings, registered):
    """MLServer started by kuberec.serving.server, for the whole session."""
    from kuberec.serving.server import ModelSpec, running

    with running(serving_settings, [ModelSpec(MODEL, alias="champion")], http_port=free_port(),
                 grpc_port=free_port()) as server:
        yield server
