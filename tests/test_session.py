"""The jobs run under spark-submit too: the session then takes spark-submit's master and jars."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from recspark.session import delta_jars

ROOT = Path(__file__).resolve().parent.parent


def test_a_job_runs_under_spark_submit_with_delta(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TF_USE_LEGACY_KERAS": "1"}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    result = subprocess.run(
        [str(bin_dir / "spark-submit"), "--master", "local[1]", "--jars", ",".join(delta_jars()),
         "--conf", "spark.ui.enabled=false", str(ROOT / "jobs" / "summary.py"),
         "--conf-file", str(ROOT / "conf" / "local.yaml"), "--set", f"paths.lakehouse={tmp_path}",
         "--set", f"paths.reports={tmp_path}/reports", "--set", "spark.master=local[2]"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # spark-submit's --master wins over the configuration's spark.master.
    assert "== recspark summary (completejourney) done in" in result.stdout
    assert "s on local[1]" in result.stdout
