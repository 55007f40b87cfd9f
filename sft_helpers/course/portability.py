"""Notebook checks that survive another CPU, BLAS and thread count (`sft-course spread`).

Strict nbval compares every text output of a notebook with the stored one. Data, tokens, masks and
config tables come out the same on every machine, but a number that comes out of training or of a
float reduction depends on the instruction set (AVX2 / AVX-512 / AMX kernels) and on the thread count.
So each code cell can carry, in its metadata, the **measured spread** of each number it prints:

    cell.metadata["spread"] = {"numbers": [0, 0, 0.012, ...], "settings": [...]}

one entry per number in the cell's text outputs, in order (0: the number never moved, so it is
compared exactly). The project's pytest plugin lets a number of the new run stand for the stored one
when it lies within its tolerance (`tolerance`: twice the measured spread plus one unit of the printed
last digit); everything else (the words, the layout, every number of spread 0) is compared exactly, and
a number outside its tolerance fails with nbval's usual diff.

`sft-course spread` measures the spreads: it executes every notebook under each setting of
`SETTINGS` (environment variables that make this machine compute like another one), compares each
number with the stored outputs, writes the spreads into the notebooks' metadata and a table to
`docs/portability.md`, and names every claim (assert) that failed under a setting.

>>> split_numbers("loss 2.31 after 1,200 steps (+18%)")
(['loss ', ' after ', ' steps (', '%)'], ['2.31', '1,200', '+18'])
>>> tolerance("2.31", 0.02)
0.05
"""

from __future__ import annotations

import copy
import json
import os
import platform
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

# a number as printed: an optional sign (not after a letter or digit: x86-64, Qwen3), digits with
# optional thousands separators, decimals and an exponent
NUMBER = re.compile(r"(?<![\w.])(?<![\w.][-+])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
MARGIN = 2.0  # a tolerance is MARGIN x the measured spread, plus one unit of the last printed digit

# Each setting makes this machine's kernels compute the way another machine's do (the brief's checked
# list: MKL picks the fp32 matmul kernel, oneDNN the bf16 one, ATen the vectorised reductions, and the
# thread count how sums are split). On a CPU without AVX-512, MKL/oneDNN caps change nothing.
SETTINGS: dict[str, dict[str, str]] = {
    "one-thread": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                   "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"},
    "generic-kernels": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41",
                        "ATEN_CPU_CAPABILITY": "default"},
}
PORTABLE = SETTINGS["one-thread"]  # what `bash .ci/run portable` imitates: an AVX2 CPU, one thread


def split_numbers(text: str) -> tuple[list[str], list[str]]:
    """Split `text` into its skeleton (the pieces between numbers) and its numbers, as printed.

    >>> split_numbers("x86-64, 3 runs")
    (['x86-64, ', ' runs'], ['3'])
    """
    numbers = [m.group() for m in NUMBER.finditer(text)]
    return NUMBER.split(text), numbers


def number_value(printed: str) -> float:
    """The value of a printed number (`"1,200"` -> 1200.0)."""
    return float(printed.replace(",", ""))


def print_unit(printed: str) -> float:
    """One unit of the last printed digit: `"2.31"` -> 0.01, `"1,200"` -> 1, `"3e-06"` -> 1e-06."""
    mantissa, _, exponent = printed.replace(",", "").lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def tolerance(printed: str, spread: float) -> float:
    """How far a new value may lie from the stored `printed` one: 0 when the number never moved,
    else MARGIN x spread plus one unit of the last printed digit (rounding)."""
    if not spread:
        return 0.0
    return round(MARGIN * spread + print_unit(printed), 12)


def too_precise(printed: str, spread: float) -> bool:
    """True when `printed` shows more digits than its measured spread supports: its last digit is
    finer than a tenth of the spread (2.314 or 2.31 with spread 0.2: yes; 2.3: no; 2.31 with 0.02:
    no). Whole numbers (counts, whole percents) cannot be printed coarser and always pass.

    >>> too_precise("17.64", 2.2), too_precise("18", 2.2), too_precise("82", 12)
    (True, False, False)
    """
    if not spread or "." not in printed.replace(",", "").lower().partition("e")[0]:
        return False
    return print_unit(printed) < spread / 10 * (1 - 1e-9)


def cell_texts(outputs: list) -> list[str]:
    """The text a cell shows, one string per output (stream text, or the text/plain of a result)."""
    texts = []
    for out in outputs:
        if out.get("output_type") == "stream":
            texts.append(out.get("text", ""))
        elif "data" in out and "text/plain" in out["data"]:
            texts.append(out["data"]["text/plain"])
    return texts


