"""Index the catalog and register the recommender (`kuberec index build`, the pipelines' register step).

Embeds every catalog row of one Delta table snapshot (default: the latest; all splits unless --splits) with an
exported embedding model, builds the HNSW index, and logs model + index + item metadata as one MLflow pyfunc,
registered as a new version of `kuberec-similarity`. The run and the version record the table version (lineage) and
the training run. `champion` moves to the new version with --set-champion, stays with --no-set-champion, and by
default is set only when the model has no champion yet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from kuberec import tracking
from kuberec.ingest.catalog import TABLE_NAME
from kuberec.settings import Settings
from kuberec.similarity.config import REGISTERED_NAME
from kuberec.similarity.index.catalog import build_from_table
from kuberec.similarity.index.items import HnswParams
from kuberec.similarity.pyfunc import RegisteredSimilarityModel, log_similarity_model

log = logging.getLogger(__name__)


def local_model_path(settings: Settings, model: str) -> tuple[Path, str | None]:
    """(local directory, training run id or None) of an embedding model given as a path or an MLflow URI."""
    if model.startswith(("runs:/", "models:/", "mlflow-artifacts:", "s3://", "s3a://")):
        import mlflow

        tracking.configure(settings)
        run_id = model.split("/")[1] if model.startswith("runs:/") else None
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=model)), run_id
    return Path(model), None


def build_and_register(settings: Settings, model: str, *, table_uri: str | None = None, version: int | None = None,
                       splits: Sequence[str] | None = None, params: HnswParams | None = None,
                       name: str = REGISTERED_NAME, training_run_id: str | None = None,
                       set_champion: bool | None = None, save_to: Path | None = None,
                       tags: Mapping[str, str] | None = None) -> RegisteredSimilarityModel:
    from kuberec.similarity.model import embed, load_embedding_model

    path, run_from_uri = local_model_path(settings, model)
    embedding_model = load_embedding_model(path)
    index = build_from_table(table_uri or settings.table_uri(TABLE_NAME), lambda x: embed(embedding_model, x),
                             version=version, splits=splits, params=params or HnswParams())
    if save_to is not None:
        index.save(save_to)
    return log_similarity_model(settings, path, index, name=name, training_run_id=training_run_id or run_from_uri,
                                set_champion=set_champion, run_name="index-build", tags=tags)
