"""Helpers shared by the benchmarks in bench/: the run's header, the load average, stopping cleanly.

The benchmarks run as scripts (``python bench/<name>.py``), so this directory is on ``sys.path``
and they import this module as ``_common``.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
MB = 2**20


def load_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {when}: {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min; {os.cpu_count()} cores)"


def print_header(title: str) -> None:
    """What a reader needs to judge the numbers: when, which commit, how big the machine, how busy."""
    print(f"{title} at {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    print(f"commit {commit.stdout.strip()}; {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; "
          f"{shutil.disk_usage(tempfile.gettempdir()).free / 2**30:.0f} GiB free in {tempfile.gettempdir()}")
    print(load_line("before"), flush=True)


class Interrupted(Exception):
    pass


def _interrupt(signum, frame) -> None:
    # timeout(1) signals this process and then its whole process group: only the first one counts.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


def raise_on_termination() -> None:
    """SIGTERM and SIGINT raise :class:`Interrupted`, so ``finally`` blocks clean up and partial results print."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
