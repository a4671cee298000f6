"""Settings resolution and the CLI's handling of user errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kuberec.cli import build_parser
from kuberec.settings import Settings, SettingsError, load_settings

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`


def test_defaults_live_under_home(settings):
    assert settings.lake_uri == str(settings.home / "lake")
    assert settings.table_uri("fashion_mnist") == str(settings.home / "lake" / "fashion_mnist")
    assert settings.backend == "local" and settings.mlflow_tracking_uri == ""


def test_environment_beats_config_file_beats_defaults(tmp_path, monkeypatch):
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.yaml").write_text("lake_uri: s3://bucket/lake\nnamespace: recs\nbackend: kubernetes\n")
    monkeypatch.setenv("KUBEREC_HOME", str(home))
    monkeypatch.setenv("KUBEREC_NAMESPACE", "from-env")
    settings = load_settings()
    assert settings.lake_uri == "s3://bucket/lake" and settings.backend == "kubernetes"
    assert settings.namespace == "from-env"
    assert settings.table_uri("fashion_mnist") == "s3a://bucket/lake/fashion_mnist"
    assert settings.to_env()["KUBEREC_LAKE"] == "s3://bucket/lake"
    assert load_settings(namespace="explicit").namespace == "explicit"


@pytest.mark.parametrize("config, message", [
    ("lakeuri: /x\n", "unknown settings \\['lakeuri'\\]"),
    ("- a list\n", "expected a mapping"),
    ("backend: yarn\n", "backend must be one of local, kubernetes"),
    ("lake_uri: gs://b/x\n", "only local paths and s3://"),
])
def test_bad_config_is_named(tmp_path, monkeypatch, config, message):
    monkeypatch.setenv("KUBEREC_HOME", str(tmp_path))
    monkeypatch.delenv("KUBEREC_BACKEND", raising=False)
    (tmp_path / "config.yaml").write_text(config)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_images_are_named_by_kind_and_tag():
    settings = Settings(image_registry="reg.example/ml", image_tag="1.2")
    assert settings.image("spark") == "reg.example/ml/kuberec-spark:1.2"


def test_every_command_is_reachable_with_its_own_help(capsys):
    import importlib

    from kuberec.cli import COMMAND_MODULES

    commands = [command for module in COMMAND_MODULES for command in importlib.import_module(module).COMMANDS]
    assert len({(c.verb, c.target) for c in commands}) == len(commands), "two commands share verb and target"
    help_text = build_parser().format_help()
    for command in commands:
        assert command.verb in help_text
        words = [command.verb] + ([command.target] if command.target else [])
        with pytest.raises(SystemExit) as exited:  # builds the command's own arguments, then prints its help
            build_parser([*words, "--help"]).parse_args([*words, "--help"])
        assert exited.value.code == 0
        assert command.help.split(" (")[0][:40] in " ".join(capsys.readouterr().out.split()), command


def test_cli_reports_user_errors_in_one_line(settings):
    run = subprocess.run([sys.executable, "-m", "kuberec.cli", "data", "fashion-mnist", "--source",
                          str(settings.home / "missing")], capture_output=True, text=True)
    assert run.returncode == 2
    assert "missing train-images-idx3-ubyte.gz" in run.stderr and "Traceback" not in run.stderr
