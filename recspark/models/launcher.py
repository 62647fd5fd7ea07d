"""Launching Horovod's ranks, and naming the one that failed.

:func:`horovod_launcher`: Databricks' ``sparkdl.HorovodRunner`` when present, otherwise
``horovod.spark.run``; :func:`rank_failure` turns a dead process into a :class:`RankFailedError`
with its rank and signal.
"""
from __future__ import annotations

import os
import re
import time
from typing import Callable, Optional

# What a rank raises when another rank died under it (Horovod shuts down on every rank).
_PEER_SHUTDOWN = "Horovod has been shut down"
# horovod.spark.run learns a rank's exit by polling its task about once a second, and reports the
# earliest exit as the failed process; a rank that only saw its peer die waits longer than that, so
# the report names the rank that died first (a SIGKILL, an OOM kill) instead of the bystander.
PEER_FAILURE_GRACE_S = 10.0


def _bystanders_exit_last(fn: Callable) -> Callable:
    """``fn``, except that a rank failing only because a peer died delays its exit (see above)."""
    def rank_fn(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as error:
            if _PEER_SHUTDOWN in str(error):
                time.sleep(PEER_FAILURE_GRACE_S)
            raise
    return rank_fn


# --------------------------------------------------------------------------------------------------
# The launcher and its failures
# --------------------------------------------------------------------------------------------------

def horovod_launcher() -> tuple[str, Callable[..., list]]:
    """``("HorovodRunner", run)`` on Databricks (sparkdl importable), else ``("horovod.spark.run", run)``.

    Both return ``run(fn, kwargs, num_proc, env)`` -> the ranks' return values in rank order (on
    HorovodRunner only rank 0's value exists: it returns a one-element list).
    """
    try:
        from sparkdl import HorovodRunner  # type: ignore[import-not-found]
    except ImportError:
        HorovodRunner = None
    if HorovodRunner is not None:
        def run_databricks(fn: Callable, kwargs: dict, num_proc: int, env: dict) -> list:
            os.environ.update(env)  # HorovodRunner has no env argument; its processes inherit the driver's
            return [HorovodRunner(np=num_proc).run(_bystanders_exit_last(fn), **kwargs)]
        return "HorovodRunner", run_databricks

    def run_spark(fn: Callable, kwargs: dict, num_proc: int, env: dict) -> list:
        import sys

        import horovod.spark

        from recspark.session import logs_warnings

        # verbose=1 prints every rank's launch command (a long pickled blob) and Horovod's info
        # lines: only with --verbose. A failed rank is reported either way.
        return horovod.spark.run(_bystanders_exit_last(fn), kwargs=kwargs, num_proc=num_proc, env=env,
                                 stdout=sys.stdout, stderr=sys.stderr, verbose=1 if logs_warnings() else 0)
    return "horovod.spark.run", run_spark


class RankFailedError(RuntimeError):
    """A Horovod process died; ``rank`` is the first one that exited (None when unknown)."""

    def __init__(self, message: str, rank: Optional[int], exit_code: Optional[int]) -> None:
        super().__init__(message)
        self.rank = rank
        self.exit_code = exit_code


# horovod.runner.gloo_run.launch_gloo reports the first process to exit non-zero by its slot index,
# which is its rank (slots are allocated in rank order).
_GLOO_FAILURE = re.compile(r"Process name:\s*(\d+)\s*\n\s*Exit code:\s*(-?\d+)")


def rank_failure(error: BaseException) -> RankFailedError:
    """Turns Horovod's launcher error into a :class:`RankFailedError` naming the failed rank."""
    match = _GLOO_FAILURE.search(str(error))
    rank, code = (int(match.group(1)), int(match.group(2))) if match else (None, None)
    signal_name = ""
    if code is not None and (code < 0 or code > 128):
        import signal

        number = -code if code < 0 else code - 128
        try:
            signal_name = f" ({signal.Signals(number).name})"
        except ValueError:
            pass
    who = f"Horovod rank {rank}" if rank is not None else "A Horovod process (rank unknown)"
    message = (f"{who} failed with exit code {code}{signal_name}; the run can be resumed from its last "
               f"epoch checkpoint (train.resume=true). Horovod said: {str(error).strip()}")
    return RankFailedError(message, rank, code)
