"""The wide & deep model's config and names, without TensorFlow: tuning, the CLI and the KFP components read them
cheaply (kuberec.widedeep.model builds the network from a config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kuberec.ingest.instacart_features import CATEGORICAL_FEATURES, ID_COLUMNS, NUMERIC_FEATURES
from kuberec.model_config import ConfigError, ModelConfig

EXPERIMENT = "kuberec-widedeep"  # MLflow experiment of training, evaluation and registration runs
REGISTERED_NAME = "kuberec-widedeep"  # MLflow registered model (the pyfunc ranker with its features)
HEADLINE_METRIC = "user_auc"  # what the champion gate compares (kuberec.champion)
MODEL_KINDS = ("wide_deep", "wide", "deep")  # `kind`: both parts, or one of them (the baselines)
DEEP_OPTIMIZERS = ("adagrad", "adam")
# The gold examples' columns that training, evaluation and tuning trials read: the model's inputs and the label.
FEED_COLUMNS = (*ID_COLUMNS, *CATEGORICAL_FEATURES, *NUMERIC_FEATURES, "label")


@dataclass(frozen=True)
class WideDeepConfig(ModelConfig):
    label: ClassVar[str] = "wide & deep"
    kind: str = "wide_deep"
    # wide part: FTRL over per-example gradients (see the module docstring); chosen by measurement
    # (docs/BENCHMARKS.md, "Wide & deep")
    wide_learning_rate: float = 0.05
    ftrl_l1: float = 0.0
    ftrl_l2: float = 1.0
    ftrl_initial_accumulator: float = 0.1
    # deep part (the seed's search space: layer count, first width, width decline, dropout, optimizer)
    aisle_buckets: int = 4096
    department_buckets: int = 1024
    embedding_dim: int = 8
    hidden_layers: int = 3
    hidden_units: int = 128
    width_decline: float = 0.5
    dropout: float = 0.1
    deep_optimizer: str = "adam"
    deep_learning_rate: float = 0.001
    # training
    batch_size: int = 256  # per worker
    epochs: int = 3  # at most; early stopping may end sooner
    steps_per_epoch: int = 0  # 0: one pass over the training split by all workers together
    early_stopping_patience: int = 1  # epochs without a better valid-split log loss before stopping (0: never)
    shuffle_buffer: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in MODEL_KINDS:
            problems.append(f"kind must be one of {MODEL_KINDS}, not {self.kind!r}")
        if self.deep_optimizer not in DEEP_OPTIMIZERS:
            problems.append(f"deep_optimizer must be one of {DEEP_OPTIMIZERS}, not {self.deep_optimizer!r}")
        for name in ("aisle_buckets", "department_buckets", "embedding_dim", "hidden_units", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("hidden_layers", "steps_per_epoch", "shuffle_buffer", "early_stopping_patience"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be 0 or more, not {getattr(self, name)}")
        if not 0 < self.width_decline <= 1:
            problems.append(f"width_decline must be in (0, 1], not {self.width_decline}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), not {self.dropout}")
        for name in ("wide_learning_rate", "deep_learning_rate", "ftrl_initial_accumulator"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, not {getattr(self, name)}")
        for name in ("ftrl_l1", "ftrl_l2"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be 0 or more, not {getattr(self, name)}")
        if problems:
            raise ConfigError("invalid wide & deep config: " + "; ".join(problems))

    @property
    def layer_widths(self) -> list[int]:
        return [max(1, round(self.hidden_units * self.width_decline ** i)) for i in range(self.hidden_layers)]
