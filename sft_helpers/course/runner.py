"""`sft-course`: the course's command line.

    sft-course run                 execute every notebook in order, headless, into build/
    sft-course run --model smollm2-135m   the same on another lane, into build/lane-smollm2-135m/
    sft-course build-data          regenerate data/ from the seed (byte for byte)
    sft-course pretrain            pre-train the embedded tiny base (once, ~20 min on 2 CPU cores)
    sft-course sync-install-cell   write the Colab install cell (sft_helpers.course.colab) into every notebook
    sft-course spread              measure how far each notebook number moves on other CPU settings
                                   (sft_helpers.course.portability; writes the spreads nbval's check uses)

`run` executes `notebooks/NN_*.ipynb` in name order with a progress bar per notebook, writes the
executed copies to `build/notebooks/` and an HTML rendering to `build/html/`, and stops with exit
status 1 at the first failing cell, naming the notebook, the cell and the error. With `--model`,
the notebooks' `MODEL_ID = "tiny"` cell is set to that lane first (`sft_helpers.course.lanes` gives each
lane its budget and assertions), and the executed copies go to `build/lane-<model>/`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path


class CellFailed(RuntimeError):
    """A notebook cell raised: carries the notebook, the cell number and the error's last line."""


def course_notebooks(folder: str | Path = "notebooks") -> list[Path]:
    """The course's notebooks in lesson order (`00_...`, `01_...`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no notebooks folder at {folder.resolve()}: run from the repository root "
                                "or pass --notebooks")
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"{folder}: no notebooks named NN_*.ipynb")
    return found


MODEL_ID_CELL = re.compile(r'^MODEL_ID = "[^"]*"', re.M)


def set_model_id(nb, model_id: str) -> int:
    """Point a notebook at another lane: rewrite its `MODEL_ID = "..."` cell; returns how many cells
    changed. A notebook that has no such cell cannot run on another lane: raises ValueError.

    >>> import nbformat
    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('MODEL_ID = "tiny"')])
    >>> set_model_id(nb, "smollm2-135m"), nb.cells[0].source
    (1, 'MODEL_ID = "smollm2-135m"')
    """
    n = 0
    for cell in nb.cells:
        if cell.cell_type == "code" and MODEL_ID_CELL.search(cell.source):
            cell.source = MODEL_ID_CELL.sub(f"MODEL_ID = {model_id!r}".replace("'", '"'), cell.source)
            n += 1
    if not n:
        raise ValueError('no `MODEL_ID = "..."` cell to set')
    return n


def execute_notebook(path: Path, out_dir: Path, timeout: int = 900, progress: bool = True,
                     in_place: bool = False, model_id: str | None = None,
                     keep_going: bool = False) -> Path:
    """Execute one notebook cell by cell (with a progress bar) in its own folder; write the executed
    copy and an HTML rendering under `out_dir` (and back over `path` with `in_place`, for authors
    committing outputs). `model_id` runs it on another lane (`set_model_id`). Raises `CellFailed` at
    the first failing cell (with `keep_going`, after the last cell, naming every failed one)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    from nbconvert import HTMLExporter
    from tqdm.auto import tqdm

    nb = nbformat.read(path, as_version=4)
    if model_id is not None:
        set_model_id(nb, model_id)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,  # no timestamps
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    code_cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    failures = []
    # kernels run without progress bars, so executed copies match the committed outputs
    with client.setup_kernel(env={**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}):
        for n, (index, cell) in enumerate(tqdm(code_cells, desc=path.name, unit="cell", disable=not progress)):
            try:
                client.execute_cell(cell, index)
            except CellExecutionError as e:
                plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # tracebacks come with terminal colours
                last = (plain.strip().splitlines() or ["?"])[-1]
                first_line = (cell.source.splitlines() or [""])[0]
                failures.append(f"{path.name}: code cell {n + 1} (cell index {index}) failed: {last}\n"
                                f"  the cell starts with: {first_line}")
                if not keep_going:
                    break
            except (CellTimeoutError, DeadKernelError) as e:  # no kernel to go on with: stop here
                why = f"ran past the {timeout} s timeout (--timeout)" if isinstance(e, CellTimeoutError) \
                    else "killed the kernel"
                failures.append(f"{path.name}: code cell {n + 1} (cell index {index}) {why}")
                break
    (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    (out_dir / "html").mkdir(parents=True, exist_ok=True)
    executed = out_dir / "notebooks" / path.name
    nbformat.write(nb, executed)
    html, _ = HTMLExporter().from_notebook_node(nb)
    (out_dir / "html" / path.with_suffix(".html").name).write_text(html, encoding="utf-8")
    if failures:
        raise CellFailed("\n".join(failures))
    if in_place:
        nbformat.write(nb, path)
    return executed


def run_course(notebooks: str | Path = "notebooks", out_dir: str | Path | None = None,
               only: list[str] | None = None, in_place: bool = False, model_id: str | None = None,
               timeout: int = 900, keep_going: bool = False) -> int:
    """Execute the course's notebooks in order (on the lane `model_id`, default the notebooks' own);
    returns a process exit status (0 ok, 1 failed). `keep_going` runs every cell of every notebook
    and names all failures at the end (as `sft-course spread` needs)."""
    if in_place and model_id not in (None, "tiny"):
        print("--in-place stores the tiny lane's outputs only (strict nbval compares them)", file=sys.stderr)
        return 2
    out = Path(out_dir or ("build" if model_id in (None, "tiny") else f"build/lane-{model_id.replace('/', '--')}"))
    paths = course_notebooks(notebooks)
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    failed = 0
    for i, path in enumerate(paths, start=1):
        print(f"[{i}/{len(paths)}] {path.name}", flush=True)
        try:
            execute_notebook(path, out, timeout=timeout, in_place=in_place, model_id=model_id,
                             keep_going=keep_going)
        except CellFailed as e:
            print(f"FAILED {e}", file=sys.stderr)
            failed += 1
            if not keep_going:
                return 1
    if failed:
        return 1
    print(f"executed {len(paths)} notebook(s): {out / 'notebooks'}, HTML in {out / 'html'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sft-course", description="The SFT course's command line.")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute every notebook in order into build/")
    run.add_argument("--notebooks", default="notebooks")
    run.add_argument("--out", default=None, help="default build/, or build/lane-MODEL with --model")
    run.add_argument("--timeout", type=int, default=900, help="seconds a cell may run (default 900)")
    run.add_argument("--model", default=None, help='a lane: "tiny" (default), "smollm2-135m" or a hub id')
    run.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 00 01")
    run.add_argument("--in-place", action="store_true", help="also store outputs in notebooks/ (authors)")
    run.add_argument("--keep-going", action="store_true", help="run every cell; name all failures at the end")
    data = sub.add_parser("build-data", help="regenerate data/ from the seed")
    data.add_argument("--out", default=None)
    data.add_argument("--seed", type=int, default=0)
    sub.add_parser("pretrain", help="pre-train the tiny base (see python -m sft_helpers.course.pretrain -h)",
                   add_help=False)
    sub.add_parser("spread", help="measure notebook numbers under other CPU settings (see --help)",
                   add_help=False)
    kit = sub.add_parser("gpu-kit", help="build the folder the GPU machine needs for `bench gpu` (bitsandbytes)")
    kit.add_argument("--out", default="build/gpu-kit")
    sync = sub.add_parser("sync-install-cell", help="write the install cell into every notebook")
    sync.add_argument("--notebooks", default="notebooks")
    args, rest = ap.parse_known_args(argv)
    if args.command == "run":
        return run_course(args.notebooks, args.out, args.only, args.in_place, args.model, args.timeout,
                          args.keep_going)
    if args.command == "spread":
        from .portability import main as spread_main
        return spread_main(rest)
    if args.command == "gpu-kit":
        from .gpu_kit import main as kit_main
        return kit_main(args.out)
    if args.command == "sync-install-cell":
        from .colab import sync_install_cell
        for path in sync_install_cell(course_notebooks(args.notebooks)):
            print(f"updated {path}")
        return 0
    if args.command == "build-data":
        from ..paths import DATA_DIR
        from .data import build_data
        for name, rows in build_data(args.out or DATA_DIR, args.seed).items():
            print(f"{name}: {rows} rows")
        return 0
    from .pretrain import main as pretrain_main
    pretrain_main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
