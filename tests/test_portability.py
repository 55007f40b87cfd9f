"""Notebook checks that survive another CPU: numbers within their measured spread pass, everything
else (data-side numbers, words, numbers outside their tolerance) is still compared exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from sft_helpers.course.portability import (
    compare_runs,
    print_unit,
    snap,
    split_numbers,
    stale_spread,
    tolerance,
    too_precise,
    write_spreads,
)

ROOT = Path(__file__).resolve().parents[1]


def test_numbers_are_split_from_words():
    skeleton, numbers = split_numbers("val loss 2.314 | 1,024 tokens, Qwen3 x86-64 3e-06 +18%")
    assert numbers == ["2.314", "1,024", "3e-06", "+18"]
    assert "Qwen3 x86-64 " in "".join(skeleton)


def test_tolerance_is_twice_the_spread_plus_a_printed_unit():
    assert print_unit("2.31") == pytest.approx(0.01) and print_unit("1,200") == 1
    assert print_unit("3e-06") == pytest.approx(1e-6) and print_unit("82") == 1
    assert tolerance("2.31", 0.02) == pytest.approx(0.05)
    assert tolerance("100", 0) == 0  # never moved: exact


def test_precision_rule():
    assert too_precise("17.64", 2.2) and not too_precise("18", 2.2) and not too_precise("82", 12)
    assert too_precise("2.31", 0.2) and not too_precise("2.3", 0.2) and not too_precise("2.31", 0.02)
    assert not too_precise("2.31", 0.001) and not too_precise("7", 0)


def test_snap_accepts_within_tolerance_only():
    assert snap("loss 2.33 after 100", "loss 2.31 after 100", [0.01, 0])[0] == "loss 2.31 after 100"
    assert snap("loss 2.40 after 100", "loss 2.31 after 100", [0.01, 0])[0] == "loss 2.40 after 100"
    # a data-side number (spread 0) is never snapped
    assert snap("loss 2.31 after 101", "loss 2.31 after 100", [0.01, 0])[0] == "loss 2.31 after 101"
    # other words: left alone, so the comparison fails and shows the difference
    assert snap("LOSS 2.31", "loss 2.31", [0.01])[0] == "LOSS 2.31"


def code_cell(source, text, spreads=None):
    cell = nbformat.v4.new_code_cell(source)
    cell.execution_count = 1
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    if spreads is not None:
        cell.metadata["spread"] = {"numbers": spreads, "settings": ["test"]}
    return cell


def notebook(path, *cells):
    nb = nbformat.v4.new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def run_nbval(path, **env):
    """The suite's notebook check (nbval + this project's plugin) on one notebook."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "sft_helpers.course.pytest_plugin",
         "--nbval", "--nbval-current-env", "--rootdir", str(path.parent), str(path)],
        capture_output=True, text=True, cwd=path.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env})  # this checkout's package


@pytest.fixture
def lesson(tmp_path):
    """A notebook printing a token count (data: exact) and a loss (spread 0.01: tolerance 0.03)."""
    return notebook(
        tmp_path / "00_lesson.ipynb",
        code_cell("import os\nprint(f\"{os.environ['TOKENS']} tokens\")", "100 tokens\n"),
        code_cell("print(f\"val loss {os.environ['LOSS']}\")", "val loss 1.23\n", spreads=[0.01]),
    )


def test_a_training_number_within_its_tolerance_passes(lesson):
    run = run_nbval(lesson, TOKENS="100", LOSS="1.25")
    assert run.returncode == 0, run.stdout[-2000:]


def test_a_training_number_outside_its_tolerance_fails(lesson):
    run = run_nbval(lesson, TOKENS="100", LOSS="1.30")
    assert run.returncode == 1 and "1.30" in run.stdout, run.stdout[-2000:]


def test_a_changed_data_side_number_fails(lesson):
    run = run_nbval(lesson, TOKENS="101", LOSS="1.23")
    assert run.returncode == 1 and "101 tokens" in run.stdout, run.stdout[-2000:]


def test_stale_spreads_fail_and_ask_for_a_new_measurement(tmp_path):
    path = notebook(tmp_path / "00_stale.ipynb", code_cell("print('val loss 1.23, 4')", "val loss 1.23, 4\n",
                                                            spreads=[0.01]))
    assert "prints 2 numbers" in stale_spread(nbformat.read(path, as_version=4).cells[0])
    run = run_nbval(path)
    assert run.returncode == 1 and "sft-course spread" in run.stdout, run.stdout[-2000:]


def test_spreads_are_measured_against_runs_and_written(tmp_path):
    stored = notebook(tmp_path / "00_lesson.ipynb",
                      code_cell("x", "100 tokens, loss 1.23\n"), code_cell("y", "words 3\n"))
    runs = tmp_path / "runs"
    for name, text in (("a", "100 tokens, loss 1.25\n"), ("b", "100 tokens, loss 1.20\n")):
        (runs / name).mkdir(parents=True)
        notebook(runs / name / "00_lesson.ipynb", code_cell("x", text), code_cell("y", "other words 3\n"))
    rows = compare_runs(nbformat.read(stored, as_version=4),
                        {n: nbformat.read(runs / n / "00_lesson.ipynb", as_version=4) for n in "ab"},
                        sanitize=lambda s: s)
    assert rows[0]["spreads"] == [0, pytest.approx(0.05)]
    assert rows[1]["differs"] == ["a", "b"]
    docs = tmp_path / "portability.md"
    assert write_spreads(tmp_path, {n: runs / n for n in "ab"}, docs) == 0
    cell = json.loads(stored.read_text())["cells"][0]
    assert cell["metadata"]["spread"]["numbers"] == [0, pytest.approx(0.05)]
    text = docs.read_text()
    assert "| 00_lesson | 0 |" in text and "text changed (not only numbers): cell 1 under a" in text
    # a second notebook measured later gets its own section; the first one's stays
    notebook(tmp_path / "01_next.ipynb", code_cell("z", "7 rows\n"))
    assert write_spreads(tmp_path, {n: runs / n for n in "ab"}, docs, only=["01"]) == 0
    text = docs.read_text()
    assert "| 00_lesson | 0 |" in text and "## 01_next" in text and text.count("spread-about:start") == 1


