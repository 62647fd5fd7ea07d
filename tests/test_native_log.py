"""TensorFlow's native start-up lines: dropped from a quiet run's stderr, shown otherwise, and no
other line is lost (recspark.utils.native_log)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recspark.utils.native_log import START_UP_LINES, filtered

ROOT = Path(__file__).resolve().parents[1]


def _import_models(level: str) -> str:
    """stderr of a fresh process that imports recspark.models and runs one TensorFlow op."""
    code = "import recspark.models, tensorflow as tf; tf.reduce_sum(tf.ones([2])).numpy()"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": level, "TF_USE_LEGACY_KERAS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stderr


@pytest.mark.parametrize("level, shown", [("0", True), ("2", False)])
def test_start_up_lines_only_without_a_quiet_level(level: str, shown: bool) -> None:
    stderr = _import_models(level)
    assert any(marker in stderr for marker in START_UP_LINES) == shown, stderr[-3000:]
    if not shown:  # every native INFO line of the start-up (I0000 ...), whatever its text, stays out
        assert not [line for line in stderr.splitlines() if line.startswith("I0000")], stderr[-3000:]


def test_other_lines_are_kept() -> None:
    text = ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            "I0000 00:00:1.5 1 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n"
            "Traceback (most recent call last):\n"
            "E0000 00:00:2.5 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
            "I0000 00:00:3.5 1 port.cc:153] oneDNN custom operations are on. You may see slightly different\n"
            "UserWarning: something real")
    assert filtered(text) == "Traceback (most recent call last):\nUserWarning: something real"