def same_layout(a: list[str], b: list[str]) -> bool:
    """Two skeletons that differ at most in the width of their runs of spaces (a right-aligned table
    column shifts when a number gains a digit)."""
    return len(a) == len(b) and all(re.sub(" +", " ", x) == re.sub(" +", " ", y) for x, y in zip(a, b))


def snap(test: str, ref: str, spreads: list[float], start: int = 0) -> tuple[str, int]:
    """The stored text `ref` when every number of `test` lies within its tolerance of the stored one
    at the same place (and the words are the same, up to the padding of aligned columns), so a plain
    comparison then accepts it; else `test` with only the numbers within tolerance replaced, so the
    comparison fails and shows what is off. Numbers from `start` on use `spreads[start:]`. Returns
    the text and the next index.

    >>> snap("loss 2.33", "loss 2.31", [0.01])
    ('loss 2.31', 1)
    >>> snap("loss 2.40", "loss 2.31", [0.01])
    ('loss 2.40', 1)
    >>> snap("count 101", "count 100", [0])
    ('count 101', 1)
    >>> snap("| 10.01 |", "|  9.99 |", [0.02])
    ('|  9.99 |', 1)
    """
    test_skeleton, test_numbers = split_numbers(test)
    ref_skeleton, ref_numbers = split_numbers(ref)
    end = start + len(ref_numbers)
    if end > len(spreads) or not same_layout(test_skeleton, ref_skeleton):
        return test, end
    close = [t == r or bool(spread) and abs(number_value(t) - number_value(r)) <= tolerance(r, spread)
             for t, r, spread in zip(test_numbers, ref_numbers, spreads[start:end])]
    if all(close) and test_numbers != ref_numbers:
        return ref, end
    if test_skeleton != ref_skeleton:
        return test, end
    out = [r if ok else t for t, r, ok in zip(test_numbers, ref_numbers, close)]
    pieces = [p for pair in zip(test_skeleton, out + [""]) for p in pair]
    return "".join(pieces), end


def snap_outputs(test: list, ref: list, spreads: list[float], sanitize=lambda s: s) -> list:
    """`snap` applied to a cell's outputs (nbformat dicts), text by text, after `sanitize` (nbval's
    regex sanitizer: durations and addresses are no numbers to compare). Returns new outputs."""
    test_texts, ref_texts = cell_texts(test), cell_texts(ref)
    if len(test_texts) != len(ref_texts):
        return test
    snapped, index = [], 0
    for t, r in zip(test_texts, ref_texts):
        text, index = snap(sanitize(t), sanitize(r), spreads, index)
        snapped.append(text)
    result, k = [], 0
    for out in test:
        out = copy.deepcopy(out)
        if out.get("output_type") == "stream":
            out["text"], k = snapped[k], k + 1
        elif "data" in out and "text/plain" in out["data"]:
            out["data"]["text/plain"], k = snapped[k], k + 1
        result.append(out)
    return result


def stale_spread(cell: dict, sanitize=lambda s: s) -> str | None:
    """Why a cell's stored spreads no longer fit its stored outputs (None when they do)."""
    spreads = cell.get("metadata", {}).get("spread", {}).get("numbers")
    if spreads is None:
        return None
    count = len(cell_numbers(cell, sanitize)[1])
    if count != len(spreads):
        return (f"the cell prints {count} numbers but its metadata has {len(spreads)} spreads: "
                "re-measure with `sft-course spread`")
    return None


# ---------------------------------------------------------------------------- measuring the spreads


def load_sanitizer(path: str | Path = "tests/nbval_sanitize.cfg"):
    """nbval's sanitizer file as a function (the same regexes the suite applies)."""
    from nbval.plugin import get_sanitize_patterns
    pairs = get_sanitize_patterns(Path(path).read_text()) if Path(path).exists() else []

    def sanitize(s: str) -> str:
        for regex, replace in pairs:
            s = re.sub(regex, replace, s)
        return s
    return sanitize


PROGRESS_BAR = re.compile(r"\d+%\|.*\|")  # a tqdm bar (a first-time conversion in a run, say)


def shown_outputs(outputs: list) -> list:
    """Outputs as nbval compares them: consecutive stream chunks joined, progress bars left out."""
    from nbval.plugin import coalesce_streams
    kept = [o for o in outputs if not (o.get("output_type") == "display_data"
                                      and PROGRESS_BAR.search(o.get("data", {}).get("text/plain", "")))]
    return coalesce_streams(copy.deepcopy(kept))


def cell_numbers(cell: dict, sanitize) -> tuple[list[str], list[str]]:
    """A cell's skeleton pieces and numbers over all of its text outputs."""
    skeleton, numbers = [], []
    for text in cell_texts(shown_outputs(cell.get("outputs", []))):
        s, n = split_numbers(sanitize(text))
        skeleton += s
        numbers += n
    return skeleton, numbers


