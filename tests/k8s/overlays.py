"""What the k8s tests build from manifests/ (shared by their conftest and the tests that parametrize over it)."""

TARGETS = ["base", "overlays/dev", "overlays/gpu", "overlays/local"]
