"""One pipeline: `recipe.run_sft` runs `sft-train` and every lesson's training run, and a row of
docs/experiments.md re-runs from the config it names."""

import ast
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# the only direct callers of train_sft besides run_sft: probes of one mechanism, not SFT runs
MECHANISM_PROBES = {
    ("sft_helpers/course/experiments.py", "update_share_by_precision"),  # one AdamW step, fp32 vs bf16
    ("sft_helpers/course/bench.py", "training_throughput"),  # collators' tokens/s
    ("sft_helpers/course/bench.py", "lane_run"),  # a few steps per attention / precision lane
}


def train_sft_callers(root: Path = ROOT) -> set[tuple[str, str]]:
    """(file, function) of every call of `train_sft` in the package and the notebooks' code."""
    callers = set()
    for path in sorted((root / "sft_helpers").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "train_sft":
                        callers.add((str(path.relative_to(root)), fn.name))
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        if any(c["cell_type"] == "code" and "train_sft(" in "".join(c["source"]) for c in cells):
            callers.add((str(nb.relative_to(root)), "<notebook>"))
    return callers


def test_every_training_run_goes_through_run_sft():
    callers = train_sft_callers()
    assert ("sft_helpers/recipe.py", "run_sft") in callers
    assert callers - MECHANISM_PROBES == {("sft_helpers/recipe.py", "run_sft")}, callers


def test_the_caller_check_sees_a_second_pipeline(tmp_path):
    """A copy of the package with a lesson function training by itself fails the check."""
    (tmp_path / "sft_helpers" / "course").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "sft_helpers" / "recipe.py").write_text("def run_sft():\n    train_sft()\n")
    (tmp_path / "sft_helpers" / "course" / "lesson.py").write_text("def my_run():\n    return train_sft(m)\n")
    assert ("sft_helpers/course/lesson.py", "my_run") in train_sft_callers(tmp_path)


def documented_row(section: str, row: str) -> list[str]:
    """The `sft-train` arguments docs/experiments.md gives for `row` of the table under `section`:
    the section's shared command plus the row's overrides."""
    text = (ROOT / "docs" / "experiments.md").read_text(encoding="utf-8")
    body = text[text.index(section):]
    command = re.search(r"Each row is `sft-train (.+?) --seed S`", body).group(1)
    line = next(ln for ln in body.splitlines() if ln.startswith(f"| {row} |"))
    overrides = re.findall(r"`([^`]*)`", line.rsplit("|", 2)[-2])
    return shlex.split(command) + (shlex.split(overrides[0]) if overrides else [])


def test_a_documented_row_reruns_with_sft_train(tmp_path, monkeypatch, one_thread):
    """Lesson 05's constant-schedule row, from the config docs/experiments.md names, on a tiny
    budget: `sft-train` (files, Arrow labels, columnar packing) trains the same steps as the course's
    `run_hp` (lists), to float noise, and answers the same test items alike."""
    from sft_helpers.course.hyperparameters import run_hp
    from sft_helpers.recipe import main

    args = documented_row("#### Schedule", "constant (5% warmup)")
    assert "--schedule" in args and "--lr" in args
    budget = ["--max_steps", "3", "--eval_steps", "3", "--max_train_examples", "48", "--max_eval_examples", "6"]
    monkeypatch.chdir(ROOT)  # the documented data paths are relative to the repository
    assert main(args + budget + ["--seed", "0", "--output_dir", str(tmp_path / "run")]) == 0
    logged = [json.loads(ln) for ln in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    scores = json.loads((tmp_path / "run" / "chat_eval.json").read_text())

    course = run_hp(schedule="constant_with_warmup", lr=3e-3, steps=3, n_train=48, eval_items=6, test_items=6)
    for key in ("loss", "eval_loss"):
        ours = [(h["step"], h[key]) for h in course["history"] if key in h]
        theirs = [(h["step"], h[key]) for h in logged if key in h]
        assert [s for s, _ in ours] == [s for s, _ in theirs] and len(ours) >= 2, key
        for (_, a), (_, b) in zip(ours, theirs):
            assert a == pytest.approx(b, rel=1e-5), key
    assert scores["exact_match"] == course["exact"]