def compare_runs(stored_nb: dict, runs: dict[str, dict], sanitize,
                 observed: dict[tuple[int, int], list[float]] | None = None) -> list[dict]:
    """Cell by cell, the numbers of the stored notebook against each run's. One row per code cell
    with outputs: its index, the stored numbers, each run's numbers ('differs' when the run's text
    differs in more than numbers), and the spread of each number over the stored value, the runs and
    the values `observed` on other machines ({(cell, number): [values]})."""
    observed = observed or {}
    rows = []
    for index, cell in enumerate(stored_nb["cells"]):
        if cell["cell_type"] != "code" or not cell.get("outputs"):
            continue
        skeleton, numbers = cell_numbers(cell, sanitize)
        row = {"cell": index, "stored": numbers, "runs": {}, "differs": []}
        # every value at the stored number's printed precision (a run made before a print was
        # shortened, or a value observed elsewhere, may carry more digits)
        at = [lambda v, u=print_unit(n): round(round(v / u) * u, 12) for n in numbers]
        values = [[number_value(n), *(at[k](v) for v in observed.get((index, k), []))]
                  for k, n in enumerate(numbers)]
        for name, nb in runs.items():
            other = nb["cells"][index] if index < len(nb["cells"]) else {}
            s, n = cell_numbers(other, sanitize)
            if not same_layout(s, skeleton):
                row["differs"].append(name)
                continue
            row["runs"][name] = n
            for k, (v, printed) in enumerate(zip(values, n)):
                v.append(at[k](number_value(printed)))
        row["spreads"] = [round(max(v) - min(v), 12) for v in values]
        rows.append(row)
    return rows


def failed_cells(nb: dict) -> list[tuple[int, str]]:
    """The cells of an executed notebook that raised, with the error's last line."""
    failed = []
    for index, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                failed.append((index, f"{out.get('ename')}: {out.get('evalue', '')}"[:200]))
    return failed


def this_machine() -> str:
    """CPU model, its widest vector extension, cores, and the torch that computed the figures."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", info).group(1).strip()
        flags = re.search(r"flags\s*:\s*(.*)", info).group(1).split()
    except (OSError, AttributeError):
        pass
    isa = next((f for f in ("amx_tile", "avx512f", "avx2", "avx") if f in flags), "?")
    import torch
    return f"{model} ({isa}, {os.cpu_count()} cores), torch {torch.__version__}"


def context(text: str, start: int) -> str:
    """The start of the line a number at `start` sits on, and the words just before it."""
    line_start = text.rfind("\n", 0, start) + 1
    head, before = text[line_start:start][:16].strip(), text[line_start:start][-14:].strip()
    words = head if len(text[line_start:start]) <= 16 else f"{head} … {before}"
    return " ".join(words.replace("|", "/").split()) or "-"


def spread_table(notebook: str, stored_nb: dict, rows: list[dict], sanitize) -> list[str]:
    """Markdown rows for every number that moved under some setting."""
    lines = []
    for row in rows:
        text = "\n".join(sanitize(t) for t in cell_texts(shown_outputs(stored_nb["cells"][row["cell"]]["outputs"])))
        starts = [m.start() for m in NUMBER.finditer(text)]
        for k, (printed, spread) in enumerate(zip(row["stored"], row["spreads"])):
            if not spread:
                continue
            others = " / ".join(row["runs"][name][k] for name in row["runs"])
            lines.append(f"| {notebook} | {row['cell']} | {context(text, starts[k])} | {printed} | {others} "
                         f"| {spread:.3g} | {tolerance(printed, spread):.3g} |")
    return lines


def measure(build: Path, notebooks: Path, settings: list[str], only: list[str] | None = None,
            timeout: int = 900) -> None:
    """Execute the notebooks (those starting with `only`, or all) under each setting into
    `build/<setting>/notebooks`, every cell even after a failure (a cell may run `timeout` seconds)."""
    for name in settings:
        env = {**os.environ, **SETTINGS[name]}
        print(f"== {name}: {' '.join(f'{k}={v}' for k, v in SETTINGS[name].items())}", flush=True)
        subprocess.run([sys.executable, "-m", "sft_helpers.course.runner", "run", "--keep-going",
                        "--notebooks", str(notebooks), "--out", str(build / name), "--timeout", str(timeout),
                        *(["--only", *only] if only else [])], env=env)


def load_observed(path: Path) -> tuple[dict, dict]:
    """`docs/portability_observed.json`: values seen on machines this one cannot imitate, as
    {notebook: {(cell, number): [values]}}, and the machines' descriptions."""
    if not path.exists():
        return {}, {}
    data = json.loads(path.read_text())
    found: dict = {}
    for v in data["values"]:
        found.setdefault(v["notebook"], {}).setdefault((v["cell"], v["number"]), []).append(v["value"])
    return found, data.get("machines", {})


