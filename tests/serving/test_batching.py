"""kuberec's runtime answers concurrent similarity requests in one model call, with each request's own answer.

In-process (kuberec's KServe model on the registered model, no HTTP) so that which requests share a call is
deterministic: `asyncio.gather` queues them all before the batch runs. The pyfunc is the real one; it is only
wrapped to count its calls.
"""

from __future__ import annotations

import asyncio
import json

import pandas as pd
import pytest
from kserve import InferInput, InferRequest
from kserve.errors import InvalidInput
from serving_helpers import MODEL, png_b64

from kuberec.serving.runtime import KuberecModel
from kuberec.serving.server import ModelSpec, fetch_model


def v2(column: str, values: list, **params) -> InferRequest:
    datatype = "BYTES" if isinstance(values[0], str) else "INT64"
    return InferRequest(MODEL, [InferInput(column, [len(values)], datatype, values)], parameters=params)


def concurrently(model, loop, requests: list, **kwargs) -> list:
    async def all_of_them():
        return await asyncio.gather(*(model.predict(r) for r in requests), **kwargs)

    return loop.run_until_complete(all_of_them())


def frame(response) -> pd.DataFrame:
    return pd.DataFrame({output.name: output.data for output in response.outputs})


@pytest.fixture(scope="module")
def runtime(serving_settings, registered):
    served = fetch_model(serving_settings, ModelSpec(MODEL, version=registered.version))
    model = KuberecModel(MODEL, str(served.path), str(served.version))
    model.load()
    loop = asyncio.new_event_loop()
    calls = []
    predict = model._model.predict

    def counted(data, params=None):
        calls.append(len(data))
        return predict(data, params=params)

    model._model.predict = counted
    yield model, loop, calls
    loop.close()


def test_concurrent_requests_share_one_call_and_get_their_own_answers(runtime, catalog):
    model, loop, calls = runtime
    images, _ = catalog
    requests = [v2("image_b64", [png_b64(images[i])], k=5) for i in (3, 9, 21)] \
        + [v2("item_id", [i], k=5) for i in (4, 40, 120)] + [v2("item_id", [7, 8], k=3)]
    alone = []
    for request in requests:
        calls.clear()
        alone.append(frame(loop.run_until_complete(model.predict(request))))
        assert calls == [len(alone[-1]["query"].unique())]
    calls.clear()
    together = concurrently(model, loop, requests)
    # One call per kind of request (same columns and parameters): images, item ids with k=5, item ids with k=3.
    assert sorted(calls) == [2, 3, 3]
    for expected, response in zip(alone, together):
        pd.testing.assert_frame_equal(frame(response), expected)
    assert frame(together[0])["item_id"].iloc[0] == 3 and frame(together[4])["query"].eq(0).all()
    assert json.loads(frame(together[6]).groupby("query").size().to_json()) == {"0": 3, "1": 3}


def test_a_bad_request_fails_alone(runtime):
    model, loop, calls = runtime
    requests = [v2("item_id", [5], k=4), v2("item_id", [999_999], k=4), v2("item_id", [6], k=4)]
    results = concurrently(model, loop, requests, return_exceptions=True)
    assert isinstance(results[1], InvalidInput) and "999999" in str(results[1])
    assert [len(frame(results[i])) for i in (0, 2)] == [4, 4]
    assert frame(results[0])["item_id"].ne(5).all() and frame(results[2])["item_id"].ne(6).all()


def test_an_answer_does_not_depend_on_its_batch(runtime, catalog):
    """Bit for bit: ids, distances and ranks of one request alone and batched with 1..40 others of its kind (image
    batches of more than 16 take several embedding calls)."""
    model, loop, calls = runtime
    images, _ = catalog
    for column, query, others in (("item_id", 3, list(range(100, 160))),
                                  ("image_b64", png_b64(images[3]), [png_b64(images[i]) for i in range(100, 160)])):
        alone = frame(loop.run_until_complete(model.predict(v2(column, [query], k=10))))
        for size in (1, 2, 7, 15, 20, 40):
            calls.clear()
            together = concurrently(model, loop, [v2(column, [query], k=10)] +
                                    [v2(column, [other], k=10) for other in others[:size]])
            assert calls == [size + 1]
            pd.testing.assert_frame_equal(frame(together[0]), alone, check_exact=True, obj=f"{column} in {size + 1}")
