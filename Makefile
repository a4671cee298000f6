# kuberec: `make pipeline-run` runs the pipelines, `make test` runs the tests; both set themselves up.
SHELL := /bin/bash
VENV := .venv
PIPELINE ?= all
PYTEST_ARGS ?=

.PHONY: setup k8s-test-tools lint test test-fast test-faults pipeline-run pipeline-compile pipeline-upload pipeline-schedule serve images lock clean \
	cluster-up cluster-down cluster-status cluster-smoke cluster-images kfp-ui e2e

setup:
	@scripts/setup.sh

# API server, etcd, kustomize and hadolint for tests/k8s, built once into the project cache (KUBEREC_K8S_TESTS=0 skips).
k8s-test-tools: setup
	@scripts/setup-k8s-test.sh

# ruff (pyflakes, pycodestyle, import order; settings in pyproject.toml). `make test` runs it first.
lint: setup
	$(VENV)/bin/ruff check .

test: lint k8s-test-tools
	$(VENV)/bin/python -m pytest -m "not faults" $(PYTEST_ARGS)

# The fault scenarios that take minutes each (docs/reliability.md): kept out of `make test` for its time.
test-faults: setup
	$(VENV)/bin/python -m pytest -m faults $(PYTEST_ARGS)

# Tests that start no JVM, no training and no server: a couple of minutes, to check a change before `make test`.
test-fast: lint
	$(VENV)/bin/python -m pytest -m fast $(PYTEST_ARGS)

# Runs locally with the KFP local runner, or submits to Kubeflow Pipelines when KFP_HOST is set.
pipeline-run: setup
	$(VENV)/bin/python -m pipelines.run $(PIPELINE) $(PIPELINE_ARGS)

pipeline-compile: setup
	$(VENV)/bin/python -m pipelines.run $(PIPELINE) --compile-only build/pipelines

# Compiles each pipeline and uploads it to Kubeflow Pipelines at KFP_HOST (a new version after the first upload).
pipeline-upload: setup
	$(VENV)/bin/python -m pipelines.run $(PIPELINE) --upload

# Uploads one pipeline (default: the catalog refresh) to KFP_HOST and runs it on a schedule: KFP's 6-field cron,
# seconds first (default hourly), one run at a time, no catch-up; PIPELINE_ARGS="--param name=value" sets its inputs.
SCHEDULE ?= 0 0 * * * *
pipeline-schedule: setup
	$(VENV)/bin/python -m pipelines.run $(if $(filter all,$(PIPELINE)),refresh,$(PIPELINE)) --schedule "$(SCHEDULE)" $(PIPELINE_ARGS)

# The registered champions on KServe's model server (V2) at 127.0.0.1:8080; SERVE_ARGS="--demo" adds the demo page on :8000.
serve: setup
	$(VENV)/bin/kuberec serve $(SERVE_ARGS)

# Container images with docker buildx: <IMAGE_REGISTRY>/kuberec-<kind>:<IMAGE_TAG>. IMAGES_ARGS="--push" publishes
# them, IMAGES_ARGS="--load spark" loads one into the local engine. Without buildx (a machine with no registry, like
# this one) it is `make cluster-images`: Debian's dockerd and Debian-made bases, `dev` tags, loaded onto the local node.
IMAGE_REGISTRY ?= kuberec
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
images:
	@if docker buildx version >/dev/null 2>&1; then \
		REGISTRY=$(IMAGE_REGISTRY) TAG=$(IMAGE_TAG) docker buildx bake -f images/docker-bake.hcl $(IMAGES_ARGS); \
	else \
		echo "images: no docker buildx here: building with Debian's dockerd and bases for the local node (make cluster-images)"; \
		$(MAKE) --no-print-directory cluster-images; \
	fi

# A real single-node Kubernetes on this machine (root, Linux): mpi-operator, spark-operator, KubeRay, KServe, kuberec's
# images built here and kuberec installed (docs/cluster-guide.md, "A cluster on this machine"). Cold: 35-60 minutes
# of Go and image builds (run it in the background); warm: about a minute. Never part of `make test`.
cluster-up: setup
	@scripts/cluster/up.sh

# Stops every process cluster-up started (by PID file); caches stay. WIPE=1 also drops the cluster's state.
cluster-down:
	@scripts/cluster/down.sh

cluster-status:
	@scripts/cluster/status.sh

# The Kubeflow Pipelines UI (and API: KFP_HOST) of make cluster-up's cluster on 127.0.0.1:$(or $(KFP_UI_PORT),8088),
# through kubectl port-forward until Ctrl-C.
kfp-ui:
	@scripts/cluster/kfp-ui.sh

# One resource per operator with kuberec's own commands and images; prints each one's final state and time.
cluster-smoke: setup
	$(VENV)/bin/python -m pytest tests/cluster -v -s -p no:cacheprovider $(PYTEST_ARGS)

# Both pipelines on the cluster (KUBEREC_BACKEND=kubernetes), both champions served by KServe and asked through
# kubectl port-forward; one summary, non-zero exit when a step failed (tests/e2e/driver.py). E2E_ARGS, e.g.
# E2E_ARGS="--similarity max_per_split=2000 --widedeep users=1000" for a quicker run. Never part of `make test`.
e2e: setup
	$(VENV)/bin/python -m tests.e2e.driver $(E2E_ARGS)

# Builds kuberec's images on the cluster's dockerd (started if it is not running) and loads them onto the node
# (IMAGES="spark serving" for some).
cluster-images: setup
	@scripts/cluster/start-runtime.sh && scripts/cluster/images.sh $(IMAGES)

# Re-resolve the full pinned set after changing pyproject.toml's direct pins.
lock:
	$(VENV)/bin/python -m pip freeze --all --exclude-editable | grep -vE '^(-e|pip==|kuberec)' > constraints.txt

clean:
	rm -rf .kuberec/lake .kuberec/data .kuberec/mlflow
