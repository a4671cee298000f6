"""The similarity model's ANN index: `items` (ItemIndex: FAISS HNSW over the catalog embeddings with each item's
metadata, saved as a directory), `catalog` (catalog rows to embed: a snapshot, or the rows added since a version),
`build` (index a catalog snapshot and register model + index), `refresh` (add new rows without retraining) and
`commands` (`kuberec index build|refresh`).

This face re-exports the index itself for modules outside the package; the modules inside import each other
directly.
"""

from kuberec.similarity.index.items import HnswParams, IndexLoadError, ItemIndex, RecallReport, items_frame

__all__ = ["HnswParams", "IndexLoadError", "ItemIndex", "RecallReport", "items_frame"]
