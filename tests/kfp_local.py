"""What the KFP local runner recorded of a task (its executor output: parameters, artifacts and their metadata),
for tests that check what a run page would show."""

from __future__ import annotations

import json


def executor_output(settings, task: str) -> dict:
    """The latest run of `task` under the settings' pipeline root (`<home>/kfp`, pipelines.run.run_local)."""
    runs = sorted((settings.home / "kfp").glob(f"*/{task}/executor_output.json"), key=lambda p: p.stat().st_mtime)
    assert runs, f"no local run of {task} under {settings.home / 'kfp'}"
    return json.loads(runs[-1].read_text())


def artifact(output: dict, name: str) -> dict:
    """One output artifact of an executor output: {"name", "uri", "metadata"}."""
    return output["artifacts"][name]["artifacts"][0]
