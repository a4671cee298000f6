"""The HNSW item index with real FAISS: recall against exact search, id mapping, growth, persistence, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kuberec.errors import DataError
from kuberec.similarity.index import HnswParams, IndexLoadError, ItemIndex, items_frame

pytestmark = pytest.mark.fast  # no JVM, no training, no server: part of `make test-fast`


def clustered(n: int, dim: int = 32, clusters: int = 20, spread: float = 0.3, seed: int = 0) -> np.ndarray:
    """Unit vectors around 20 fixed cluster centres (the same centres for every seed)."""
    centres = np.random.default_rng(1234).normal(size=(clusters, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(5000)


@pytest.fixture(scope="module")
def index(vectors) -> ItemIndex:
    ids = np.arange(len(vectors)) * 3 + 1000  # sparse ids: results must be ids, not FAISS positions
    return ItemIndex.build(vectors, items_frame(ids, np.arange(len(vectors)) % 10), HnswParams(),
                           table_uri="/lake/fashion_mnist", table_version=4)


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    return ids[np.argsort(-scores, axis=1)[:, :k]]


def test_recall_against_exact_search_on_clustered_and_random_data(index, vectors):
    queries = clustered(500, seed=1)  # new points from the same clusters
    report = index.recall_vs_exact(k=5, queries=queries)
    assert report.queries == 500 and report.k == 5 and report.recall >= 0.97
    # The exact search it compares against is itself right (numpy brute force).
    exact_ids, _ = index.exact_search(queries, 5)
    assert (exact_ids == brute_force(vectors, index.item_ids, queries, 5)).mean() > 0.999
    uniform = np.random.default_rng(2).normal(size=(3000, 64)).astype(np.float32)
    uniform /= np.linalg.norm(uniform, axis=1, keepdims=True)
    hard = ItemIndex.build(uniform, items_frame(np.arange(3000)))
    assert hard.recall_vs_exact(k=5).recall >= 0.9  # near-uniform high-d data is HNSW's hard case
    # efSearch is the recall knob: a tiny candidate list finds less.
    assert hard.recall_vs_exact(k=5, ef_search=5).recall < hard.recall_vs_exact(k=5, ef_search=200).recall


def test_search_returns_item_ids_sorted_by_cosine_distance(index, vectors):
    ids, dist = index.search(vectors[:50], 10)
    assert ids.shape == (50, 10) and dist.dtype == np.float32
    assert (ids[:, 0] == index.item_ids[:50]).all()  # each vector finds its own item first
    assert np.allclose(dist[:, 0], 0, atol=1e-5)
    assert (np.diff(dist, axis=1) >= -1e-6).all() and (dist >= -1e-5).all() and (dist <= 2 + 1e-5).all()
    assert set(ids.ravel()) <= set(index.item_ids.tolist())
    # Distances are 1 - cosine similarity of the stored vectors.
    expected = 1 - np.einsum("d,nd->n", vectors[0], index.vectors(ids[0]))
    assert np.allclose(dist[0], expected, atol=1e-5)



def test_a_query_gets_the_same_bits_alone_and_in_a_batch(index, vectors):
    """A served query's answer must not depend on what it was batched with: unit and non-unit query vectors, alone
    and among others, give identical ids and distances (a lone-query shortcut once gave other bits on AVX2)."""
    queries = np.concatenate([vectors[:20], clustered(20, seed=3) * 3.7]).astype(np.float32)
    together_ids, together_dist = index.search(queries, 10)
    for row in range(len(queries)):
        ids, dist = index.search(queries[row:row + 1], 10)
        assert np.array_equal(ids[0], together_ids[row]) and np.array_equal(dist[0], together_dist[row]), row

def test_search_items_leaves_the_query_item_out(index):
    query_ids = index.item_ids[[0, 7, 99]]
    ids, dist = index.search_items(query_ids, 5)
    assert ids.shape == (3, 5)
    for query, row in zip(query_ids, ids):
        assert query not in row and len(set(row)) == 5
    with pytest.raises(DataError, match="unknown item_id 2"):
        index.search_items([2], 5)


def test_k_larger_than_the_index_pads_with_minus_one():
    small = ItemIndex.build(clustered(3), items_frame([10, 11, 12]))
    ids, dist = small.search(clustered(1, seed=5), 5)
    assert sorted(ids[0, :3].tolist()) == [10, 11, 12] and (ids[0, 3:] == -1).all() and np.isinf(dist[0, 3:]).all()
    ids, _ = small.search_items([10], 5)
    assert sorted(ids[0, :2].tolist()) == [11, 12] and (ids[0, 2:] == -1).all()


def test_add_grows_the_index_and_rejects_duplicates_and_bad_vectors(vectors):
    grown = ItemIndex.build(vectors[:1000], items_frame(np.arange(1000)), table_version=1)
    new = clustered(10, seed=9)
    assert grown.add(new, items_frame(np.arange(5000, 5010), [3] * 10), table_version=2) == 10
    assert len(grown) == 1010 and grown.table_version == 2
    ids, _ = grown.search(new, 1)
    assert ids[:, 0].tolist() == list(range(5000, 5010))
    assert grown.items.set_index("item_id").loc[5003, "label_name"] == "Dress"
    with pytest.raises(DataError, match="already indexed"):
        grown.add(new[:2], items_frame([5000, 6000]))
    with pytest.raises(DataError, match="repeat"):
        grown.add(new[:2], items_frame([7000, 7000]))
    with pytest.raises(DataError, match="L2-normalised"):
        grown.add(new[:1] * 3, items_frame([7001]))
    with pytest.raises(DataError, match=r"\[N, 32\]"):
        grown.add(np.ones((1, 8), np.float32), items_frame([7002]))
    with pytest.raises(DataError, match="NaN"):
        grown.search(np.full((1, 32), np.nan, np.float32), 3)
    assert len(grown) == 1010  # failed adds changed nothing


def test_save_load_round_trip(tmp_path, index, vectors):
    images = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    small = ItemIndex.build(vectors[:20], items_frame(np.arange(20) + 500, np.arange(20) % 10 - 1, images),
                            HnswParams(m=8, ef_construction=50, ef_search=20), table_uri="s3a://lake/t",
                            table_version=7, splits=["train", "catalog"])
    path = small.save(tmp_path / "idx")
    loaded = ItemIndex.load(path)
    assert loaded.params == small.params and loaded.table_uri == "s3a://lake/t" and loaded.table_version == 7
    assert loaded.splits == ["train", "catalog"] and loaded.ef_search == 20
    assert (loaded.item_ids == small.item_ids).all()
    assert loaded.items["label_name"].tolist() == small.items["label_name"].tolist()
    assert loaded.items.loc[0, "label"] == -1 and loaded.items.loc[0, "label_name"] == ""
    assert np.array_equal(loaded.images([505])[0], images[5])
    for a, b in zip(loaded.search(vectors[:20], 4), small.search(vectors[:20], 4)):
        assert np.array_equal(a, b)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["items"] == 20 and manifest["dim"] == 32
    # Saving over an existing index replaces it whole.
    small.add(clustered(1, seed=3), items_frame([999]))
    small.save(path)
    assert len(ItemIndex.load(path)) == 21
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no staging or old copies left behind


def test_load_rejects_missing_and_corrupt_directories(tmp_path, vectors):
    with pytest.raises(IndexLoadError, match="not a kuberec item index"):
        ItemIndex.load(tmp_path / "nothing")
    path = ItemIndex.build(vectors[:10], items_frame(np.arange(10))).save(tmp_path / "idx")
    (path / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexLoadError, match="cannot read"):
        ItemIndex.load(path)
    path = ItemIndex.build(vectors[:10], items_frame(np.arange(10))).save(tmp_path / "idx2")
    items_frame(np.arange(9)).to_parquet(path / "items.parquet")
    with pytest.raises(IndexLoadError, match="corrupt"):
        ItemIndex.load(path)
