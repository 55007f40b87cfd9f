"""Where the package's data lives: the repo's `data/` (a clone or an editable install), the copy a
wheel carries as `sft_helpers/_data`, or `$SFT_DATA_DIR`."""

from __future__ import annotations

from pathlib import Path

_REPO_DATA = Path(__file__).resolve().parent.parent / "data"
DATA_DIR = _REPO_DATA if _REPO_DATA.is_dir() else Path(__file__).resolve().parent / "_data"


def data_path(name: str = "") -> Path:
    """Path of a file in the course's `data/` folder (the repo's, or `$SFT_DATA_DIR`)."""
    import os

    return Path(os.environ.get("SFT_DATA_DIR", DATA_DIR)) / name
