"""Serving: registered recommenders on KServe's Python model server (Open Inference Protocol, V2), `kuberec recommend`
and a demo page."""
