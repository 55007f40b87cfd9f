"""Lessons 01, 02 and 03's stored runs: docs/<experiment>.json keeps every run's per-item scores on
three seeds, and the table in docs/experiments.md is what that JSON prints, intervals included."""

import pytest

from sft_helpers.course import experiments
from sft_helpers.course.data import load_split


@pytest.mark.parametrize("name, n_test", [("masking", None), ("finetune", None), ("echo", None), ("run-on", 120)])
def test_the_stored_table_is_what_its_runs_print(name, n_test):
    results = experiments.load_stored(name)
    text = (experiments.DOCS / "experiments.md").read_text(encoding="utf-8")
    block = text[text.index(f"<!-- {name}:start -->"):text.index(f"<!-- {name}:end -->")]
    _, _, tables = experiments.STORED[name]
    assert tables(results) in block
    assert len(results["seeds"]) >= 3
    n_test = n_test or len(load_split("test"))  # None: the whole test split
    for runs in results["runs"].values():
        assert len(runs) == len(results["seeds"])
        for run in runs:
            assert len(run["exact_items"]) == n_test  # the whole test split, per item
            assert sum(run["exact_items"]) / n_test == pytest.approx(run["exact"])


def test_a_seeds_table_puts_each_difference_and_its_interval_beside_the_values():
    """Three seeds of 40 items: "better" answers 30 right where "reference" answers 10, and its loss
    is lower on every seed; its Δ cells say so, the reference's own are empty."""
    def run(right: int, loss: float) -> dict:
        items = [1] * right + [0] * (40 - right)
        return {"exact_items": items, "exact": right / 40, "val_loss": loss, "config": "(none)"}

    runs = {"reference": [run(10, 2.0), run(11, 2.1), run(9, 2.2)],
            "better": [run(30, 1.0), run(29, 1.2), run(31, 1.1)]}
    columns = [("exact", "exact", "{:.0%}", "exact"), ("loss", "val_loss", "{:.1f}", "val_loss")]
    head, _, ref, better = experiments.seeds_table(runs, "reference", columns)
    assert head == "| run | exact | Δ exact | loss | Δ loss | config |"
    assert ref == "| reference | 25% / 28% / 22% |  | 2.0 / 2.1 / 2.2 |  | (none) |"
    cells = [c.strip() for c in better.split("|")[1:-1]]
    assert cells[1] == "75% / 72% / 78%"
    assert cells[2].startswith("+50.0 pts (+") and cells[4].startswith("-1.00 (-")
    low, high = cells[4][cells[4].index("(") + 1:-1].split(" to ")
    assert float(low) < -1.0 < float(high) < 0  # the t interval over three seeds, all below 0
