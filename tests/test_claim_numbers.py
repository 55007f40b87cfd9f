"""Text = outputs: every number a lesson's prose states is printed by that notebook.

A number in a markdown cell (0.82, 18%, 3×, 1e-3, 2,400; integers from 10 up) must appear in an
output or the code of the same notebook, at the precision the text gives it (text 0.82 matches an
output 0.8213, text 18% an output 18.4% or 0.184), or be a figure the lesson quotes from outside,
listed in `QUOTED` with its source. Numbers in code spans, link targets, heading and list numbering are
not prose claims. Single-digit integers are left out ("two seeds", "step 5"): too common to tell apart.
"""

import json
import math
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted(Path(__file__).resolve().parents[1].joinpath("notebooks").glob("0*.ipynb"))

# figures the lessons quote from outside, with their source (number as written -> where it comes from)
GUIDE_LR = "the guide, section 2: full fine-tuning 5e-6 to 5e-5, LoRA 1e-4 to 3e-4"
QUOTED = {
    "01_masking": {"5e-6": GUIDE_LR, "5e-5": GUIDE_LR},
    "02_packing": {"1,000": "TRL packs within `datasets.map` batches of 1,000 examples (trl/data_utils.py)"},
    "03_qlora": {"64": "QLoRA paper (Dettmers et al. 2023): r=64, alpha=16, dropout 0.1",
                 "2e-4": GUIDE_LR, "2e-5": GUIDE_LR},
    "04_troubleshooting": {"5e-6": GUIDE_LR, "5e-5": GUIDE_LR},
    "05_hyperparameters": {"5e-6": GUIDE_LR, "5e-5": GUIDE_LR, "1e-4": GUIDE_LR, "3e-4": GUIDE_LR,
                           "64": "the guide, section 2: effective batch 64-512", "512": "the guide: batch 64-512",
                           "0.01": "the guide: weight decay 0.01-0.1", "0.1": "the guide: weight decay, dropout 0.1",
                           "10×": "LoRA Without Regret (Schulman et al. 2025): LoRA's best rate ~10× full's",
                           "2024": "transformers' gradient-accumulation loss fix (v4.46, October 2024)"},
    "06_data_strategy": {"100": "the guide, section 5: 100k+ low-quality samples"},
}

NUMBER = re.compile(r"(?<![\w.\-/])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?(?:e-?\d+)?)(\s?%|×)?(?!\w)")
PRINTED = re.compile(r"(?<![\w.])(-?\d{1,3}(?:,\d{3})+|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)(\s?%)?")


def prose(markdown: str) -> str:
    """The markdown's sentences: code blocks and spans, link targets, HTML tags, heading and list
    numbers removed."""
    for pattern, by, flags in ((r"```.*?```", " ", re.S), (r"`[^`]*`", " ", 0), (r"\]\([^)]*\)", "]", 0),
                               (r"<[^>]+>", " ", 0), (r"^#+\s*\d+(\.\d+)*\.?", "#", re.M),
                               (r"^\s*\d+\.\s", " ", re.M)):
        markdown = re.sub(pattern, by, markdown, flags=flags)
    return markdown


def stated_numbers(markdown: str) -> list[tuple[str, float, int | None, str]]:
    """(as written, value, decimals or None for 1e-3 style, unit) of every number the prose states."""
    found = []
    for m in NUMBER.finditer(prose(markdown)):
        raw, unit = m.group(1), (m.group(2) or "").strip()
        if not unit and "." not in raw and "e" not in raw and int(raw.replace(",", "")) < 10:
            continue
        decimals = None if "e" in raw else len(raw.split(".")[1]) if "." in raw else 0
        found.append((m.group(0).strip(), float(raw.replace(",", "")), decimals, unit))
    return found


