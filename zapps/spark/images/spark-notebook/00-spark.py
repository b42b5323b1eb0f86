"""IPython startup of a Zoe Spark notebook: `spark` and `sc` on the execution's master.

Read from the environment the ZApp sets:
  SPARK_MASTER           spark://HOST:7077; unset: no session is made
  SPARK_EXECUTOR_MEMORY  heap of each executor, e.g. 512m (default 512m)
  SPARK_DRIVER_MEMORY    heap of this notebook's driver, e.g. 512m (default 512m)
  SPARK_EVENTLOG_DIR     where event logs go for a history server (unset: none)
"""

import os

_master = os.environ.get("SPARK_MASTER")
if _master:
    from pyspark.sql import SparkSession

    _builder = (
        SparkSession.builder.master(_master)
        .appName(os.environ.get("SPARK_APP_NAME", "zoe-notebook"))
        .config("spark.executor.memory", os.environ.get("SPARK_EXECUTOR_MEMORY", "512m"))
        .config("spark.driver.memory", os.environ.get("SPARK_DRIVER_MEMORY", "512m"))
    )
    _events = os.environ.get("SPARK_EVENTLOG_DIR")
    if _events and os.path.isdir(_events):
        _builder = _builder.config("spark.eventLog.enabled", "true").config(
            "spark.eventLog.dir", "file:" + _events
        )
    try:
        spark = _builder.getOrCreate()
        sc = spark.sparkContext
        print(f"spark: a SparkSession on {_master}; sc: its SparkContext")
    except Exception as _e:  # the kernel must start even when the cluster does not answer
        print(f"spark: no session on {_master}: {_e}")
