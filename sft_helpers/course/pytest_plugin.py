"""Loaded by pytest (`-p sft_helpers.course.pytest_plugin` in pyproject.toml) before any notebook kernel starts.

Progress bars are switched off for the notebooks nbval runs (their text would never match the stored
outputs), and the hub is made unreachable so that nothing in the suite can download weights or data.
"""

import os

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' own bars (loading weights)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
