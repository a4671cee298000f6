"""The models kuberec trains, tunes and serves: one record each, the only list of them.

Tuning (search spaces, trials, the sweep step and its CLI), serving (the default models, `kuberec recommend`, the
demo page, the refusals) and the pipelines read what they need about a model from its record instead of branching on
its name. A model's own package (`kuberec.<model>`: config, model, train, evaluate, pyfunc, serving, steps, trial)
never imports this module: the record sits above the packages it lists. Adding a model: its package, its record in
MODELS, its KFP components and pipeline
(docs/architecture.md lists each place).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Mapping

from kuberec.errors import KuberecError
from kuberec.inference import BadRequest, QueryOption
from kuberec.ingest.catalog import TABLE_NAME as CATALOG_TABLE
from kuberec.ingest.instacart_features import EXAMPLES_TABLE, gold_tables
from kuberec.lake.delta import TableRef
from kuberec.model_config import EpochDone, ModelConfig
from kuberec.similarity import config as similarity_config
from kuberec.similarity import serving as similarity_serving
from kuberec.similarity import trial as similarity_trial
from kuberec.widedeep import config as widedeep_config
from kuberec.widedeep import serving as widedeep_serving
from kuberec.widedeep import trial as widedeep_trial


class UnknownModelError(KuberecError):
    """No model of that name."""


class UnknownMetricError(KuberecError):
    """The model's tuning trials do not report that metric."""


@dataclass(frozen=True)
class TuningDefaults:
    """How a sweep of the model searches (kuberec.tuning.space documents the space format)."""

    default_space: Mapping[str, Any]
    metrics: Mapping[str, str]  # validation metric its trials report every epoch -> "max" or "min"
    default_metric: str
    max_examples_hint: str = ""  # empty: a sweep may cap its training examples; else how to bound training instead


