"""Kubeflow pipelines of kuberec. Run, compile or submit them with `python -m pipelines.run` (`make pipeline-run`)."""
