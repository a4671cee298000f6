"""Train the similarity model: one process or N Horovod workers, the same code.

    python -m kuberec.similarity.train --table URI [--version V] --out DIR [--config JSON] [--epochs N ...] [--resume]
    horovodrun -np 2 -H localhost:2 --gloo python -m kuberec.similarity.train ...

Every worker reads its own shard of the table's training split (all workers read the same Delta version: rank 0
resolves it and broadcasts it), draws class-balanced batches (`classes_per_batch` classes x `examples_per_class`
images) from it with a seeded sampler, and runs the same number of steps per epoch, so Horovod's allreduce never
waits on a worker that has stopped. Gradients are averaged with `hvd.DistributedGradientTape`, the learning rate is
scaled by the number of workers, variables start from rank 0's values, and BatchNorm's moving statistics are
averaged at the end of each epoch so that every worker ends with identical weights. Only rank 0 writes: a checkpoint
and the history after every epoch (`--resume` continues from the last one), the exported embedding model and
`train_result.json` at the end.

Output directory:
    config.json         the run's SimilarityConfig
    checkpoints/        tf.train.CheckpointManager checkpoints (model, optimizer, epoch)
    history.json        per-epoch metrics so far
    model/              exported embedding model (kuberec.similarity.model.export_embedding_model)
    train_result.json   TrainResult: config, table URI and version read, per-epoch metrics
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kuberec import model_config
from kuberec.similarity.config import SimilarityConfig
from kuberec.similarity.model import augment_batch, build_loss, build_model, export_embedding_model, resolve_precision
from kuberec.training.worker import (
    CONFIG_FILE,
    HISTORY_FILE,
    RESULT_FILE,
    EpochCheckpoints,
    TrainingError,
    agree,
    configure_logging,
    init_horovod,
    is_rank_zero,
    prepare_out_dir,
    weights_checksum,
)

log = logging.getLogger("kuberec.similarity.train")  # a stable name also when run with `python -m`

MODEL_DIR = "model"


# -- results ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    loss: float  # mean Multi-Similarity loss over the epoch's steps, averaged over workers
    learning_rate: float  # at the end of the epoch (already scaled by the number of workers)
    seconds: float
    images_per_second: float  # all workers together


@dataclass
class TrainResult:
    config: SimilarityConfig
    out_dir: Path
    model_dir: Path
    table_uri: str | None  # None when trained from in-memory arrays
    table_version: int | None  # the Delta version every worker read (lineage)
    world_size: int
    train_examples: int  # labelled images used, all workers together
    steps_per_epoch: int
    history: list[EpochMetrics] = field(default_factory=list)
    resumed_from_epoch: int = 0  # epochs already done by an earlier, interrupted run
    weights_sha256: str = ""  # of all model variables; every worker ends with the same one

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(config=self.config.to_dict(), out_dir=str(self.out_dir), model_dir=str(self.model_dir))
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainResult":
        values = dict(values)
        values["config"] = SimilarityConfig.from_dict(values["config"])
        values["out_dir"], values["model_dir"] = Path(values["out_dir"]), Path(values["model_dir"])
        values["history"] = [EpochMetrics(**epoch) for epoch in values["history"]]
        return cls(**values)

    @classmethod
    def load(cls, out_dir: str | Path) -> "TrainResult":
        path = Path(out_dir) / RESULT_FILE
        if not path.is_file():
            raise TrainingError(f"{path} not found: the training run in {out_dir} did not finish")
        return cls.from_dict(json.loads(path.read_text()))


# Called on rank 0 after each epoch with its metrics and the Keras model being trained.
EpochCallback = Callable[[EpochMetrics, Any], None]


# -- class-balanced sampling --------------------------------------------------------------------------------------

class ClassBalancedSampler:
    """Batches of `classes_per_batch` distinct classes x `examples_per_class` images each, as TF Similarity's
    samplers draw them, but seeded per (seed, rank, epoch) so a resumed epoch sees exactly the batches it would have.

    Within a class, images are drawn from a shuffled cycle (every image once before any repeats), so an epoch that
    spans the data uses all of it. Unlabelled images (label < 0) and classes with fewer than 2 images are skipped.
    """

    def __init__(self, labels: np.ndarray, classes_per_batch: int, examples_per_class: int, seed: int = 0,
                 rank: int = 0) -> None:
        labels = np.asarray(labels)
        classes, counts = np.unique(labels[labels >= 0], return_counts=True)
        self.classes = classes[counts >= 2]
        if len(self.classes) < 2:
            raise TrainingError(f"need at least 2 classes with 2+ labelled images to train, found "
                                f"{len(self.classes)} among {len(labels)} images; ingest labelled data first")
        if classes_per_batch > len(self.classes):
            log.warning("classes_per_batch=%d but only %d classes have 2+ images; using %d",
                        classes_per_batch, len(self.classes), len(self.classes))
        self.classes_per_batch = min(classes_per_batch, len(self.classes))
        self.examples_per_class = examples_per_class
        self.members = {int(c): np.flatnonzero(labels == c) for c in self.classes}
        self.seed, self.rank = seed, rank

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.examples_per_class

    def epoch(self, epoch: int, steps: int) -> np.ndarray:
        """Row indices int32 [steps, batch_size] for one epoch."""
        rng = np.random.default_rng([self.seed, self.rank, epoch])
        cycles = {c: rng.permutation(m) for c, m in self.members.items()}
        cursor = dict.fromkeys(cycles, 0)
        k = self.examples_per_class
        out = np.empty((steps, self.batch_size), dtype=np.int32)
        for step in range(steps):
            picked = rng.choice(self.classes, size=self.classes_per_batch, replace=False)
            for slot, c in enumerate(picked.tolist()):
                take = []
                while len(take) < k:
                    if cursor[c] == len(cycles[c]):
                        cycles[c], cursor[c] = rng.permutation(self.members[c]), 0
                    n = min(k - len(take), len(cycles[c]) - cursor[c])
                    take.extend(cycles[c][cursor[c]:cursor[c] + n])
                    cursor[c] += n
                out[step, slot * k:(slot + 1) * k] = take
        return out


# -- training -----------------------------------------------------------------------------------------------------

def steps_per_epoch(config: SimilarityConfig, total_examples: int, world_size: int) -> int:
    """Configured steps, else one pass over all labelled images by all workers together."""
    if config.steps_per_epoch:
        return config.steps_per_epoch
    return max(1, total_examples // (config.batch_size * world_size))


def train_on_arrays(config: SimilarityConfig, images: np.ndarray, labels: np.ndarray, out_dir: str | Path, *,
                    resume: bool = False, on_epoch_end: EpochCallback | None = None,
                    table_uri: str | None = None, table_version: int | None = None) -> TrainResult:
    """Train on this worker's images (uint8 [N,28,28]) and labels (int [N]); see the module docstring.

    `on_epoch_end(metrics, model)` is called on rank 0 after each epoch's checkpoint is written (e.g. to log the
    metrics to MLflow, or to measure retrieval quality with the Keras model); an exception it raises stops the run,
    which `resume=True` can later continue from that checkpoint.
    """
    hvd = init_horovod()
    import tensorflow as tf

    rank, size = hvd.rank(), hvd.size()
    out_dir = Path(out_dir).absolute()
    error = prepare_out_dir(out_dir, config.to_dict(), resume) if rank == 0 else None
    error = agree(hvd, error)
    if error:
        raise TrainingError(error)

    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int32)
    sampler = ClassBalancedSampler(labels, config.classes_per_batch, config.examples_per_class, config.seed, rank)
    local_examples = int(sum(len(m) for m in sampler.members.values()))
    total_examples = int(hvd.allreduce(tf.constant(local_examples), op=hvd.Sum)) if size > 1 else local_examples
    steps = steps_per_epoch(config, total_examples, size)

    tf.random.set_seed(config.seed)  # same initial weights everywhere (rank 0's are broadcast anyway)
    model = build_model(config)
    base_lr = config.learning_rate * size
    lr = (tf.keras.optimizers.schedules.CosineDecay(base_lr, decay_steps=steps * config.epochs)
          if config.lr_schedule == "cosine" else base_lr)
    optimizer = tf.keras.optimizers.Adam(learning_rate=lr)
    optimizer.build(model.trainable_variables)  # slots exist now, so restore and broadcast cover them
    loss_fn = build_loss()
    checkpoints = EpochCheckpoints(hvd, out_dir, model=model, optimizer=optimizer)
    start_epoch, done = checkpoints.restore(resume, config.epochs)
    history = [EpochMetrics(**entry) for entry in done]
    if size > 1:
        hvd.broadcast_variables(model.variables + list(optimizer.variables), root_rank=0)

    images_t = tf.constant(images)
    labels_t = tf.constant(labels)
    distributed = size > 1
    non_trainable = [v for v in model.variables if not v.trainable]

    @tf.function(input_signature=[tf.TensorSpec([sampler.batch_size], tf.int32)])
    def train_step(idx):
        x = augment_batch(tf.cast(tf.gather(images_t, idx), tf.float32)[..., tf.newaxis] / 255.0, config.augment)
        y = tf.gather(labels_t, idx)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        if distributed:
            tape = hvd.DistributedGradientTape(tape)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    if rank == 0:
        log.info("training %s (%s): %d workers, %d labelled images, %d steps/epoch of %d (%d classes x %d), "
                 "epochs %d..%d, lr %.2g", config.architecture, resolve_precision(config.precision), size,
                 total_examples, steps, sampler.batch_size, sampler.classes_per_batch, config.examples_per_class,
                 start_epoch + 1, config.epochs, base_lr)
    for epoch in range(start_epoch, config.epochs):
        batches = sampler.epoch(epoch, steps)
        started = time.perf_counter()
        total = tf.constant(0.0)
        for step in _progress(range(steps), rank, f"epoch {epoch + 1}/{config.epochs}"):
            total += train_step(batches[step])
        loss = total / steps
        if distributed:
            loss = hvd.allreduce(loss, op=hvd.Average)
            for var in non_trainable:  # BatchNorm moving statistics: per-worker until averaged here
                var.assign(hvd.allreduce(var, op=hvd.Average))
        seconds = time.perf_counter() - started
        metrics = EpochMetrics(epoch=epoch + 1, loss=float(loss), learning_rate=float(optimizer.learning_rate),
                               seconds=round(seconds, 3),
                               images_per_second=round(steps * sampler.batch_size * size / seconds, 1))
        history.append(metrics)
        checkpoints.save(epoch + 1, [dataclasses.asdict(m) for m in history])
        if rank == 0:
            log.info("epoch %d/%d: loss %.4f, %.0f images/s, %.1f s", metrics.epoch, config.epochs, metrics.loss,
                     metrics.images_per_second, metrics.seconds)
            if on_epoch_end is not None:
                on_epoch_end(metrics, model)

    checksum = weights_checksum(model)
    log.info("rank %d: weights sha256 %s", rank, checksum)
    if distributed:
        checksums = hvd.allgather_object(checksum)
        if len(set(checksums)) > 1:  # gradients were not averaged or a variable was never synchronised
            raise TrainingError(f"workers ended with different weights ({checksums}); the run is not usable")
    result = TrainResult(config=config, out_dir=out_dir, model_dir=out_dir / MODEL_DIR, table_uri=table_uri,
                         table_version=table_version, world_size=size, train_examples=total_examples,
                         steps_per_epoch=steps, history=history, resumed_from_epoch=start_epoch,
                         weights_sha256=checksum)
    if rank == 0:
        export_embedding_model(model, result.model_dir, {
            "config": config.to_dict(), "training_precision": resolve_precision(config.precision),
            "table_uri": table_uri, "table_version": table_version, "epochs_trained": len(history)}, config=config)
        (out_dir / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2))
    if distributed:  # a barrier: nobody returns before rank 0 has written the model
        hvd.allreduce(tf.constant(0), op=hvd.Sum, name="similarity_train_done")
    return result


def _progress(steps: range, rank: int, description: str):
    """A progress bar on rank 0 when attached to a terminal; the plain range otherwise."""
    if rank != 0 or not sys.stderr.isatty():
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc=description, leave=False)


def train_similarity(config: SimilarityConfig, table_uri: str, version: int | None, out_dir: str | Path, *,
                     resume: bool = False, split: str = "train", max_examples: int | None = None,
                     on_epoch_end: EpochCallback | None = None) -> TrainResult:
    """Train on the `split` rows of a Fashion-MNIST-format Delta table, each worker reading its own shard.

    `version` None means the latest; rank 0 resolves it once so that every worker reads the same snapshot, and the
    result records it. `max_examples` caps the images used (all workers together) for quick runs.
    """
    from kuberec.lake import feed
    from kuberec.lake.delta import table_version

    hvd = init_horovod()
    rank, size = hvd.rank(), hvd.size()
    if version is None:
        version = agree(hvd, table_version(table_uri) if rank == 0 else None)
    arrays = feed.load_arrays(table_uri, version=version, split=split, shard=rank, num_shards=size)
    images, labels = arrays.images, arrays.labels
    if max_examples is not None:
        local_cap = max_examples // size + (1 if rank < max_examples % size else 0)
        keep = np.sort(np.random.default_rng([config.seed, rank]).permutation(len(images))[:local_cap])
        images, labels = images[keep], labels[keep]
    log.info("rank %d/%d: %d %s images from %s@v%d", rank, size, len(images), split, table_uri, arrays.version)
    return train_on_arrays(config, images, labels, out_dir, resume=resume, on_epoch_end=on_epoch_end,
                           table_uri=table_uri, table_version=arrays.version)


# -- command line -------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kuberec.similarity.train", description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help="Delta table URI (Fashion-MNIST format)")
    parser.add_argument("--version", type=int, default=None, help="Delta version to read (default: latest)")
    parser.add_argument("--split", default="train", help="rows of this split are trained on (default: train)")
    parser.add_argument("--out", required=True, help="output directory (checkpoints, model, results)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--max-examples", type=int, default=None, help="use at most this many images (quick runs)")
    parser.add_argument("--mlflow-run-id", default=None,
                        help="MLflow run (created by the launching step) that rank 0 logs epochs and outputs into")
    model_config.add_config_arguments(parser, SimilarityConfig)
    return parser


def train_tracked(run_id: str, config: SimilarityConfig, table_uri: str, version: int | None, out_dir: str | Path,
                  **kwargs: Any) -> TrainResult:
    """`train_similarity` with rank 0 logging into MLflow run `run_id`: each epoch's metrics as it ends, then the
    outputs (model/, train_result.json, history) under the artifact path `train`. Other ranks never touch MLflow."""
    if not is_rank_zero():
        return train_similarity(config, table_uri, version, out_dir, **kwargs)
    import mlflow

    from kuberec import tracking
    from kuberec.settings import load_settings

    settings = load_settings()

    def log_epoch(metrics: EpochMetrics, model: Any) -> None:
        values = {"loss": metrics.loss, "learning_rate": metrics.learning_rate,
                  "images_per_second": metrics.images_per_second}
        tracking.reconnecting(settings, lambda: tracking.log_metrics(values, step=metrics.epoch),
                              f"epoch {metrics.epoch} metrics")

    def log_outputs(result: TrainResult) -> None:
        tracking.log_metrics({"train_examples": result.train_examples, "world_size": result.world_size})
        for name in (MODEL_DIR, RESULT_FILE, HISTORY_FILE, CONFIG_FILE):
            path = result.out_dir / name
            if path.is_dir():
                mlflow.log_artifacts(str(path), f"{tracking.TRAIN_ARTIFACTS}/{name}")
            else:
                mlflow.log_artifact(str(path), tracking.TRAIN_ARTIFACTS)

    with tracking.continue_run(settings, run_id):
        result = train_similarity(config, table_uri, version, out_dir, on_epoch_end=log_epoch, **kwargs)
        tracking.reconnecting(settings, lambda: log_outputs(result), "uploading the trained model")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    config = model_config.config_from_flags(vars(args), SimilarityConfig)
    options = dict(resume=args.resume, split=args.split, max_examples=args.max_examples)
    if args.mlflow_run_id:
        train_tracked(args.mlflow_run_id, config, args.table, args.version, args.out, **options)
    else:
        train_similarity(config, args.table, args.version, args.out, **options)
    return 0


if __name__ == "__main__":
    from kuberec.entrypoint import run_program

    run_program("kuberec.similarity.train", main)