@dataclass(frozen=True)
class ServingParts:
    """How clients ask a served model (its package's `serving` module): kuberec recommend, the demo page, the refusal
    tests and `make e2e` loop over these instead of knowing the models."""

    query_options: tuple[QueryOption, ...]  # `kuberec recommend` options -> keyword arguments of `recommend`
    recommend: Callable[..., list[dict]]  # (url, *, model, k=None, **query options) -> answer rows
    bad_requests: Callable[[str], list[BadRequest]]  # (served name) -> what its server must refuse
    demo_answer: Callable[[str, str, Mapping[str, str]], str]  # (url, served name, page query) -> HTML or ""
    demo_form: Callable[[Mapping[str, str], str, str], str]  # (page query, answer HTML, answer path) -> section
    probe: Mapping[str, list]  # the columns of one query every server of it answers
    answer_column: str  # the output column that tells two answers apart

    @classmethod
    def of(cls, module: ModuleType) -> "ServingParts":
        """From a model package's `serving` module: functions under the field's name, constants in upper case."""
        return cls(**{name: getattr(module, name) if hasattr(module, name) else getattr(module, name.upper())
                      for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class ModelRecord:
    name: str  # the CLI target (`kuberec tune <name>`) and the pipeline's name
    title: str  # for help texts
    config_class: type[ModelConfig]  # from a module without TensorFlow
    default_table: str  # the lake table its training reads by default
    table_command: str  # the command that creates that table
    experiment: str  # MLflow experiment of its training runs
    registered_name: str  # MLflow registered model: what `kuberec serve` serves by default
    lineage: Callable[[TableRef], dict[str, int]]  # {table URI: version} a training on that table reads
    load_tuning_data: Callable[..., Any]  # (table, *, max_examples, seed) -> what every trial gets
    train_trial: Callable[[dict[str, Any], Any, Any, EpochDone], None]  # (config dict, data, out dir, epoch_done)
    tuning: TuningDefaults
    serving: ServingParts

    def metric_mode(self, metric: str) -> str:
        """"max" or "min" for one of the metrics its trials report."""
        if metric not in self.tuning.metrics:
            raise UnknownMetricError(f"{self.name} sweeps report {', '.join(self.tuning.metrics)}; cannot optimise "
                                    f"{metric!r}")
        return self.tuning.metrics[metric]


SIMILARITY = ModelRecord(
    name="similarity",
    title="image similarity",
    config_class=similarity_config.SimilarityConfig,
    default_table=CATALOG_TABLE,
    table_command="kuberec ingest fashion-mnist",
    experiment=similarity_config.EXPERIMENT,
    registered_name=similarity_config.REGISTERED_NAME,
    lineage=lambda table: {table.uri: table.version},
    load_tuning_data=similarity_trial.load_data,
    train_trial=similarity_trial.train_trial,
    tuning=TuningDefaults(
        default_space={
            "learning_rate": {"loguniform": [1e-4, 1e-2]},
            "examples_per_class": {"int": [4, 16]},
            "classes_per_batch": {"int": [4, 10]},  # Fashion-MNIST has 10 classes
            "steps_per_epoch": {"logint": [50, 400]},
            "embedding_size": {"choice": [64, 128, 256]},
            "architecture": {"choice": ["seed", "databricks", "vgg"]},
            "epochs": 4,
        },
        # Validation: held-out train images as queries against the rest (kuberec.similarity.trial).
        metrics={"precision_at_5": "max", "precision_at_1": "max", "recall_at_5": "max",
                 "knn_accuracy_at_5": "max", "loss": "min"},
        default_metric="precision_at_5",
    ),
    serving=ServingParts.of(similarity_serving),
)

WIDEDEEP = ModelRecord(
    name="widedeep",
    title="wide & deep",
    config_class=widedeep_config.WideDeepConfig,
    default_table=EXAMPLES_TABLE,
    table_command="kuberec features instacart",
    experiment=widedeep_config.EXPERIMENT,
    registered_name=widedeep_config.REGISTERED_NAME,
    lineage=lambda table: gold_tables(table.uri, table.version),  # the examples and the feature tables of that build
    load_tuning_data=widedeep_trial.load_data,
    train_trial=widedeep_trial.train_trial,
    tuning=TuningDefaults(
        default_space={  # the seed article's space: layers, first width, width decline, dropout, optimizer
            "hidden_layers": {"int": [1, 4]},
            "hidden_units": {"choice": [64, 128, 256, 512]},
            "width_decline": {"uniform": [0.3, 1.0]},
            "dropout": {"uniform": [0.0, 0.5]},
            "deep_optimizer": {"choice": ["adam", "adagrad"]},
            "deep_learning_rate": {"loguniform": [1e-4, 3e-2]},
            "wide_learning_rate": {"loguniform": [0.05, 3.0]},
            "ftrl_l2": {"loguniform": [0.03, 10.0]},
            "batch_size": {"choice": [128, 256, 512, 1024]},
            "epochs": 3,
        },
        # Validation: the gold examples table's `valid` split (kuberec.widedeep.metrics).
        metrics={"auc": "max", "user_auc": "max", "log_loss": "min", "map_at_10": "max", "recall_at_10": "max",
                 "loss": "min"},
        default_metric="auc",
        max_examples_hint="a wide & deep sweep streams the whole train split; bound each trial's training with "
                          "steps_per_epoch in the search space instead (e.g. {\"steps_per_epoch\": 50})",
    ),
    serving=ServingParts.of(widedeep_serving),
)

MODELS: dict[str, ModelRecord] = {record.name: record for record in (SIMILARITY, WIDEDEEP)}


def served_record(served_name: str) -> ModelRecord:
    """The record of a model served under its registered name."""
    for record in MODELS.values():
        if record.registered_name == served_name:
            return record
    raise UnknownModelError(f"no kuberec model is registered as {served_name!r}; kuberec registers "
                            f"{', '.join(r.registered_name for r in MODELS.values())}")


def model_record(name: str) -> ModelRecord:
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; kuberec has {', '.join(MODELS)}")
    return MODELS[name]
