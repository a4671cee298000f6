"""Both recommenders in one MLServer: the wide & deep ranker over HTTP, next to the similarity model.

Builds the wide & deep test model as tests/widedeep does (generated Instacart data -> real Spark bronze/gold ->
short real training), reusing that area's fixtures.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.request

import pytest
from serving_helpers import MODEL, fixture_module

from kuberec import cli
from kuberec.models import WIDEDEEP as WIDEDEEP_RECORD
from kuberec.ports import free_port
from kuberec.serving import client
from kuberec.serving.refusals import bad_requests

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
    top = client.recommend_products(both.url, user, k=5)
    assert [r["rank"] for r in top] == [1, 2, 3, 4, 5] and not any(r["fallback"] for r in top)
    scores = [r["score"] for r in top]
    assert scores == sorted(scores, reverse=True) and all(r["product_name"] for r in top)
    candidates = sorted(set(products[users == user].tolist()))[:3]
    chosen = client.recommend_products(both.url, user, candidates, k=10)
    assert sorted(r["product_id"] for r in chosen) == candidates
    other = int(users[users != user][0])
    batch = client.rows(client.infer(both.url, WIDEDEEP, {"user_id": [user, other]}, {"k": 2}))
    assert [r["user_id"] for r in batch] == [user, user, other, other]
    # The similarity model answers from the same server.
    assert len(client.recommend_similar(both.url, item_id=1)) == 5


def test_unknown_user_is_a_flagged_popularity_fallback_not_an_error(both):
    out = client.recommend_products(both.url, 987654321, k=4)
    assert len(out) == 4 and all(r["fallback"] for r in out)


@pytest.mark.parametrize("request_", bad_requests(WIDEDEEP), ids=[r.case for r in bad_requests(WIDEDEEP)])
def test_bad_widedeep_requests(both, request_):
    assert request_.check(both.url) == ""
    assert len(client.recommend_products(both.url, 987654321, k=1)) == 1


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
