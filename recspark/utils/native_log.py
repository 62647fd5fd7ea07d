"""TensorFlow's native start-up lines, kept out of a quiet run's output.

Importing TensorFlow 2.21 on a machine without a GPU writes, from C++ before absl's logging is set
up, "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", an
INFO line that no CUDA driver was found, an ERROR line that cuInit failed, and (twice) an INFO line
that oneDNN custom operations are on, in the driver and in every Horovod rank (there prefixed
``[0]<stderr>:``). ``TF_CPP_MIN_LOG_LEVEL`` does not reach them: they are written before absl reads
any setting. On a CPU machine they are not errors, and a user
reading ``make run`` takes them for failures.

:func:`import_tensorflow` imports TensorFlow and lists its devices (the step that tries CUDA) with
the process's stderr file descriptor pointed at a temporary file, then writes back every captured
line except those four kinds: anything else (a real error, a Python warning) still shows. Only
when ``TF_CPP_MIN_LOG_LEVEL`` asks for warnings and errors only (2 or more, what a run without
``--verbose`` sets, recspark.session.set_log_level); otherwise nothing is filtered.
"""
from __future__ import annotations

import os
import sys
import tempfile

# Substrings of the start-up lines dropped (each only ever printed by TensorFlow's start-up).
START_UP_LINES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "cudart_stub.cc",  # "Could not find cuda drivers on your machine, GPU will not be used."
    "failed call to cuInit",
    # port.cc, on every CPU with oneDNN: "oneDNN custom operations are on. You may see slightly different
    # numerical results ..." (an INFO line about numerics, printed twice per process while importing).
    "oneDNN custom operations are on",
)


def quiet_start() -> bool:
    """Whether the start-up lines are dropped: TF_CPP_MIN_LOG_LEVEL of 2 or more."""
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip()
    return level.isdigit() and int(level) >= 2


def filtered(text: str) -> str:
    """``text`` without the lines that carry a start-up notice."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not any(marker in line for marker in START_UP_LINES))


def import_tensorflow() -> None:
    """Imports TensorFlow (and lists its devices) with its start-up lines filtered, once per process."""
    if "tensorflow" in sys.modules or not quiet_start():
        import tensorflow as tf  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # where the cuInit attempt happens
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = filtered(sink.read().decode("utf-8", errors="replace"))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
