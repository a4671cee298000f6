"""Serving: registered recommenders behind MLServer's Open Inference Protocol (V2), a client and a demo page."""
