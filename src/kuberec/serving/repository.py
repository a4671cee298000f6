"""The model repository `kuberec serve` writes and its model server processes follow (no KServe import here).

    <repository>/<name>/model.json           {"uri": <cached model directory>, "registry_version": "<n>"}
    <repository>/<name>/status/<pid>.json    {"registry_version": "<n>", "error": null | "<why it did not load>"}

`kuberec serve` rewrites model.json when an alias moves; each model server process loads what it names and records
the outcome in its own status file (kuberec.serving.runtime.FollowedRepository).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SPEC_FILE = "model.json"
STATUS_DIR = "status"


def write_json(path: Path, content: dict) -> None:
    """Write whole or not at all: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(content, indent=2))
    partial.replace(path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_spec(root: Path, name: str, uri: str, registry_version: str | None) -> Path:
    path = root / name / SPEC_FILE
    write_json(path, {"uri": uri, "registry_version": registry_version})
    return path


def status_path(root: Path, name: str, pid: int) -> Path:
    return root / name / STATUS_DIR / f"{pid}.json"
