"""The similarity model's config and names, without TensorFlow: tuning, the CLI and the KFP components read them
cheaply (kuberec.similarity.model builds the network from a config)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from kuberec.model_config import ConfigError, ModelConfig

EXPERIMENT = "kuberec-similarity"  # MLflow experiment of training, evaluation and index runs
REGISTERED_NAME = "kuberec-similarity"  # MLflow registered model (model + index)
HEADLINE_METRIC = "precision_at_5"  # what the champion gate compares (kuberec.champion)
# The architectures kuberec.similarity.model builds, with their default embedding sizes.
ARCHITECTURE_EMBEDDING_SIZES = {"seed": 128, "databricks": 256, "vgg": 128}
AUGMENTATIONS = ("none", "flip", "flip_shift")
PRECISIONS = ("auto", "float32", "mixed_bfloat16")


@dataclass(frozen=True)
class SimilarityConfig(ModelConfig):
    """Everything that defines a similarity training run (besides its data)."""

    label: ClassVar[str] = "similarity"

    architecture: str = "vgg"
    embedding_size: int | None = None  # None: the architecture's own default
    learning_rate: float = 1e-3  # per worker; training multiplies it by the number of Horovod workers
    lr_schedule: str = "cosine"  # "constant" or "cosine" (decay to 0 over all steps of the run)
    classes_per_batch: int = 10
    examples_per_class: int = 8
    steps_per_epoch: int | None = None  # None: one pass over the labelled training images per epoch, across workers
    epochs: int = 12
    dropout: float = 0.3
    # "mixed_bfloat16": bfloat16 compute with float32 weights; "auto": that where the hardware has bfloat16 units
    # (CPUs with AVX512-BF16/AMX, GPUs of compute capability 8+), else float32 (emulated bfloat16 is slow).
    precision: str = "auto"
    augment: str = "none"  # training-time augmentation: "none", "flip" (left-right), "flip_shift" (+ up to 2 px shifts)
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.architecture not in ARCHITECTURE_EMBEDDING_SIZES:
            problems.append(f"architecture must be one of {', '.join(ARCHITECTURE_EMBEDDING_SIZES)}, "
                            f"not {self.architecture!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            problems.append(f"lr_schedule must be 'constant' or 'cosine', not {self.lr_schedule!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.augment not in AUGMENTATIONS:
            problems.append(f"augment must be one of {', '.join(AUGMENTATIONS)}, not {self.augment!r}")
        if self.embedding_size is not None and self.embedding_size < 2:
            problems.append("embedding_size must be at least 2")
        if not self.learning_rate > 0:
            problems.append("learning_rate must be positive")
        if self.classes_per_batch < 2:
            problems.append("classes_per_batch must be at least 2 (the loss needs negatives)")
        if self.examples_per_class < 2:
            problems.append("examples_per_class must be at least 2 (the loss needs positive pairs)")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append("steps_per_epoch must be at least 1")
        if self.epochs < 1:
            problems.append("epochs must be at least 1")
        if not 0 <= self.dropout < 1:
            problems.append("dropout must be in [0, 1)")
        if problems:
            raise ConfigError("bad similarity config: " + "; ".join(problems))

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.examples_per_class

    @property
    def embedding_dim(self) -> int:
        return self.embedding_size or ARCHITECTURE_EMBEDDING_SIZES[self.architecture]
