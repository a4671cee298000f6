"""Every kuberec program fails the same way on a user error: `<program>: error: <message>` as the last line of
stderr, no traceback, exit status 2 (kuberec.entrypoint). Step modules run as `python -m`, as the backends run them."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from kuberec.entrypoint import USER_ERROR_STATUS
from kuberec.models import MODELS

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`


@pytest.mark.parametrize("module, args, message", [
    ("kuberec.ingest.instacart", ["--source", "{missing}"], "no such directory|not found|missing"),
    ("kuberec.similarity.evaluate", ["--model", "{missing}", "--table", "{missing}"], "not an exported kuberec"),
    *[(f"kuberec.{model}.train", ["--table", "{missing}", "--out", "{out}"], "no Delta table") for model in MODELS],
    ("kuberec.tuning.sweep", ["--model", "similarity", "--table", "{missing}", "--version", "0", "--name", "a/b",
                              "--parent-run-id", "x"], "sweep name 'a/b'"),
])
def test_step_programs_report_user_errors_in_one_line(settings, tmp_path, module, args, message):
    args = [arg.format(missing=tmp_path / "missing", out=tmp_path / "out") for arg in args]
    completed = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, check=False,
                               timeout=300)
    last = completed.stderr.strip().splitlines()[-1]
    assert completed.returncode == USER_ERROR_STATUS, completed.stderr
    assert last.startswith(f"{module}: error: "), completed.stderr
    assert "Traceback" not in completed.stderr
    assert re.search(message, last), last


def test_the_cli_reports_user_errors_the_same_way(settings, tmp_path):
    completed = subprocess.run([sys.executable, "-m", "kuberec.cli", "tune", "similarity", "--table",
                                str(tmp_path / "missing")], capture_output=True, text=True, check=False, timeout=300)
    assert completed.returncode == USER_ERROR_STATUS
    assert completed.stderr.strip().splitlines()[-1].startswith("kuberec tune similarity: error: no Delta table")
