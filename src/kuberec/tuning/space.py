"""Declarative search spaces: which config fields a sweep varies, over which ranges, and what it keeps fixed.

A space is a JSON object over the fields of the model's config dataclass (its record's `config_class`):

    {"learning_rate": {"loguniform": [1e-4, 1e-2]},    float, log scale (low > 0)
     "dropout":       {"uniform": [0.0, 0.5]},         float
     "hidden_layers": {"int": [1, 4]},                 integer, both ends included
     "steps_per_epoch": {"logint": [50, 500]},         integer, log scale
     "architecture":  {"choice": ["seed", "vgg"]},     one of the values
     "epochs": 4}                                      anything else: a fixed value

A user's space is merged over the model's default space (kuberec.models) field by field (`{"epochs": 2}` only
fixes the epochs).
`parse_space` checks everything before a trial starts: unknown fields, malformed or empty ranges, and every bound
and choice against the config's own validation, so a bad value fails in seconds, not in the middle of a sweep.
`epochs` must be fixed: it is the time axis of ASHA's early stopping.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from kuberec.errors import KuberecError
from kuberec.models import UnknownModelError, model_record

RANGE_DIMENSIONS = ("loguniform", "uniform", "int", "logint")
DIMENSION_KINDS = (*RANGE_DIMENSIONS, "choice")


class SpaceError(KuberecError):
    """A search space (or a starting point of a sweep) is not usable."""


@dataclass(frozen=True)
class Dimension:
    kind: str  # one of DIMENSION_KINDS
    values: tuple  # (low, high) for the range kinds, the options for "choice"

    @property
    def candidates(self) -> tuple:
        """Values that must all be valid config values: both bounds, or every choice."""
        return self.values

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind in ("int", "logint") and value != int(value):
            return False
        return self.values[0] <= value <= self.values[1]

    def to_tune(self):
        """The Ray Tune domain (OptunaSearch turns it into the matching Optuna distribution)."""
        from ray import tune

        low, high = self.values[:2] if self.kind != "choice" else (None, None)
        if self.kind == "loguniform":
            return tune.loguniform(low, high)
        if self.kind == "uniform":
            return tune.uniform(low, high)
        if self.kind == "int":
            return tune.randint(low, high + 1)  # Ray's upper bound is exclusive
        if self.kind == "logint":
            return tune.lograndint(low, high + 1)
        return tune.choice(list(self.values))

    def to_spec(self) -> dict[str, list]:
        return {self.kind: list(self.values)}


@dataclass(frozen=True)
class SearchSpace:
    model: str
    dimensions: dict[str, Dimension]
    fixed: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return int(self.fixed["epochs"])

    def param_space(self) -> dict[str, Any]:
        """Ray Tune's param_space: a domain per dimension plus the fixed values (every trial config is complete)."""
        return {**self.fixed, **{name: dim.to_tune() for name, dim in self.dimensions.items()}}

    def to_spec(self) -> dict[str, Any]:
        """The JSON form that `parse_space` reads back into this space."""
        return {**self.fixed, **{name: dim.to_spec() for name, dim in self.dimensions.items()}}

    def config(self, values: Mapping[str, Any]):
        """The model config of one trial: fixed values + the trial's values for the dimensions."""
        return model_record(self.model).config_class.from_dict({**self.fixed, **values})

    def check_point(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """A starting point (a value for every dimension) inside this space; returns it as a plain dict."""
        if not isinstance(point, Mapping):
            raise SpaceError(f"a starting point must be a JSON object of config fields, not {point!r}")
        outside = sorted(set(point) - set(self.dimensions))
        if outside:
            raise SpaceError(f"starting point {dict(point)} sets {outside}, which the search space does not vary "
                             f"(its dimensions: {', '.join(self.dimensions)}); fix those in the space instead")
        missing = [name for name in self.dimensions if name not in point]
        if missing:  # Optuna evaluates a starting point as given: it cannot fill in the rest
            raise SpaceError(f"starting point {dict(point)} needs a value for every dimension of the search space; "
                             f"missing: {', '.join(missing)}")
        for name, value in point.items():
            if not self.dimensions[name].contains(value):
                raise SpaceError(f"starting point {name}={value!r} is outside the search space "
                                 f"{self.dimensions[name].to_spec()}")
        self._check_config(dict(point), f"starting point {dict(point)}")
        return dict(point)

    def _check_config(self, values: dict[str, Any], what: str) -> None:
        try:
            model_record(self.model).config_class.from_dict({**self.fixed, **values})
        except (KuberecError, TypeError, ValueError) as err:
            raise SpaceError(f"{what}: not a valid {self.model} config ({err})") from err


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _dimension(name: str, spec: Mapping[str, Any]) -> Dimension:
    if len(spec) != 1 or next(iter(spec)) not in DIMENSION_KINDS:
        raise SpaceError(f"search space field {name!r}: expected one of "
                         f"{', '.join('{' + repr(k) + ': [...]}' for k in DIMENSION_KINDS)} or a fixed value, "
                         f"got {dict(spec)}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, (list, tuple)):
        raise SpaceError(f"search space field {name!r}: {kind} needs a list, got {values!r}")
    if kind == "choice":
        if not values:
            raise SpaceError(f"search space field {name!r}: choice of nothing (empty list)")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise SpaceError(f"search space field {name!r}: choice lists a value twice: {list(values)}")
        return Dimension(kind, tuple(values))
    if len(values) != 2 or not all(_number(v) for v in values):
        raise SpaceError(f"search space field {name!r}: {kind} needs [low, high] numbers, got {list(values)}")
    low, high = values
    if kind in ("int", "logint") and (low != int(low) or high != int(high)):
        raise SpaceError(f"search space field {name!r}: {kind} bounds must be integers, got {list(values)}")
    if not low < high:
        raise SpaceError(f"search space field {name!r}: empty range {list(values)} (low must be below high; "
                         f"use a fixed value to keep it constant)")
    if kind in ("loguniform", "logint") and low <= 0:
        raise SpaceError(f"search space field {name!r}: {kind} needs a positive low bound, got {low}")
    if kind in ("int", "logint"):
        low, high = int(low), int(high)
    return Dimension(kind, (low, high))


def parse_space(model: str, overrides: Mapping[str, Any] | None = None) -> SearchSpace:
    """The model's default space with `overrides` merged over it field by field, fully validated."""
    try:
        record = model_record(model)
    except UnknownModelError as err:  # the sweep's model is part of what it searches
        raise SpaceError(str(err)) from None
    if overrides is not None and not isinstance(overrides, Mapping):
        raise SpaceError(f"a search space must be a JSON object of config fields, not {overrides!r}")
    merged = {**record.tuning.default_space, **(overrides or {})}
    known = [f.name for f in dataclasses.fields(record.config_class)]
    unknown = sorted(set(merged) - set(known))
    if unknown:
        raise SpaceError(f"unknown {model} config field(s) {unknown} in the search space; fields: {', '.join(known)}")
    dimensions: dict[str, Dimension] = {}
    fixed: dict[str, Any] = {}
    for name, value in merged.items():
        if isinstance(value, Mapping):
            dimensions[name] = _dimension(name, value)
        elif isinstance(value, (list, tuple)):
            raise SpaceError(f"search space field {name!r}: a list is ambiguous; write {{\"choice\": {list(value)}}} "
                             f"to search over it")
        else:
            fixed[name] = value
    if not dimensions:
        raise SpaceError(f"the search space varies nothing (all of {', '.join(merged)} are fixed)")
    epochs = fixed.get("epochs")
    if "epochs" in dimensions or not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise SpaceError("epochs must be a fixed whole number >= 1 in the search space: it is the time axis of "
                         "ASHA's early stopping (every trial reports once per epoch)")
    space = SearchSpace(model, dimensions, fixed)
    space._check_config({}, f"the fixed values {fixed}")
    for name, dim in dimensions.items():
        for value in dim.candidates:
            space._check_config({name: value}, f"search space value {name}={value!r}")
    return space
