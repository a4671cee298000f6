"""Search spaces: the defaults, their Ray Tune / Optuna form, and every kind of bad space failing before a sweep."""

from __future__ import annotations

import pytest

from kuberec.models import MODELS
from kuberec.tuning.space import SpaceError, parse_space

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`


@pytest.mark.parametrize("model", sorted(MODELS))
def test_default_spaces_are_valid_and_round_trip(model):
    space = parse_space(model)
    assert space.epochs >= 1 and space.dimensions
    assert parse_space(model, space.to_spec()) == space
    # Every trial config is complete: fixed values plus one value per dimension build the model's config.
    point = {name: dim.candidates[-1] for name, dim in space.dimensions.items()}
    config = space.config(space.check_point(point))
    assert all(getattr(config, name) == value for name, value in point.items())


def test_overrides_merge_field_by_field():
    space = parse_space("similarity", {"epochs": 2, "architecture": "seed", "dropout": {"uniform": [0.0, 0.5]}})
    assert space.fixed == {"epochs": 2, "architecture": "seed"}
    assert "architecture" not in space.dimensions and space.dimensions["dropout"].values == (0.0, 0.5)
    assert "learning_rate" in space.dimensions  # the rest of the default space stays


def test_ray_domains_become_the_intended_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from ray.tune.search.optuna import OptunaSearch

    space = parse_space("similarity", {"examples_per_class": {"int": [4, 16]},
                                       "steps_per_epoch": {"logint": [50, 400]}})
    distributions = dict(OptunaSearch.convert_search_space(
        {name: dim.to_tune() for name, dim in space.dimensions.items()}))
    # Both ends of an int range are included (Ray's randint excludes its upper bound).
    assert distributions["examples_per_class"] == IntDistribution(4, 16)
    assert distributions["steps_per_epoch"] == IntDistribution(50, 400, log=True)
    assert distributions["learning_rate"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert distributions["architecture"] == CategoricalDistribution(("seed", "databricks", "vgg"))


@pytest.mark.parametrize("model, overrides, message", [
    ("similarity", {"lr": {"loguniform": [1e-4, 1e-2]}}, r"unknown similarity config field\(s\) \['lr'\]"),
    ("similarity", {"learning_rate": {"loguniform": [1e-2, 1e-4]}}, "empty range"),
    ("similarity", {"learning_rate": {"uniform": [1e-3, 1e-3]}}, "empty range"),
    ("similarity", {"learning_rate": {"loguniform": [0, 1e-2]}}, "positive low bound"),
    ("similarity", {"architecture": {"choice": []}}, "empty list"),
    ("similarity", {"architecture": {"choice": ["seed", "resnet"]}}, "architecture='resnet'.*must be one of"),
    ("similarity", {"classes_per_batch": {"int": [1, 8]}}, "classes_per_batch=1.*at least 2"),
    ("similarity", {"embedding_size": {"int": [16, 64.5]}}, "bounds must be integers"),
    ("similarity", {"architecture": ["seed", "vgg"]}, "ambiguous"),
    ("similarity", {"dropout": {"normal": [0.1, 0.2]}}, "expected one of"),
    ("similarity", {"dropout": 1.5}, "fixed values.*dropout must be in"),
    ("similarity", {"epochs": {"int": [1, 3]}}, "epochs must be a fixed"),
    ("widedeep", {"width_decline": {"uniform": [0.0, 1.0]}}, "width_decline=0.0.*must be in"),
    ("widedeep", {"hidden_units": {"choice": [64, "wide"]}}, "hidden_units='wide'"),
    ("forest", {}, "unknown model 'forest'"),
])
def test_bad_spaces_fail_with_what_is_wrong(model, overrides, message):
    with pytest.raises(SpaceError, match=message):
        parse_space(model, overrides)


def test_starting_points_must_lie_in_the_space():
    space = parse_space("similarity", {"epochs": 2, "learning_rate": {"loguniform": [1e-4, 1e-2]},
                                       "architecture": {"choice": ["seed", "vgg"]}})
    point = {name: dim.candidates[0] for name, dim in space.dimensions.items()}
    assert space.check_point(point) == point
    with pytest.raises(SpaceError, match="outside the search space"):
        space.check_point({**point, "learning_rate": 0.5})
    with pytest.raises(SpaceError, match="missing: architecture"):
        space.check_point({k: v for k, v in point.items() if k != "architecture"})
    with pytest.raises(SpaceError, match="does not vary"):
        space.check_point({**point, "dropout": 0.1})
