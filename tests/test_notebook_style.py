"""What every lesson notebook carries: objectives, self-checking exercises with collapsed solutions,
code lines a reader can see (<= 100 characters), no machine paths in its outputs and no timestamps."""

import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted(Path(__file__).resolve().parents[1].joinpath("notebooks").glob("0*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_lines_fit_100_columns(path):
    nb = nbformat.read(path, 4)
    long = [(i, line) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for line in c.source.splitlines() if len(line) > 100]
    assert not long, f"{path.name}: {len(long)} code lines over 100 characters, first: cell {long[0][0]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_objectives_and_exercises(path):
    nb = nbformat.read(path, 4)
    assert "**You will learn to**" in nb.cells[1].source, f"{path.name}: no learning objectives at the top"
    exercises = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("**Exercise")]
    assert 2 <= len(exercises) <= 3, f"{path.name}: {len(exercises)} exercises"
    for i in exercises:
        attempt, solution = nb.cells[i + 1], nb.cells[i + 2]
        assert re.search(r"\bcheck_\w+\(", attempt.source), f"{path.name} cell {i + 1}: no check call"
        assert re.search(r"verdict = check_\w+\(", solution.source) and "assert verdict" in solution.source, \
            f"{path.name} cell {i + 2}: the solution is not checked"
        assert solution.metadata.get("jupyter", {}).get("source_hidden"), f"{path.name} cell {i + 2}: not collapsed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_carry_no_machine_paths_or_addresses(path):
    nb = nbformat.read(path, 4)
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    for pattern in (r"/work/", r"/home/\w+", r"/tmp/\w", r"0x[0-9a-f]{8,}"):
        assert not re.search(pattern, text), f"{path.name}: output matches {pattern}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_execution_timestamps(path):
    nb = nbformat.read(path, 4)
    timed = [i for i, c in enumerate(nb.cells) if "execution" in c.metadata]
    assert not timed, f"{path.name}: cells {timed} carry execution timestamps (run with `sft-course run`)"
