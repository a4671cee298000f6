"""Model configs (SimilarityConfig, WideDeepConfig): frozen dataclasses that round-trip through dicts, JSON and
command-line flags the same way for every model, so a pipeline parameter, a tuning trial and a CLI flag all build
the same object and fail with the same message on a bad key."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from kuberec.errors import KuberecError

ConfigT = TypeVar("ConfigT", bound="ModelConfig")
# What a tuning trial of any model calls after each epoch: (epoch, training loss, a function that computes the
# validation metrics); see kuberec.tuning.trials.
EpochDone = Callable[[int, float, Callable[[], Mapping[str, float]]], None]


class ConfigError(KuberecError):
    """A model config has an unknown key or a bad value."""


class ModelConfig:
    """Mixin for a frozen config dataclass; `label` names it in error messages."""

    label: typing.ClassVar[str] = "model"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[ConfigT], values: Mapping[str, Any]) -> ConfigT:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.label} config keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    def replace(self: ConfigT, **changes: Any) -> ConfigT:
        return dataclasses.replace(self, **changes)


def _flag_type(config_cls: type, name: str) -> type:
    """The value type of a field (`int | None` -> int) for argparse."""
    hint = typing.get_type_hints(config_cls)[name]
    types = [t for t in typing.get_args(hint) if t is not type(None)]
    return types[0] if types else hint


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type[ModelConfig]) -> None:
    """`--config JSON|FILE` plus one flag per config field (flags win over --config)."""
    parser.add_argument("--config", help=f"{config_cls.__name__} as a JSON object or a path to a .json file")
    for field in dataclasses.fields(config_cls):
        parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name,
                            type=_flag_type(config_cls, field.name), default=None, help=f"(default {field.default})")


def config_from_flags(flags: Mapping[str, Any], config_cls: type[ConfigT]) -> ConfigT:
    """The config that `add_config_arguments`' parsed flags (`vars(args)`) describe."""
    values: dict[str, Any] = {}
    if flags.get("config"):
        text = flags["config"]
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ConfigError(f"--config {text!r} is neither a JSON object nor an existing file")
            text = path.read_text()
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--config is not valid JSON: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"--config must be a JSON object of {config_cls.__name__} fields")
    values.update({field.name: flags[field.name] for field in dataclasses.fields(config_cls)
                   if flags.get(field.name) is not None})
    return config_cls.from_dict(values)


def config_to_args(config: ModelConfig) -> list[str]:
    """The `--config` argument that reproduces `config` in a child process."""
    return ["--config", json.dumps(config.to_dict(), sort_keys=True)]
