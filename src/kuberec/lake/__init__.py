"""The lake: a Spark session with Delta Lake configured, table locations, versions and diffs."""

from kuberec.lake.delta import (
    TableNotFoundError,
    rows_added_since,
    snapshot_files,
    table_version,
)
from kuberec.lake.spark import spark_session

__all__ = ["TableNotFoundError", "rows_added_since", "snapshot_files", "spark_session", "table_version"]
