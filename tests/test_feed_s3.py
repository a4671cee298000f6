"""The feed reads snapshot files from object storage with pyarrow's S3 client (what training pods do with an s3://
lake), against moto's S3 server over real HTTP (a fake S3: no MinIO binary in `make test`; `make cluster-smoke`
trains from MinIO)."""

from __future__ import annotations

import numpy as np
import pytest

from kuberec.lake import feed

pytestmark = pytest.mark.timeout(120)


def test_reader_reads_s3_files_without_s3fs(s3_server, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    for name, value in {"KUBEREC_S3_ENDPOINT": s3_server.endpoint, "AWS_ACCESS_KEY_ID": "k",
                        "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    s3 = s3_server.client("k", "s")
    s3.create_bucket(Bucket="lake")
    images = [bytes([i]) * (28 * 28) for i in range(6)]
    table = pa.table({"item_id": pa.array(range(6), pa.int64()), "label": pa.array([1, 2, 3, 4, 5, 6], pa.int32()),
                      "image": pa.array(images, pa.binary())})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    s3.put_object(Bucket="lake", Key="t/split=train/part-0.parquet", Body=sink.getvalue().to_pybytes())
    with feed._reader(["s3://lake/t/split=train/part-0.parquet"], 0, 1, num_epochs=1, shuffle=False,
                      seed=None) as reader:
        ids = np.concatenate([batch.item_id for batch in reader])
    assert sorted(ids.tolist()) == list(range(6))
