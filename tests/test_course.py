"""`sft-course run` executes notebooks in order and names the first failing cell."""

import subprocess
import sys

import nbformat
import pytest

from sft_helpers.course.runner import course_notebooks, run_course


def write_nb(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_notebooks_are_found_in_lesson_order(tmp_path):
    for name in ("01_b.ipynb", "00_a.ipynb", "notes.ipynb"):
        write_nb(tmp_path / name, "1")
    assert [p.name for p in course_notebooks(tmp_path)] == ["00_a.ipynb", "01_b.ipynb"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="repository root"):
        course_notebooks(tmp_path / "nope")


def test_run_stops_at_the_first_failing_cell(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_nb(nbs / "00_ok.ipynb", "x = 1", "print(x + 1)")
    write_nb(nbs / "01_bad.ipynb", "y = 2", "raise ValueError('boom')", "print('never')")
    write_nb(nbs / "02_later.ipynb", "print('not reached')")
    status = run_course(nbs, tmp_path / "build")
    assert status == 1
    err = capsys.readouterr().err
    assert "01_bad.ipynb: code cell 2" in err and "ValueError: boom" in err
    executed = nbformat.read(tmp_path / "build" / "notebooks" / "00_ok.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "2\n"
    assert (tmp_path / "build" / "html" / "00_ok.html").exists()
    assert (tmp_path / "build" / "html" / "01_bad.html").exists()
    assert not (tmp_path / "build" / "notebooks" / "02_later.ipynb").exists()


def test_cli_exit_status(tmp_path):
    write_nb(tmp_path / "00_ok.ipynb", "print('fine')")
    ok = subprocess.run([sys.executable, "-m", "sft_helpers.course.runner", "run", "--notebooks", str(tmp_path),
                         "--out", str(tmp_path / "build")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    write_nb(tmp_path / "01_bad.ipynb", "1/0")
    bad = subprocess.run([sys.executable, "-m", "sft_helpers.course.runner", "run", "--notebooks", str(tmp_path),
                          "--out", str(tmp_path / "build")], capture_output=True, text=True)
    assert bad.returncode == 1 and "ZeroDivisionError" in bad.stderr


def test_keep_going_runs_every_cell_and_names_every_failure(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_nb(nbs / "00_two.ipynb", "1/0", "print('after')", "raise KeyError('k')")
    write_nb(nbs / "01_ok.ipynb", "print('still run')")
    assert run_course(nbs, tmp_path / "build", keep_going=True) == 1
    err = capsys.readouterr().err
    assert "code cell 1" in err and "ZeroDivisionError" in err and "code cell 3" in err and "KeyError" in err
    executed = nbformat.read(tmp_path / "build" / "notebooks" / "00_two.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "after\n"
    assert (tmp_path / "build" / "notebooks" / "01_ok.ipynb").exists()


def test_a_cell_past_its_timeout_is_a_named_failure(tmp_path, capsys):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    write_nb(nbs / "00_slow.ipynb", "import time; time.sleep(30)", "print('not reached')")
    write_nb(nbs / "01_next.ipynb", "print('next')")
    assert run_course(nbs, tmp_path / "build", keep_going=True, timeout=2) == 1
    err = capsys.readouterr().err
    assert "00_slow.ipynb: code cell 1" in err and "timeout" in err
    assert (tmp_path / "build" / "notebooks" / "01_next.ipynb").exists()
