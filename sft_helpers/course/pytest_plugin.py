"""Loaded by pytest (`-p sft_helpers.course.pytest_plugin` in pyproject.toml) before any notebook kernel starts.

Progress bars are switched off for the notebooks nbval runs (their text would never match the stored
outputs), and the hub is made unreachable so that nothing in the suite can download weights or data.

Strict nbval compares a cell's outputs with the stored ones. Where a cell's metadata carries the
measured spread of the numbers it prints (`sft_helpers.course.portability`, written by `sft-course spread`),
a new number within its tolerance of the stored one stands for it; the words, the layout and every
number that never moved are still compared exactly, and a cell whose spreads no longer fit its outputs
fails, asking for a new measurement.
"""

import os

from sft_helpers.course.portability import snap_outputs, stale_spread

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' own bars (loading weights)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def compare_within_spread(original):
    """Wrap nbval's `IPyNbCell.compare_outputs`: snap numbers within tolerance, then compare."""
    def compare_outputs(self, test, ref, skip_compare=None):
        # nbval's `ref` is the stored outputs coalesced (it may have merged them in place, so the
        # numbers are counted on `ref`, not on self.cell)
        stale = stale_spread({"metadata": self.cell.metadata, "outputs": ref}, self.sanitize)
        if stale:
            self.comparison_traceback = [stale]
            return False
        spreads = self.cell.metadata.get("spread", {}).get("numbers")
        if spreads:
            test = snap_outputs(test, ref, spreads, self.sanitize)
        return original(self, test, ref, skip_compare)
    return compare_outputs


def pytest_configure(config):
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:  # nbval not installed: nothing to compare
        return
    if not getattr(IPyNbCell.compare_outputs, "within_spread", False):
        IPyNbCell.compare_outputs = compare_within_spread(IPyNbCell.compare_outputs)
        IPyNbCell.compare_outputs.within_spread = True
