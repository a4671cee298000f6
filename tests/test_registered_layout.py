"""Models registered before the package's layout changed (commit 6680e63) keep loading: MLflow pickles a pyfunc's
Python model by module path, so each registered class must stay importable where it was. The pickles under
tests/data/registered_before_layout_move are the `python_model.pkl` files that layout wrote (cloudpickle, as
`mlflow.pyfunc.log_model` does); the models' artifacts (SavedModel, index, features) are plain files."""

from __future__ import annotations

from pathlib import Path

import cloudpickle
import pytest

from kuberec.similarity.pyfunc import SimilarityRecommender
from kuberec.widedeep.pyfunc import WideDeepRanker

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`

PICKLES = Path(__file__).parent / "data" / "registered_before_layout_move"


@pytest.mark.parametrize(("model", "python_model_class"),
                         [("similarity", SimilarityRecommender), ("widedeep", WideDeepRanker)])
def test_python_models_pickled_by_the_old_layout_load_as_todays_classes(model, python_model_class):
    with open(PICKLES / f"{model}-python_model.pkl", "rb") as pickled:
        python_model = cloudpickle.load(pickled)
    assert type(python_model) is python_model_class
    assert callable(python_model.load_context) and callable(python_model.predict)
