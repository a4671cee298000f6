"""Train the wide & deep model from the gold examples table: one process or N Horovod workers, the same code.

    python -m kuberec.widedeep.train [--table URI] [--version V] --out DIR [--config JSON] [--epochs N ...]
                                     [--mlflow-run-id ID] [--resume]
    horovodrun -np 2 -H localhost:2 --gloo python -m kuberec.widedeep.train ...

Rank 0 resolves the Delta versions of the gold tables (examples, user and product features) and broadcasts them, so
every worker reads the same snapshot and the result records it. Each worker streams its own shard (Parquet row
groups, `feed.make_table_dataset`) of the `train` split through Petastorm. A first pass over the shards computes the
numeric features' statistics (summed across workers), so every worker builds the same normalisation. Optimizer slots
are built before the first step and all variables are broadcast from rank 0, gradients are averaged by
`hvd.DistributedGradientTape` (FTRL then updates the wide variables, Adagrad/Adam the deep ones), and every worker
runs the same number of steps per epoch over a repeating feed, so shards of unequal size never leave a worker
waiting in allreduce. At the end the workers compare weight checksums (`weights-rank<r>.sha256`) and fail when they
differ. Only rank 0 writes the model and `train_result.json`.

The wide part's vocabularies (`kuberec.widedeep.model.Vocabulary`) are the ids of the whole `train` split, read by
every worker from the same snapshot. With `early_stopping_patience` > 0, rank 0 scores the `valid` split after each
epoch and training stops once its log loss has not improved for that many epochs; the model keeps the weights of its
best epoch (every worker restores the same ones, so checksums still agree).

Rank 0 checkpoints the model and both optimizers after every epoch (`kuberec.training.worker.EpochCheckpoints`, as the
similarity trainer does); `--resume` continues an interrupted run from its last checkpoint with the same config
(only `epochs` may change), and the feed of a resumed run is shuffled with another seed so it does not replay the
first epochs' order. Early stopping keeps enough checkpoints to find its best epoch's weights after a resume.

With `--mlflow-run-id` (what `kuberec.widedeep.steps.train` passes) rank 0, and only rank 0, logs into that existing
run: each epoch's loss, seconds and examples/s as the epoch ends (step = epoch, from 1, as in every kuberec run), then
the whole output directory as artifacts under `train/`, which is how later steps get the model without a shared file
system.

Output directory: model/ (SavedModel, see kuberec.widedeep.model), train_result.json, weights-rank<r>.sha256,
config.json, history.json (per epoch so far) and checkpoints/ (not uploaded to MLflow).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kuberec import model_config
from kuberec.errors import KuberecError
from kuberec.ingest.instacart_features import EXAMPLES_TABLE, NUMERIC_FEATURES, gold_tables
from kuberec.training.worker import (
    CHECKPOINT_DIR,
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
from kuberec.widedeep.config import FEED_COLUMNS, WideDeepConfig
from kuberec.widedeep.metrics import log_loss

log = logging.getLogger(__name__)

MODEL_DIR = "model"
PROGRESS_SECONDS = 60.0  # rank 0 logs the step, loss and rate this often within an epoch (a full-scale epoch: minutes)


@dataclass
class TrainResult:
    config: WideDeepConfig
    out_dir: Path
    model_dir: Path
    examples_uri: str
    tables: dict[str, int]  # Delta table URI -> version: the examples read, and the feature tables of that build
    world_size: int
    train_examples: int  # all workers together
    rank_examples: list[int]  # rows in each worker's shard
    steps_per_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, seconds, examples/s (+ valid)
    best_epoch: int = 0  # the epoch whose weights the model has (1-based)
    vocabulary: dict[str, int] = field(default_factory=dict)  # wide part: users, products, pairs with a weight
    weights_sha256: str = ""
    resumed_from_epoch: int = 0  # epochs already done by an earlier, interrupted run

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(config=self.config.to_dict(), out_dir=str(self.out_dir), model_dir=str(self.model_dir))
        return values

    @classmethod
    def load(cls, out_dir: str | Path) -> "TrainResult":
        path = Path(out_dir) / RESULT_FILE
        if not path.is_file():
            raise TrainingError(f"{path} not found: the training run in {out_dir} did not finish")
        values = json.loads(path.read_text())
        values["config"] = WideDeepConfig.from_dict(values["config"])
        # The recorded paths are the training machine's; a copy (downloaded MLflow artifacts) lives elsewhere.
        values["out_dir"] = Path(out_dir).absolute()
        values["model_dir"] = values["out_dir"] / MODEL_DIR
        return cls(**values)


def run_params(config: WideDeepConfig, world_size: int) -> dict[str, Any]:
    """MLflow params of a training run: the config fields and the worker count, under `widedeep.`."""
    return {f"widedeep.{key}": value for key, value in config.to_dict().items()} | {"widedeep.world_size": world_size}


def steps_per_epoch(config: WideDeepConfig, total_examples: int, world_size: int) -> int:
    if config.steps_per_epoch:
        return config.steps_per_epoch
    return max(1, total_examples // (config.batch_size * world_size))


# -- training -----------------------------------------------------------------------------------------------------

# Called on rank 0 after each epoch with that epoch's history entry (epoch (1-based), loss, seconds, examples/s)
# and the Keras model being trained (e.g. to score a validation split, as kuberec.widedeep.trial does).
EpochCallback = Callable[[dict[str, float], Any], None]


def train_widedeep(config: WideDeepConfig, examples_uri: str, out_dir: str | Path, *, version: int | None = None,
                   split: str = "train", save: bool = True, resume: bool = False,
                   on_epoch_end: EpochCallback | None = None) -> TrainResult:
    """Train on the `split` rows of the gold examples table (see the module docstring); the result on every rank."""
    result, _ = train_widedeep_model(config, examples_uri, out_dir, version=version, split=split, save=save,
                                     resume=resume, on_epoch_end=on_epoch_end)
    return result


def train_widedeep_model(config: WideDeepConfig, examples_uri: str, out_dir: str | Path, *,
                         version: int | None = None, split: str = "train", save: bool = True, resume: bool = False,
                         on_epoch_end: EpochCallback | None = None):
    """(TrainResult, trained Keras model); `save=False` keeps the model in memory only and writes no checkpoints
    (baselines, tuning trials); `resume` continues from the last checkpoint in `out_dir`."""
    hvd = init_horovod()
    import tensorflow as tf

    from kuberec.lake import feed
    from kuberec.widedeep import model as wd

    rank, size = hvd.rank(), hvd.size()
    out_dir = Path(out_dir).absolute()
    tables = agree(hvd, _resolve_or_error(examples_uri, version) if rank == 0 else None)
    if isinstance(tables, str):
        raise TrainingError(tables)
    error = agree(hvd, prepare_out_dir(out_dir, config.to_dict(), resume) if rank == 0 and save else None)
    if error:
        raise TrainingError(error)
    version = tables[examples_uri]
    started = time.perf_counter()
    stats, rank_examples = _feature_stats(hvd, examples_uri, version, split)
    steps = steps_per_epoch(config, stats.count, size)
    if rank == 0:
        log.info("feature statistics of %d rows in %.0f s", stats.count, time.perf_counter() - started)

    vocabulary = None
    if config.kind != "deep":
        started = time.perf_counter()
        vocabulary = wd.Vocabulary.from_columns(feed.load_table_arrays(
            examples_uri, wd.VOCABULARY_COLUMNS, version=version, split=split).columns)
        if rank == 0:
            log.info("wide vocabulary %s in %.0f s", vocabulary.sizes(), time.perf_counter() - started)
    tf.keras.utils.set_random_seed(config.seed)  # same initial weights everywhere (rank 0's are broadcast anyway)
    model = wd.build_model(config, stats, vocabulary)
    wide_opt, deep_opt = wd.build_optimizers(config, model)
    checkpoints, start_epoch, history = None, 0, []
    if save:
        # Early stopping may go back `patience` epochs for its best weights: keep their checkpoints.
        optimizers = {name: opt for name, opt in (("wide_optimizer", wide_opt), ("deep_optimizer", deep_opt)) if opt}
        checkpoints = EpochCheckpoints(hvd, out_dir, max_to_keep=max(2, config.early_stopping_patience + 1),
                                       model=model, **optimizers)
        start_epoch, history = checkpoints.restore(resume, config.epochs)
    if size > 1:
        # Slots already exist (built above), so one broadcast before the first step covers model and optimizers.
        optimizer_vars = [v for opt in (wide_opt, deep_opt) if opt is not None for v in opt.variables]
        hvd.broadcast_variables(model.variables + optimizer_vars, root_rank=0)
    train_step = wd.make_train_step(model, wide_opt, deep_opt,
                                    wrap_tape=hvd.DistributedGradientTape if size > 1 else None, world_size=size)
    if rank == 0:
        log.info("training %s on %s v%d (%s): %d workers, %d rows (%s), %d steps/epoch of %d, epochs %d..%d",
                 config.kind, examples_uri, version, split, size, stats.count, rank_examples, steps,
                 config.batch_size, start_epoch + 1, config.epochs)
    epochs = _Epochs(hvd, config, model, history, checkpoints,
                     _validation_rows(examples_uri, version) if rank == 0 and config.early_stopping_patience else None,
                     on_epoch_end)
    resumed_from = start_epoch
    if config.early_stopping_patience and history and start_epoch - epochs.best_epoch >= config.early_stopping_patience:
        start_epoch = config.epochs  # it had stopped early before it was interrupted
    with feed.make_table_dataset(examples_uri, FEED_COLUMNS, version=version, split=split,
                                 batch_size=config.batch_size, shard=rank, num_shards=size, num_epochs=None,
                                 shuffle=True, seed=config.seed + rank + 1000 * start_epoch,
                                 shuffle_buffer=config.shuffle_buffer) as dataset:
        epochs.run(iter(dataset), train_step, steps, start_epoch)
    epochs.keep_best_weights(out_dir)

    checksum = _agreed_checksum(hvd, model, out_dir if save else None)
    result = TrainResult(config=config, out_dir=out_dir, model_dir=out_dir / MODEL_DIR, examples_uri=examples_uri,
                         tables=tables, world_size=size, train_examples=stats.count, rank_examples=rank_examples,
                         steps_per_epoch=steps, history=history, best_epoch=epochs.best_epoch,
                         vocabulary=vocabulary.sizes() if vocabulary else {}, weights_sha256=checksum,
                         resumed_from_epoch=resumed_from)
    if rank == 0 and save:
        wd.save_model(model, result.model_dir, {"config": config.to_dict(), "tables": tables, "split": split,
                                                "stats": dataclasses.asdict(stats), "best_epoch": epochs.best_epoch,
                                                "vocabulary": result.vocabulary})
        (out_dir / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2))
        log.info("model saved to %s", result.model_dir)
    if size > 1:  # a barrier: nobody returns before rank 0 has written the model
        hvd.allreduce(tf.constant(0), op=hvd.Sum, name="widedeep_train_done")
    return result, model


def _feature_stats(hvd, examples_uri: str, version: int, split: str):
    """Pass 1 over every worker's shard: (the numeric features' FeatureStats summed over all shards, rows per
    worker), so every worker builds the same normalisation."""
    import tensorflow as tf

    from kuberec.lake import feed
    from kuberec.widedeep import model as wd

    count, total, total_sq = 0, np.zeros(len(NUMERIC_FEATURES)), np.zeros(len(NUMERIC_FEATURES))
    with feed.make_table_dataset(examples_uri, NUMERIC_FEATURES, version=version, split=split, batch_size=8192,
                                 shard=hvd.rank(), num_shards=hvd.size()) as dataset:
        for batch in dataset:
            n, s, sq = wd.feature_sums({k: v.numpy() for k, v in batch.items()})
            count, total, total_sq = count + n, total + s, total_sq + sq
    if hvd.size() > 1:
        rank_examples = [int(c) for c in hvd.allgather_object(count)]
        total = hvd.allreduce(tf.constant(total), op=hvd.Sum).numpy()
        total_sq = hvd.allreduce(tf.constant(total_sq), op=hvd.Sum).numpy()
    else:
        rank_examples = [count]
    if min(rank_examples) == 0:
        raise TrainingError(f"a worker's shard of {examples_uri} v{version} split {split} is empty "
                            f"(rows per worker: {rank_examples}); use fewer workers")
    if hvd.rank() == 0 and max(rank_examples) > 1.2 * min(rank_examples):
        log.warning("shards of unequal size (rows per worker: %s): every worker runs the same steps, so an epoch "
                    "shows the smaller shards' rows more often", rank_examples)
    return wd.FeatureStats.from_sums(sum(rank_examples), total, total_sq), rank_examples


class _Epochs:
    """The epoch loop with early stopping: rank 0 scores the `valid` rows after each epoch and decides for every
    worker; the weights of the best epoch so far are kept (a resumed run's history counts)."""

    def __init__(self, hvd, config: WideDeepConfig, model, history: list[dict[str, float]], checkpoints,
                 valid: dict[str, np.ndarray] | None, on_epoch_end: EpochCallback | None) -> None:
        self.hvd, self.config, self.model, self.history = hvd, config, model, history
        self.checkpoints, self.valid, self.on_epoch_end = checkpoints, valid, on_epoch_end
        self.best_loss, self.best_epoch, self.best_weights = float("inf"), 0, None
        for entry in history:  # a resumed run's best epoch so far, decided as in `run`
            if "valid_log_loss" not in entry or entry["valid_log_loss"] < self.best_loss:
                self.best_loss, self.best_epoch = entry.get("valid_log_loss", self.best_loss), int(entry["epoch"])

    def run(self, batches, train_step, steps: int, start_epoch: int) -> None:
        import tensorflow as tf

        from kuberec.widedeep import model as wd

        hvd, config = self.hvd, self.config
        size, reports = hvd.size(), hvd.rank() == 0
        for epoch in range(start_epoch, config.epochs):
            started = reported = time.perf_counter()
            loss_sum = tf.constant(0.0)
            for step in range(steps):
                batch = next(batches)
                loss_sum += train_step(wd.to_model_inputs(batch), batch["label"])
                if reports and time.perf_counter() - reported >= PROGRESS_SECONDS:
                    reported = time.perf_counter()
                    rate = (step + 1) / (reported - started)
                    log.info("epoch %d/%d: step %d/%d, loss %.4f, %.0f examples/s, about %.0f s left in the epoch",
                             epoch + 1, config.epochs, step + 1, steps, float(loss_sum) / (step + 1),
                             rate * config.batch_size * size, (steps - step - 1) / rate)
            loss = loss_sum / steps
            if size > 1:
                loss = hvd.allreduce(loss, op=hvd.Average)
            seconds = time.perf_counter() - started
            entry = {"epoch": epoch + 1, "loss": float(loss), "seconds": round(seconds, 3),
                     "examples_per_second": round(steps * config.batch_size * size / seconds, 1)}
            if self._end_epoch(epoch, entry):
                if hvd.rank() == 0:  # only rank 0 scores the valid split
                    log.info("early stop after epoch %d: best valid log loss %.4f at epoch %d", epoch + 1,
                             self.best_loss, self.best_epoch)
                break

    def _end_epoch(self, epoch: int, entry: dict[str, float]) -> bool:
        """Validate, keep the best weights, checkpoint and report epoch `epoch` (0-based); True: stop early."""
        from kuberec.widedeep import model as wd

        hvd, config = self.hvd, self.config
        improved, stop = True, False
        if self.valid is not None:
            entry["valid_log_loss"] = log_loss(self.valid["label"], wd.predict(self.model, self.valid))
            improved = entry["valid_log_loss"] < self.best_loss
            stop = not improved and epoch + 1 - self.best_epoch >= config.early_stopping_patience
        if hvd.size() > 1 and config.early_stopping_patience:  # rank 0 decides for everyone
            improved, stop = hvd.broadcast_object((improved, stop), root_rank=0, name=f"early_stop_{epoch}")
        if improved:
            self.best_loss, self.best_epoch = entry.get("valid_log_loss", self.best_loss), epoch + 1
            self.best_weights = self.model.get_weights() if config.early_stopping_patience else None
        self.history.append(entry)
        if self.checkpoints is not None:
            self.checkpoints.save(epoch + 1, self.history)
        if hvd.rank() == 0:
            log.info("epoch %d/%d: loss %.4f%s, %.0f examples/s", epoch + 1, config.epochs, entry["loss"],
                     f", valid log loss {entry['valid_log_loss']:.4f}" if "valid_log_loss" in entry else "",
                     entry["examples_per_second"])
            if self.on_epoch_end is not None:
                self.on_epoch_end(entry, self.model)
        return stop

    def keep_best_weights(self, out_dir: Path) -> None:
        """Put the best epoch's weights back into the model when a later epoch was worse."""
        hvd, best_epoch = self.hvd, self.best_epoch
        if self.best_weights is not None and best_epoch != len(self.history):
            self.model.set_weights(self.best_weights)
        elif self.config.early_stopping_patience and best_epoch and best_epoch != len(self.history):
            # The best epoch came before a resume: its weights are in its checkpoint, on rank 0's disk.
            if not agree(hvd, self.checkpoints.restore_epoch(best_epoch) if hvd.rank() == 0 else None):
                raise TrainingError(f"the checkpoint of epoch {best_epoch} (the best) is gone from {out_dir}")
            if hvd.size() > 1:
                hvd.broadcast_variables(self.model.variables, root_rank=0)


def _agreed_checksum(hvd, model, out_dir: Path | None) -> str:
    """The model's weights checksum, written to `out_dir` (when given) and the same on every worker, or
    TrainingError: gradients were not averaged or a variable was never synchronised."""
    checksum = weights_checksum(model)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"weights-rank{hvd.rank()}.sha256").write_text(checksum + "\n")
    if hvd.size() > 1:
        checksums = hvd.allgather_object(checksum)
        if len(set(checksums)) > 1:
            raise TrainingError(f"workers ended with different weights ({checksums}); the run is not usable")
    return checksum