def course_cells():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        yield from ((path.name, i, c) for i, c in enumerate(nb.cells))


def test_every_stored_spread_fits_its_outputs():
    from sft_helpers.course.portability import load_sanitizer
    sanitize = load_sanitizer(ROOT / "tests" / "nbval_sanitize.cfg")
    stale = [f"{name} cell {i}: {why}" for name, i, c in course_cells()
             if c.cell_type == "code" and (why := stale_spread(c, sanitize))]
    assert not stale, stale


def test_no_notebook_prints_a_number_finer_than_its_spread():
    """A number that moves between machines is printed no finer than its spread's leading digit, in
    the outputs and wherever a markdown cell quotes it."""
    from sft_helpers.course.portability import cell_numbers, load_sanitizer
    sanitize = load_sanitizer(ROOT / "tests" / "nbval_sanitize.cfg")
    bad, moving = [], {}
    for name, i, cell in course_cells():
        spreads = cell.get("metadata", {}).get("spread", {}).get("numbers")
        if cell.cell_type != "code" or not spreads:
            continue
        for printed, spread in zip(cell_numbers(cell, sanitize)[1], spreads):
            if too_precise(printed, spread):
                bad.append(f"{name} cell {i}: {printed} (spread {spread:.3g})")
            if spread:
                moving.setdefault(name, {})[printed] = max(spread, moving.get(name, {}).get(printed, 0))
    for name, i, cell in course_cells():
        if cell.cell_type == "markdown":
            for printed in split_numbers(cell.source)[1]:
                spread = moving.get(name, {}).get(printed, 0)
                if too_precise(printed, spread):
                    bad.append(f"{name} markdown cell {i}: {printed} (spread {spread:.3g})")
    assert not bad, bad


def test_ci_portable_imitates_the_measured_setting():
    """`bash .ci/run portable` sets exactly the environment `sft-course spread` measured as one-thread."""
    from sft_helpers.course.portability import PORTABLE
    script = (ROOT / ".ci" / "run").read_text()
    block = script[script.index('= portable ]'):]
    exported = dict(kv.split("=") for kv in block.split("export ", 1)[1].splitlines()[0].split())
    assert exported == PORTABLE


def test_github_workflow_passes_actionlint_and_runs_the_quickstart():
    workflow = ROOT / ".github" / "workflows" / "ci.yml"
    lint = subprocess.run([str(Path(sys.executable).parent / "actionlint"), str(workflow)],
                          capture_output=True, text=True, cwd=ROOT)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    text = workflow.read_text()
    assert "run: bash .ci/run\n" in text and 'python-version: "3.11"' in text


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The lint check can fail: a job with no `runs-on` and an unknown expression is refused."""
    broken = tmp_path / ".github" / "workflows" / "ci.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text("on: push\njobs:\n  t:\n    steps:\n      - run: echo ${{ nope.x }}\n")
    lint = subprocess.run([str(Path(sys.executable).parent / "actionlint"), str(broken)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert lint.returncode == 1 and "runs-on" in lint.stdout


def test_a_column_that_shifts_with_a_wider_number_still_matches():
    """A right-aligned table moves its padding when a number gains a digit: that is no other text."""
    ref, test = "padded    9.99 |\nfull     12.00 |", "padded   10.01 |\nfull     12.00 |"
    assert snap(test, ref, [0.02, 0])[0] == ref
    # but padding alone, with every number the same, is still a difference
    assert snap("padded   9.99", "padded 9.99", [0.02])[0] == "padded   9.99"
    # and a data-side number that moved is not hidden by the padding rule
    assert snap("rows  101", "rows 100", [0])[0] == "rows  101"


def test_spreads_are_measured_at_the_printed_precision():
    """A run whose print carried more digits than the stored one counts at the stored precision."""
    stored = {"cells": [code_cell("x", "loss 13, then 4.7\n")]}
    run = {"cells": [code_cell("x", "loss 12.67, then 4.73\n")]}
    rows = compare_runs(stored, {"a": run}, sanitize=lambda s: s, observed={(0, 1): [4.49]})
    assert rows[0]["spreads"] == [0, pytest.approx(0.2)]


def test_a_cell_stored_as_two_stream_chunks_is_counted_once(tmp_path):
    """nbval merges consecutive stream outputs of the stored cell in place; the spreads are counted
    on the merged text, not twice (lesson 04 stores its overfit cell in two chunks)."""
    cell = code_cell("print('val loss', 1.23)\nprint('steps', 42)", "val loss 1.23\n", spreads=[0.01, 0])
    cell.outputs.append(nbformat.v4.new_output("stream", name="stdout", text="steps 42\n"))
    path = notebook(tmp_path / "00_chunks.ipynb", cell)
    run = run_nbval(path)
    assert run.returncode == 0, run.stdout[-2000:]
