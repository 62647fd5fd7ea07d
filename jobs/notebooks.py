"""Executes the notebooks of ``notebooks/`` headless on a finished run (``make notebooks``): each gets
the same ``--conf-file`` / ``--set`` as the jobs, and its executed copy, plots included, goes to
``reports/<dataset>/notebooks/``.

    python jobs/notebooks.py --conf-file conf/local.yaml --conf-file conf/datasets/completejourney.yaml
"""
import time
from pathlib import Path

from recspark.notebooks import execute
from recspark.utils.jobs import job_parser, parse_job_args, short_duration

def main() -> None:
    config, args = parse_job_args(job_parser(__doc__.splitlines()[0]))
    start = time.monotonic()
    # Relative paths (configuration files, the lakehouse) mean what they mean to the jobs: from here.
    written = execute(args.conf_file, args.overrides, (config.reports_dir / "notebooks").resolve(), cwd=Path.cwd())
    print(f"== recspark notebooks done in {short_duration(time.monotonic() - start)}: "
          + ", ".join(str(path) for path in written), flush=True)


if __name__ == "__main__":
    main()
