"""Every model's verbs take the same flags (kuberec.model_commands): checked here through the real command line for
each record of kuberec.models, failing before anything starts (no table, no MLflow run, no worker)."""

from __future__ import annotations

import pytest

from kuberec.cli import build_parser, main
from kuberec.models import MODELS

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_takes_the_same_flags(model):
    parser = build_parser(["train", model])
    train = parser.parse_args(["train", model, "--table", "/t", "--version", "3", "--workers", "2", "--out", "/o",
                               "--resume", "--epochs", "1"])
    assert (train.table, train.version, train.workers, train.out, train.resume, train.epochs) == \
        ("/t", 3, 2, "/o", True, 1)
    for verb in ("evaluate", "register"):
        args = build_parser([verb, model]).parse_args([verb, model, "--run", "abc", "--table", "/t", "--version", "2"])
        assert (args.run_id, args.table, args.version) == ("abc", "/t", 2)
    registered = build_parser(["register", model]).parse_args(["register", model, "--run", "r", "--name", "n",
                                                               "--champion", "always", "--tolerance", "0.01"])
    assert (registered.name, registered.champion, registered.tolerance) == ("n", "always", 0.01)
    gated = build_parser(["register", model]).parse_args(["register", model, "--run", "r"])
    assert (gated.champion, gated.tolerance) == ("gate", 0.001)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_train_refuses_resume_without_out_and_a_bad_config_before_reading_any_table(model, settings, tmp_path,
                                                                                    capsys):
    missing = str(tmp_path / "no-such-table")
    assert main(["train", model, "--table", missing, "--resume"]) == 2
    assert "--resume continues the run in --out; name it" in capsys.readouterr().err
    assert main(["train", model, "--table", missing, "--epochs", "0"]) == 2
    assert "epochs must be at least 1" in capsys.readouterr().err


def test_the_old_examples_flag_still_names_the_wide_and_deep_table():
    for verb, extra in (("train", []), ("evaluate", ["--run", "r"]), ("register", ["--run", "r"])):
        args = build_parser([verb, "widedeep"]).parse_args([verb, "widedeep", "--examples", "/gold", *extra])
        assert args.table == "/gold"