TITLE = "# Portability: what a notebook number does on another CPU"
ABOUT = f"""Written by `sft-course spread` (do not edit by hand). Each notebook was executed under each setting
below; a number's **spread** is max - min over the stored output, every setting and the values
observed on machines this one cannot imitate (`docs/portability_observed.json`). The suite accepts a
new value within the **tolerance** ({MARGIN:g} x spread + one unit of the last printed digit). Every
number not listed here came out the same everywhere and is compared exactly."""


def notebook_section(path: Path, folders: dict[str, Path], observed: dict, machines: dict,
                     sanitize, write: bool) -> tuple[str, int]:
    """Measure one stored notebook against its runs; store the spreads in its cells' metadata (with
    `write`). Returns its markdown section and the number of failed claims."""
    import nbformat
    stored = nbformat.read(path, as_version=4)
    runs = {name: nbformat.read(folder / path.name, as_version=4)
            for name, folder in folders.items() if (folder / path.name).exists()}
    claims = [f"cell {i} under {name}: {why}" for name, nb in runs.items() for i, why in failed_cells(nb)]
    rows = compare_runs(stored, runs, sanitize, observed.get(path.stem))
    differs = [f"cell {row['cell']} under {name}" for row in rows for name in row["differs"]]
    for row in rows:
        cell = stored.cells[row["cell"]]
        if any(row["spreads"]):
            cell.metadata["spread"] = {"numbers": row["spreads"],
                                       "settings": sorted(runs) + sorted(machines)}
        else:
            cell.metadata.pop("spread", None)
    if write:
        nbformat.write(stored, path)
    lines = [f"Settings: {', '.join(runs) or 'none'}; measured on "
             f"{this_machine()}, {date.today().isoformat()}.", ""]
    lines += [f"- assert FAILED: {c}" for c in claims] or ["- every assert held under every setting"]
    lines += [f"- text changed (not only numbers): {d}" for d in differs]
    table = spread_table(path.stem, stored, rows, sanitize)
    if table:
        lines += ["", f"| notebook | cell | printed after | stored | {' / '.join(runs)} | spread | tolerance |",
                  "|---|---|---|---|---|---|---|", *table]
    else:
        lines += ["- no number moved"]
    return "\n".join(lines), len(claims)


def write_spreads(notebooks: Path, folders: dict[str, Path], docs: Path, write: bool = True,
                  only: list[str] | None = None, observed_path: Path | None = None) -> int:
    """Compare each stored notebook (those starting with `only`, or all) with its runs in `folders`
    and the values observed elsewhere, store the spreads in the notebooks' metadata (with `write`)
    and its section of `docs`. Returns the number of failed claims."""
    sanitize = load_sanitizer()
    observed, machines = load_observed(observed_path or docs.with_name("portability_observed.json"))
    settings = [f"- `{name}`: `{' '.join(f'{k}={v}' for k, v in SETTINGS.get(name, {}).items())}`"
                for name in folders]
    settings += [f"- `{name}` (values observed there): {about}" for name, about in machines.items()]
    from .runs import write_block
    if not docs.exists():
        docs.write_text(TITLE + "\n")
    write_block(docs, "spread-about", "How these were measured", ABOUT + "\n\n" + "\n".join(settings))
    failed = 0
    for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        if only and not any(path.name.startswith(o) for o in only):
            continue
        section, n = notebook_section(path, folders, observed, machines, sanitize, write)
        write_block(docs, f"spread-{path.stem}", path.stem, section)
        failed += n
    return failed


def main(argv: list[str] | None = None) -> int:
    """`sft-course spread [--only NN ...] [--settings ...] [--reuse] [--no-write]`."""
    import argparse
    ap = argparse.ArgumentParser(prog="sft-course spread", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 04")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--notebooks", default="notebooks")
    ap.add_argument("--build", default="build/spread")
    ap.add_argument("--docs", default="docs/portability.md")
    ap.add_argument("--reuse", action="store_true", help="reuse the executed copies in --build")
    ap.add_argument("--timeout", type=int, default=900, help="seconds a cell may run (default 900)")
    ap.add_argument("--no-write", action="store_true", help="leave the notebooks' metadata alone")
    args = ap.parse_args(argv)
    build, notebooks = Path(args.build), Path(args.notebooks)
    if not args.reuse:
        measure(build, notebooks, args.settings, args.only, args.timeout)
    folders = {name: build / name / "notebooks" for name in args.settings}
    failed = write_spreads(notebooks, folders, Path(args.docs), not args.no_write, args.only)
    print(f"spreads written to {args.docs}; {failed} assert(s) failed under some setting")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
