"""Asking a served wide & deep model: its request columns, `kuberec recommend` options, refusals and demo section.

A query is a shopper (`user_id`), optionally with the products to rank (`product_id`, one row each); the answer rows
are user_id, rank, product_id, score and the product's name and aisle where the model knows them.
"""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from kuberec.inference import UNKNOWN_ID, BadRequest, QueryOption, body_text, format_table, infer, rows


def _ids(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


QUERY_OPTIONS = (
    QueryOption("--user-id", "a shopper: the top products (wide & deep)", int),
    QueryOption("--candidates", "with --user-id: comma-separated product ids to rank", _ids, starts=False),
)
PROBE = {"user_id": [1]}  # one query any model answers (the e2e checks and load tests ask it)
ANSWER_COLUMN = "product_id"  # the output column that tells two answers apart


def recommend(url: str, *, model: str, user_id: int, candidates: Sequence[int] | None = None,
              k: int | None = None) -> list[dict]:
    """The top-k products for a shopper (ranked by the wide & deep model), optionally among `candidates`; the
    model's default k when None."""
    columns: dict[str, list] = {"user_id": [int(user_id)] * (len(candidates) if candidates else 1)}
    if candidates:
        columns["product_id"] = [int(c) for c in candidates]
    params: dict[str, Any] = {"k": k} if k is not None else {}
    return rows(infer(url, model, columns, params))


def bad_requests(model: str) -> list[BadRequest]:
    """What a server of this model must refuse, beyond kuberec.inference.protocol_bad_requests."""
    return [
        BadRequest("no inputs", model, '{"inputs": []}', 400, "missing inputs ['user_id']"),
        BadRequest("unknown product", model, body_text({"user_id": [1], "product_id": [UNKNOWN_ID]}), 400,
                   "unknown product_id"),
        BadRequest("k zero", model, body_text({"user_id": [1]}, {"k": 0}), 400, "k must be between 1 and 100"),
        BadRequest("no user", model, body_text({"product_id": [1]}), 400, "user_id"),
        BadRequest("negative user", model, body_text({"user_id": [-3]}), 400, "user_id must be >= 0"),
    ]


DEMO_FORM = """<h2>Top products for a shopper</h2>
<form method="get" action="/"><label>user id <input name="user_id" type="number" min="0" value="{user_id}"></label>
<button type="submit">Rank products</button></form>
<div id="products">{answer}</div>"""


def demo_answer(url: str, model: str, query: Mapping[str, str]) -> str:
    """HTML for the page's shopper (user_id) and their ranked products; "" when the query asks this model nothing.
    A refusal raises ServingRequestError (the page shows its message)."""
    if not query.get("user_id"):
        return ""
    results = recommend(url, model=model, user_id=int(query["user_id"]))
    return format_table(results).join(("<pre>", "</pre>")) if results else "<p>(no products)</p>"


def demo_form(query: Mapping[str, str], answer: str, answer_path: str) -> str:
    return DEMO_FORM.format(user_id=html.escape(query.get("user_id", "")), answer=answer)
