"""The catalog pipeline: Fashion-MNIST verified and ingested into the Delta catalog table."""

from kfp import dsl

from components import configure_for_cluster
from components.catalog import ingest_fashion_mnist


@dsl.pipeline(name="kuberec-catalog", description="Fashion-MNIST -> Delta catalog table (Spark)")
def catalog_pipeline(max_per_split: int = 0) -> str:
    """Ingest Fashion-MNIST into the catalog table.

    Args:
        max_per_split: images ingested per split; 0 = all.
    """
    ingest = configure_for_cluster(ingest_fashion_mnist(max_per_split=max_per_split))
    return ingest.outputs["table_uri"]
