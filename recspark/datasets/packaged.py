"""Data sets shipped inside installed PyPI packages (Complete Journey, MovieLens-1M)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def package_data_dir(package: str, *parts: str) -> Path:
    """The folder of data files shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; run `make setup`")
    folder = Path(list(spec.submodule_search_locations)[0], *parts)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist in the installed {package!r}")
    return folder
