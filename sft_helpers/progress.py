"""Progress bars that honour `TQDM_DISABLE` everywhere, notebooks included.

`tqdm.notebook` ignores the `TQDM_DISABLE` environment variable (it passes `disable=False` itself),
so the package's bars go through `progress_bar`. `sft-course run` and the test suite set it, so the
stored notebook outputs hold results, not bars; learners running a notebook see the bars.
"""

from __future__ import annotations

import os


def progress_disabled() -> bool:
    """Whether progress bars are switched off (`TQDM_DISABLE=1`)."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def progress_bar(iterable=None, disable: bool = False, **kwargs):
    """`tqdm.auto.tqdm`, off when `disable` or `TQDM_DISABLE` says so."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=disable or progress_disabled(), **kwargs)
