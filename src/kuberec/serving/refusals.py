"""Requests kuberec's model servers must refuse, each with the HTTP status and the words of the refusal.

One list for every place a model is served: the serving tests send it to `kuberec serve`'s model server, and `make
e2e` sends it to the InferenceServices on the cluster (the same runtime in kuberec's serving image), so a bad input
gets the same 4xx naming the problem wherever it is asked. After each refusal the server must go on serving.
"""

from __future__ import annotations

from kuberec.inference import BadRequest, protocol_bad_requests
from kuberec.models import served_record


def bad_requests(model: str) -> list[BadRequest]:
    """The refusals for the model served as `model` (a registered name: kuberec-similarity or kuberec-widedeep)."""
    return protocol_bad_requests(model) + served_record(model).serving.bad_requests(model)
