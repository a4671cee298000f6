"""A SparkSession with Delta Lake, built the same way on a laptop and in a SparkApplication pod.

Locally the Delta jars come from the cache `make setup` fills (no Ivy resolution at every start); in the Spark image
they are already on the classpath, so nothing is added. S3/MinIO lakes get the s3a settings from the environment.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from kuberec.errors import KuberecError
from kuberec.settings import Settings, load_settings

log = logging.getLogger(__name__)

DELTA_VERSION = "4.0.1"
DELTA_JARS = (f"delta-spark_2.13-{DELTA_VERSION}.jar", f"delta-storage-{DELTA_VERSION}.jar")


class SparkSetupError(KuberecError):
    """Spark cannot start with Delta Lake: jars missing or misconfigured."""


def delta_jars(settings: Settings) -> list[Path]:
    """The cached Delta jars, or [] when the classpath already has them (Spark image)."""
    if os.environ.get("KUBEREC_DELTA_ON_CLASSPATH") == "1":
        return []
    jars = [settings.jars_dir / name for name in DELTA_JARS]
    missing = [str(j) for j in jars if not j.exists()]
    if missing:
        raise SparkSetupError(f"Delta Lake jars not found: {', '.join(missing)}. Run `make setup` "
                              f"(it copies io.delta:delta-spark_2.13:{DELTA_VERSION} into {settings.jars_dir}).")
    return jars


def spark_session(settings: Settings | None = None, app_name: str = "kuberec"):
    """Get or create the SparkSession for `settings` (Delta catalog and extensions on)."""
    from pyspark.sql import SparkSession

    settings = settings or load_settings()
    # Workers must run this interpreter, not whatever `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
        # Deletion vectors would make a snapshot's files carry rows that are deleted; kuberec's readers
        # (Petastorm, delta-rs file lists) read whole files, so keep them off for new tables.
        .config("spark.databricks.delta.properties.defaults.enableDeletionVectors", "false")
        .config("spark.databricks.delta.properties.defaults.enableChangeDataFeed", "true")
    )
    # Under spark-submit (a SparkApplication's driver) the JVM already holds master and resources; setting them
    # here would override the operator's. PYSPARK_GATEWAY_PORT is how spark-submit hands Python its JVM.
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        builder = builder.master(settings.spark_master)
        builder = builder.config("spark.driver.memory", os.environ.get("KUBEREC_SPARK_DRIVER_MEMORY", "4g"))
        builder = builder.config("spark.sql.shuffle.partitions",
                                 os.environ.get("KUBEREC_SPARK_SHUFFLE_PARTITIONS", "8"))
        builder = builder.config("spark.local.dir", str(settings.cache_dir / "spark-tmp"))
        builder = builder.config("spark.sql.warehouse.dir", str(settings.cache_dir / "spark-warehouse"))
        builder = builder.config("spark.driver.extraJavaOptions", f"-Dderby.system.home={settings.cache_dir}")
    jars = delta_jars(settings)
    if jars:
        builder = builder.config("spark.jars", ",".join(str(j) for j in jars))
    if settings.lake_uri.startswith(("s3://", "s3a://")):
        builder = _with_s3(builder, settings)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("KUBEREC_SPARK_LOG_LEVEL", "WARN"))
    return spark


def _with_s3(builder, settings: Settings):
    """s3a settings for MinIO/S3 lakes; credentials come from the standard AWS variables (a Secret in-cluster)."""
    conf = {
        "spark.hadoop.fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        "spark.hadoop.fs.s3a.aws.credentials.provider":
            "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
    }
    if settings.s3_endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = settings.s3_endpoint
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
    for key, value in conf.items():
        builder = builder.config(key, value)
    return builder
