"""The SparkApplication entrypoint under a real spark-submit: the operator's driver runs
`spark-submit <mainApplicationFile> <module> <args>`; here the same launcher file runs a module that opens
kuberec's Spark session (which must take the JVM spark-submit started, with Delta on its classpath as in the
Spark image) and writes a Delta table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kuberec.backends import run_module
from kuberec.lake.spark import DELTA_JARS

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KUBEREC_CACHE", REPO / ".kuberec" / "cache")).absolute()

PROBE = """
import json, sys
from kuberec.lake.spark import spark_session
from kuberec.settings import load_settings

if __name__ == "__main__":
    out, table = sys.argv[1], sys.argv[2]
    spark = spark_session(load_settings())
    spark.range(5).write.format("delta").save(table)
    conf = spark.sparkContext.getConf()
    json.dump({"rows": spark.read.format("delta").load(table).count(), "master": conf.get("spark.master")},
              open(out, "w"))
"""


@pytest.mark.slow
def test_launcher_runs_module_under_spark_submit(tmp_path):
    jars = [CACHE / "jars" / name for name in DELTA_JARS]
    if not all(jar.exists() for jar in jars):
        pytest.skip("Delta jars not in the cache: run `make setup`")
    (tmp_path / "probe_module.py").write_text(PROBE)
    out, table = tmp_path / "out.json", tmp_path / "table"
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "KUBEREC_HOME": str(tmp_path / "home"),
           "KUBEREC_CACHE": str(CACHE),
           # As in the Spark image: the jars are on the classpath already, kuberec must not add them.
           "KUBEREC_DELTA_ON_CLASSPATH": "1"}
    subprocess.run([str(spark_submit), "--master", "local[1]", "--conf",
                    "spark.ui.enabled=false", "--jars", ",".join(map(str, jars)),
                    run_module.__file__, "probe_module", str(out), str(table)],
                   env=env, check=True, timeout=300, capture_output=True)
    result = json.loads(out.read_text())
    # The master is spark-submit's (the operator's), not kuberec's local default.
    assert result == {"rows": 5, "master": "local[1]"}
    assert (table / "_delta_log").is_dir()