def printed_numbers(nb: dict) -> list[tuple[float, bool]]:
    """(value, is a percentage) of every number in the notebook's code and outputs."""
    parts = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        parts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            for text in (out.get("text"), out.get("data", {}).get("text/plain"), out.get("data", {}).get("text/html")):
                parts.append("".join(text) if isinstance(text, list) else text or "")
    return [(float(m.group(1).replace(",", "")), bool(m.group(2))) for m in PRINTED.finditer("\n".join(parts))]


def is_printed(value: float, decimals: int | None, unit: str, printed: list[tuple[float, bool]]) -> bool:
    """Whether some printed number reads as `value` at the text's precision (a percentage may be
    printed as a fraction)."""
    for number, percent in printed:
        shown = number if percent or unit != "%" else number * 100
        if decimals is None:
            if math.isclose(shown, value, rel_tol=1e-9):
                return True
        elif abs(shown - value) <= 0.5 * 10 ** -decimals + 1e-9:
            return True
    return False


def not_printed(markdown: str, printed: list[tuple[float, bool]], quoted=()) -> list[str]:
    """Each number `markdown` states that no `printed` number reads as, and that is not `quoted`."""
    return [written for written, value, decimals, unit in stated_numbers(markdown)
            if written not in quoted and not is_printed(value, decimals, unit, printed)]


def unprinted(path: Path) -> list[str]:
    """'cell N: number' for every number of the notebook's prose that it does not print or quote."""
    nb = json.loads(path.read_text())
    printed, quoted = printed_numbers(nb), QUOTED.get(path.stem, {})
    return [f"cell {i}: {written}" for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "markdown"
            for written in not_printed("".join(cell["source"]), printed, quoted)]


def test_stated_numbers_are_read_as_written():
    text = "Loss 0.82 vs `lr=3e-3`, 18% of 2,400 (see [2](x.md#3)); 3× faster at 1e-3; two seeds, 5 steps."
    assert [(w, v, d, u) for w, v, d, u in stated_numbers(text)] == [
        ("0.82", 0.82, 2, ""), ("18%", 18.0, 0, "%"), ("2,400", 2400.0, 0, ""), ("3×", 3.0, 0, "×"),
        ("1e-3", 0.001, None, "")]


def test_a_number_is_printed_when_an_output_rounds_to_it():
    printed = printed_numbers({"cells": [{"cell_type": "code", "source": "x", "outputs": [
        {"text": "val loss 0.8213, exact 0.184, stop 97.6%, lr 0.001"}]}]})
    assert is_printed(0.82, 2, "", printed) and is_printed(18, 0, "%", printed) and is_printed(98, 0, "%", printed)
    assert is_printed(0.001, None, "", printed)
    assert not is_printed(0.83, 2, "", printed) and not is_printed(19, 0, "%", printed)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_number_in_the_text_is_printed_by_the_notebook(path):
    missing = unprinted(path)
    assert not missing, (f"{path.name}: {len(missing)} numbers in the text that no cell prints "
                         f"(print them, change the text, or quote the source in QUOTED): {missing}")


def docs_section(heading: str) -> str:
    """The section of docs/experiments.md under `## heading`, up to the next `## ` heading, its dates
    (2026-12-07) left out."""
    text = Path(__file__).resolve().parents[1].joinpath("docs", "experiments.md").read_text(encoding="utf-8")
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return re.sub(r"\d{4}-\d{2}-\d{2}", " ", text[start:end if end > 0 else None])


def test_the_docs_table_of_lesson_04_is_printed_by_notebook_04():
    # lesson 04's runs are live (no stored JSON writes its docs section): every number there must
    # still be an output of the notebook, or the table has drifted from the lesson
    nb = json.loads(next(p for p in NOTEBOOKS if p.stem.startswith("04_")).read_text())
    section, printed = docs_section("Lesson 04"), printed_numbers(nb)
    assert len(stated_numbers(section)) > 50, "the lesson 04 section lost its table"
    missing = not_printed(section, printed)
    assert not missing, f"docs/experiments.md, lesson 04: numbers notebook 04 no longer prints: {missing}"
