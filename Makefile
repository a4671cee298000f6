# kuberec: `make pipeline-run` runs the pipelines, `make test` runs the tests; both set themselves up.
SHELL := /bin/bash
VENV := .venv
PIPELINE ?= all
PYTEST_ARGS ?=

.PHONY: setup test pipeline-run pipeline-compile lock bench clean

setup:
	@scripts/setup.sh

test: setup
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# Runs locally with the KFP local runner, or submits to Kubeflow Pipelines when KFP_HOST is set.
pipeline-run: setup
	$(VENV)/bin/python -m pipelines.run $(PIPELINE) $(PIPELINE_ARGS)

pipeline-compile: setup
	$(VENV)/bin/python -m pipelines.run $(PIPELINE) --compile-only build/pipelines

# Re-resolve the full pinned set after changing pyproject.toml's direct pins.
lock:
	$(VENV)/bin/python -m pip freeze --all --exclude-editable | grep -vE '^(-e|pip==|kuberec)' > constraints.txt

bench: setup
	$(VENV)/bin/python benchmarks/run_all.py

clean:
	rm -rf .kuberec/lake .kuberec/data .kuberec/mlflow