def _validation_rows(examples_uri: str, version: int) -> dict[str, np.ndarray] | None:
    """The `valid` split's columns for early stopping, or None (logged) when the table has no such rows."""
    from kuberec.lake import feed

    try:
        valid = feed.load_table_arrays(examples_uri, FEED_COLUMNS, version=version, split="valid")
    except feed.FeedError as err:
        log.warning("no early stopping: %s", err)
        return None
    return valid.columns


def _resolve_or_error(examples_uri: str, version: int | None) -> dict[str, int] | str:
    """Rank 0's table versions, or the error message (sent to every rank so all of them stop)."""
    try:
        return gold_tables(examples_uri, version)
    except KuberecError as err:
        return str(err)


# -- command line -------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kuberec.widedeep.train", description=__doc__.splitlines()[0])
    parser.add_argument("--table", "--examples", dest="table",
                        help=f"gold examples Delta table URI (default: the lake's {EXAMPLES_TABLE})")
    parser.add_argument("--version", type=int, default=None, help="Delta version to read (default: latest)")
    parser.add_argument("--split", default="train", help="rows of this split are trained on (default: train)")
    parser.add_argument("--out", required=True, help="output directory (model, results)")
    parser.add_argument("--mlflow-run-id", help="existing MLflow run that rank 0 logs epochs and outputs into")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    model_config.add_config_arguments(parser, WideDeepConfig)
    return parser


