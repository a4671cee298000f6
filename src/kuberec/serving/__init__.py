"""Serving: registered recommenders on KServe's Python model server (Open Inference Protocol, V2), a client and a demo
page."""

MAX_REQUEST_BYTES = 8 * 2**20  # decoded request payload; the pyfunc's own limit is 5 MiB per image, 1024 rows
