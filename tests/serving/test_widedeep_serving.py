"""Both recommenders in one model server: the wide & deep ranker over HTTP, next to the similarity model, and both
asked by the standard V2 clients (NVIDIA's tritonclient, KServe's own) over REST and gRPC.

Builds the wide & deep test model as tests/widedeep does (generated Instacart data -> real Spark bronze/gold ->
short real training), reusing that area's fixtures.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.request

import pytest
from serving_helpers import MODEL, fixture_module

from kuberec import cli, inference
from kuberec.models import WIDEDEEP as WIDEDEEP_RECORD
from kuberec.ports import free_port
from kuberec.serving.refusals import bad_requests
from kuberec.similarity import serving as similarity_serving
from kuberec.widedeep import serving as widedeep_serving

_widedeep = fixture_module("widedeep")
test_config, gold, examples_uri, trained = (_widedeep.test_config, _widedeep.gold, _widedeep.examples_uri,
                                            _widedeep.trained)
WIDEDEEP = WIDEDEEP_RECORD.registered_name
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def both(serving_settings, registered, gold, trained, mlflow_server):
    from kuberec.serving.server import ModelSpec, running
    from kuberec.widedeep.pyfunc import log_widedeep_model

    log_widedeep_model(dataclasses.replace(gold, mlflow_tracking_uri=mlflow_server.url), trained,
                       set_champion=True)
    with running(serving_settings, [ModelSpec(MODEL, alias="champion"), ModelSpec(WIDEDEEP, alias="champion")],
                 http_port=free_port(), grpc_port=free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def history(gold):
    from kuberec.ingest.instacart_features import EXAMPLES_TABLE
    from kuberec.lake import feed

    arrays = feed.load_table_arrays(gold.table_uri(EXAMPLES_TABLE), ("user_id", "product_id"))
    return arrays.columns["user_id"], arrays.columns["product_id"]


def test_known_user_candidates_and_batch(both, history):
    users, products = history
    user = int(users[0])
    top = widedeep_serving.recommend(both.url, model=WIDEDEEP, user_id=user, k=5)
    assert [r["rank"] for r in top] == [1, 2, 3, 4, 5] and not any(r["fallback"] for r in top)
    scores = [r["score"] for r in top]
    assert scores == sorted(scores, reverse=True) and all(r["product_name"] for r in top)
    candidates = sorted(set(products[users == user].tolist()))[:3]
    chosen = widedeep_serving.recommend(both.url, model=WIDEDEEP, user_id=user, candidates=candidates, k=10)
    assert sorted(r["product_id"] for r in chosen) == candidates
    other = int(users[users != user][0])
    batch = inference.rows(inference.infer(both.url, WIDEDEEP, {"user_id": [user, other]}, {"k": 2}))
    assert [r["user_id"] for r in batch] == [user, user, other, other]
    # The similarity model answers from the same server.
    assert len(similarity_serving.recommend(both.url, model=MODEL, item_id=1)) == 5


def test_unknown_user_is_a_flagged_popularity_fallback_not_an_error(both):
    out = widedeep_serving.recommend(both.url, model=WIDEDEEP, user_id=987654321, k=4)
    assert len(out) == 4 and all(r["fallback"] for r in out)


@pytest.mark.parametrize("request_", bad_requests(WIDEDEEP), ids=[r.case for r in bad_requests(WIDEDEEP)])
def test_bad_widedeep_requests(both, request_):
    assert request_.check(both.url) == ""
    assert len(widedeep_serving.recommend(both.url, model=WIDEDEEP, user_id=987654321, k=1)) == 1


def test_cli_and_demo_page_for_a_shopper(both, history, capsys):
    user = int(history[0][0])
    assert cli.main(["recommend", "--user-id", str(user), "--k", "3", "--url", both.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["user_id", "rank", "product_id"] and len(lines) == 5
    from kuberec.serving.demo import start_demo

    demo = start_demo(both.url, port=0)
    try:
        with urllib.request.urlopen(f"{demo.url}/?user_id={user}", timeout=60) as response:
            page = response.read().decode()
    finally:
        demo.stop()
    assert "Top products for a shopper" in page and WIDEDEEP in page
    assert len(re.findall(rf"^{user}\s+\d+\s+\d+", page, re.M)) == 10


def _standard_queries(history) -> dict[str, tuple[dict, dict]]:
    """model -> (columns, params) of one query each, answered by kuberec's own client for comparison."""
    return {MODEL: ({"item_id": [3]}, {"k": 3}), WIDEDEEP: ({"user_id": [int(history[0][0])]}, {"k": 3})}


def _id_column(model: str) -> str:
    return "item_id" if model == MODEL else "product_id"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_over_http(both, history, binary):
    import numpy as np
    import tritonclient.http as triton

    server = triton.InferenceServerClient(f"127.0.0.1:{both.http_port}")
    assert server.is_server_ready() and server.is_model_ready(WIDEDEEP)
    for model, (columns, params) in _standard_queries(history).items():
        expected = inference.infer(both.url, model, columns, params)
        inputs = []
        for name, values in columns.items():
            tensor = triton.InferInput(name, [len(values)], "INT64")
            tensor.set_data_from_numpy(np.asarray(values, np.int64), binary_data=binary)
            inputs.append(tensor)
        outputs = None if binary else [triton.InferRequestedOutput(_id_column(model), binary_data=False)]
        result = server.infer(model, inputs, outputs=outputs, parameters=params)
        assert result.as_numpy(_id_column(model)).tolist() == expected[_id_column(model)]
    with pytest.raises(triton.InferenceServerException, match="unknown parameters"):
        server.infer(MODEL, [_int64(triton, "item_id", [3])], parameters={"top": 3})


