"""Catalog rows to index: a whole snapshot of the catalog table, or the rows added since a version (change data
feed), embedded in batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from kuberec.errors import DataError
from kuberec.similarity.index.items import HnswParams, ItemIndex, items_frame

log = logging.getLogger(__name__)

CDF_COLUMNS = ["item_id", "label", "image", "split"]


@dataclass(frozen=True)
class CatalogRows:
    """Catalog rows read from one snapshot of the Delta table."""

    item_ids: np.ndarray  # int64 [N]
    labels: np.ndarray  # int32 [N], -1 = unlabelled
    images: np.ndarray  # uint8 [N,28,28]
    version: int
    splits: list[str] | None = field(default=None)

    def frame(self) -> pd.DataFrame:
        return items_frame(self.item_ids, self.labels, self.images)


def read_catalog(table_uri: str, version: int | None = None, splits: Sequence[str] | None = None) -> CatalogRows:
    """All rows of `splits` (default: every split) of one table snapshot, through `kuberec.lake.feed.load_arrays`."""
    from kuberec.lake.delta import table_version
    from kuberec.lake.feed import load_arrays

    version = table_version(table_uri) if version is None else version  # one version for every split read
    parts = [load_arrays(table_uri, version=version, split=split) for split in (splits or [None])]
    ids = np.concatenate([p.item_ids for p in parts])
    order = np.argsort(ids, kind="stable")
    return CatalogRows(ids[order], np.concatenate([p.labels for p in parts])[order],
                       np.concatenate([p.images for p in parts])[order], version, list(splits) if splits else None)


def build_from_table(table_uri: str, embed: Callable[[np.ndarray], np.ndarray], *, version: int | None = None,
                     splits: Sequence[str] | None = None, params: HnswParams | None = None,
                     batch_size: int = 4096) -> ItemIndex:
    """Embed every catalog row of one table snapshot with `embed(images uint8 [N,28,28]) -> [N,D]` and index it."""
    params = params or HnswParams()
    rows = read_catalog(table_uri, version, splits)
    log.info("embedding %d catalog items of %s v%d", len(rows.item_ids), table_uri, rows.version)
    vectors = embed_in_batches(embed, rows.images, batch_size)
    index = ItemIndex.build(vectors, rows.frame(), params, table_uri=table_uri, table_version=rows.version,
                            splits=splits)
    log.info("indexed %d items (HNSW m=%d efC=%d efS=%d)", len(index), params.m, params.ef_construction,
             params.ef_search)
    return index


def embed_in_batches(embed: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                     batch_size: int = 4096) -> np.ndarray:
    from tqdm import tqdm

    if not len(images):
        return embed(images)
    chunks = [embed(images[start:start + batch_size])
              for start in tqdm(range(0, len(images), batch_size), desc="embedding", unit="batch",
                                disable=len(images) <= batch_size)]
    return np.concatenate(chunks)


def catalog_rows_added_since(table_uri: str, version: int, until: int | None = None,
                             splits: Sequence[str] | None = None) -> CatalogRows:
    """Catalog rows inserted after `version` up to `until` (default: latest), restricted to `splits`."""
    from kuberec.lake.delta import rows_added_since, table_version

    until = table_version(table_uri) if until is None else until
    rows = [row for row in rows_added_since(table_uri, version, until, columns=CDF_COLUMNS)
            if not splits or row["split"] in splits]
    bad = [row["item_id"] for row in rows if row["image"] is None or len(row["image"]) != 784]
    if bad:
        raise DataError(f"{table_uri}: items {bad[:5]} do not hold a 784-byte 28x28 image; not a catalog table")
    return CatalogRows(np.asarray([row["item_id"] for row in rows], np.int64),
                       np.asarray([-1 if row["label"] is None else row["label"] for row in rows], np.int32),
                       np.frombuffer(b"".join(row["image"] for row in rows), np.uint8).reshape(-1, 28, 28), until,
                       list(splits) if splits else None)
