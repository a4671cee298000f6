"""Components for the catalog table (Fashion-MNIST + catalog growth)."""

from typing import NamedTuple

from components import component


@component
def ingest_fashion_mnist(max_per_split: int) -> NamedTuple("CatalogTable", table_uri=str, table_version=int):
    """Verify Fashion-MNIST and MERGE it into the Delta catalog table (Spark job); 0 = all images."""
    from collections import namedtuple

    from kuberec.ingest import steps

    table = steps.ingest_fashion_mnist(max_per_split=max_per_split or None)
    return namedtuple("CatalogTable", ["table_uri", "table_version"])(table.uri, table.version)