def train_tracked(run_id: str, config: WideDeepConfig, examples_uri: str, out_dir: str | Path, *,
                  version: int | None = None, split: str = "train", resume: bool = False) -> TrainResult:
    """`train_widedeep` with rank 0 logging into MLflow run `run_id`: per-epoch metrics, then the outputs as
    artifacts under `train` (all but the checkpoints). Other ranks never touch MLflow."""
    if not is_rank_zero():
        return train_widedeep(config, examples_uri, out_dir, version=version, split=split, resume=resume)
    import mlflow

    from kuberec import tracking
    from kuberec.settings import load_settings

    settings = load_settings()

    def log_epoch(entry: dict[str, float], model: Any) -> None:
        values = {key: value for key, value in entry.items() if key != "epoch"}
        tracking.reconnecting(settings, lambda: tracking.log_metrics(values, step=int(entry["epoch"])),
                              f"epoch {int(entry['epoch'])} metrics")

    def log_outputs(result: TrainResult) -> None:
        for path in sorted(result.out_dir.iterdir()):
            if path.is_dir() and path.name != CHECKPOINT_DIR:
                mlflow.log_artifacts(str(path), f"{tracking.TRAIN_ARTIFACTS}/{path.name}")
            elif path.is_file():
                mlflow.log_artifact(str(path), tracking.TRAIN_ARTIFACTS)

    with tracking.continue_run(settings, run_id):
        result = train_widedeep(config, examples_uri, out_dir, version=version, split=split, resume=resume,
                                on_epoch_end=log_epoch)
        tracking.reconnecting(settings, lambda: log_outputs(result), "uploading the trained model")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from kuberec.settings import load_settings

    args = build_parser().parse_args(argv)
    configure_logging()
    config = model_config.config_from_flags(vars(args), WideDeepConfig)
    examples = args.table or load_settings().table_uri(EXAMPLES_TABLE)
    options = dict(version=args.version, split=args.split, resume=args.resume)
    if args.mlflow_run_id:
        train_tracked(args.mlflow_run_id, config, examples, args.out, **options)
    else:
        train_widedeep(config, examples, args.out, **options)
    return 0


if __name__ == "__main__":
    from kuberec.entrypoint import run_program

    run_program("kuberec.widedeep.train", main)
