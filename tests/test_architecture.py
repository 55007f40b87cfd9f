"""One house: the library never imports the course, no import cycles (import-linter contracts in
pyproject.toml), a public API, and the README's script example runs."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).parent / "lint-imports")


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_import_contracts_are_kept():
    run = lint(ROOT)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "The library never imports the course KEPT" in run.stdout
    assert "0 broken" in run.stdout


def lint_with(tmp_path: Path, module: str, added_import: str) -> subprocess.CompletedProcess:
    """`lint-imports` on a copy of the package where `module` gains one function-level import."""
    shutil.copytree(ROOT / "sft_helpers", tmp_path / "sft_helpers",
                    ignore=shutil.ignore_patterns("__pycache__", "configs"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "sft_helpers" / f"{module}.py"
    path.write_text(path.read_text() + f"\n\ndef _added():\n    {added_import}  # noqa\n")
    return lint(tmp_path)


def test_a_library_module_importing_the_course_breaks_the_contract(tmp_path):
    run = lint_with(tmp_path, "packing", "from .course import world")
    assert run.returncode == 1, run.stdout[-3000:]
    assert "The library never imports the course BROKEN" in run.stdout
    assert "sft_helpers.packing -> sft_helpers.course.world" in run.stdout


def test_a_cycle_breaks_the_layers(tmp_path):
    run = lint_with(tmp_path, "masking", "from .collators import PackedCollator")
    assert run.returncode == 1 and "sft_helpers.masking is not allowed to import sft_helpers.collators" in run.stdout


def test_public_api_without_the_course():
    code = ("import sys\nfrom sft_helpers import build_labels, train_sft, PackedCollator, pack_examples\n"
            "import sft_helpers\nassert all(hasattr(sft_helpers, n) for n in sft_helpers.__all__)\n"
            "print(sorted(m for m in sys.modules if m.startswith('sft_helpers.course')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]", "importing the library loaded course modules"


def test_readme_script_example_runs(run_readme_example, tmp_path):
    run = run_readme_example("## Use it in your own script")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "loaded 20, skipped 0" in run.stdout
    assert (tmp_path / "runs" / "qlora" / "adapter").is_dir()