def _int64(module, name: str, values: list):
    import numpy as np

    tensor = module.InferInput(name, [len(values)], "INT64")
    tensor.set_data_from_numpy(np.asarray(values, np.int64))
    return tensor


TRITON_GRPC = """
import json, sys
import numpy as np
import tritonclient.grpc as triton

port, queries = sys.argv[1], json.loads(sys.argv[2])
server = triton.InferenceServerClient(f"127.0.0.1:{port}")
answers = {"ready": server.is_server_ready() and all(server.is_model_ready(m) for m in queries)}


def ask(model, columns, params):
    inputs = []
    for name, values in columns.items():
        tensor = triton.InferInput(name, [len(values)], "INT64")
        tensor.set_data_from_numpy(np.asarray(values, np.int64))
        inputs.append(tensor)
    try:
        result = server.infer(model, inputs, parameters=params)
    except triton.InferenceServerException as err:
        return {"status": err.status(), "message": err.message()}
    response = result.get_response()
    return {"outputs": {o.name: result.as_numpy(o.name).tolist() for o in response.outputs},
            "model_version": response.model_version}


for model, (columns, params) in queries.items():
    answers[model] = ask(model, columns, params)
answers["unknown parameter"] = ask("kuberec-similarity", {"item_id": [3]}, {"top": 3})
answers["k zero"] = ask("kuberec-similarity", {"item_id": [3]}, {"k": 0})
answers["no such model"] = ask("no-such-model", {"item_id": [3]}, {})
print(json.dumps(answers, default=bytes.decode))  # BYTES outputs come as bytes
"""


def test_tritonclient_over_grpc(both, history):
    """In a process of its own: tritonclient's and KServe's generated protos both define `inference.*` messages, and
    one Python process cannot import both (protobuf: duplicate symbol 'inference.ServerLiveRequest')."""
    import json
    import subprocess
    import sys

    queries = _standard_queries(history)
    run = subprocess.run([sys.executable, "-c", TRITON_GRPC, str(both.grpc_port), json.dumps(queries)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    answers = json.loads(run.stdout.strip().splitlines()[-1])
    assert answers["ready"]
    for model, (columns, params) in queries.items():
        expected = inference.infer(both.url, model, columns, params)
        assert answers[model]["outputs"][_id_column(model)] == expected[_id_column(model)]
        assert answers[model]["model_version"] == expected_version(both, model)
    assert answers["unknown parameter"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "unknown parameters ['top']" in answers["unknown parameter"]["message"]
    assert answers["k zero"]["status"] == "StatusCode.INVALID_ARGUMENT" and "k must be" in answers["k zero"]["message"]
    assert answers["no such model"]["status"] == "StatusCode.NOT_FOUND"


def expected_version(server, model: str) -> str:
    return str(next(m.version for m in server.models if m.name == model))


def test_kserve_clients_over_rest_and_grpc(both, history):
    import asyncio

    import numpy as np
    from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

    async def ask() -> None:
        rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        rpc = InferenceGRPCClient(f"127.0.0.1:{both.grpc_port}", timeout=60)
        try:
            for model, (columns, params) in _standard_queries(history).items():
                expected = inference.infer(both.url, model, columns, params)[_id_column(model)]
                inputs = []
                for name, values in columns.items():
                    tensor = InferInput(name, [len(values)], "INT64")
                    tensor.set_data_from_numpy(np.asarray(values, np.int64), binary_data=False)
                    inputs.append(tensor)
                request = InferRequest(model, inputs, parameters=params)
                over_rest = await rest.infer(both.url, request, model_name=model)
                over_grpc = await rpc.infer(InferRequest(model, inputs, parameters=params))
                for response in (over_rest, over_grpc):
                    ids = next(o for o in response.outputs if o.name == _id_column(model)).as_numpy().tolist()
                    assert ids == expected
                # (KServe's REST client does not read model_version from the answer; the server sends it.)
                assert over_grpc.model_version == expected_version(both, model)
        finally:
            await rest.close()
            await rpc.close()

    asyncio.run(ask())


def test_prometheus_metrics_per_model(both):
    inference.infer(both.url, MODEL, {"item_id": [3]}, {"k": 2})
    widedeep_serving.recommend(both.url, model=WIDEDEEP, user_id=987654321, k=1)
    with pytest.raises(inference.ServingRequestError):
        inference.infer(both.url, MODEL, {"item_id": [3]}, {"k": 0})
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{both.url}/metrics", timeout=30) as response:
        samples = [(sample.name, sample.labels, sample.value)
                   for family in text_string_to_metric_families(response.read().decode()) for sample in family.samples]
    for model in (MODEL, WIDEDEEP):
        assert any(name == "request_predict_seconds_count" and labels == {"model_name": model} and value >= 1
                   for name, labels, value in samples), model
    assert any(name == "kuberec_request_errors_total" and labels == {"model_name": MODEL, "kind": "refused"}
               and value >= 1 for name, labels, value in samples)
