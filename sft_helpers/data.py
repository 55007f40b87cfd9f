"""Reading, validating and (re)generating the course data under `data/`.

`load_conversations(path)` is the one way the course reads chat JSONL: every record is checked and
every problem (undecodable bytes included) is reported as `file:line: reason`; files are read as
UTF-8 with or without a byte order mark, or as the UTF-16/32 their byte order mark names.
`build_data(out_dir, seed)` regenerates all of `data/` (world, pre-training corpus, SFT splits, planted
duplicates) byte for byte from a seed.
"""

from __future__ import annotations

import codecs
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from .conversations import plant_duplicates, sft_conversations
from .world import SPLITS, make_world, pretraining_corpus

_REPO_DATA = Path(__file__).resolve().parent.parent / "data"
# a clone (or editable install) reads the repo's data/; a wheel carries a copy as sft_helpers/_data
DATA_DIR = _REPO_DATA if _REPO_DATA.is_dir() else Path(__file__).resolve().parent / "_data"
ROLES = {"system", "user", "assistant"}
# byte order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one)
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32 LE"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32 BE"),
        (codecs.BOM_UTF8, "utf-8", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 LE"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 BE"))
_UNDECODABLE = "\ud800"  # a lone surrogate: strict decoding never yields one, so it marks undecodable bytes


def data_path(name: str = "") -> Path:
    """Path of a file in the course's `data/` folder (the repo's, or `$SFT_DATA_DIR`)."""
    import os

    return Path(os.environ.get("SFT_DATA_DIR", DATA_DIR)) / name


class ConversationFormatError(ValueError):
    """Raised with one `file:line: reason` line per bad record."""

    def __init__(self, problems: list[str], encoding: str = "UTF-8"):
        self.problems = problems
        self.encoding = encoding
        read_as = f" (file read as {encoding})" if encoding != "UTF-8" else ""
        super().__init__(f"{len(problems)} bad record(s){read_as}:\n" + "\n".join(problems))


@dataclass
class SkipReport:
    """What `load_conversations(..., on_error="skip")` left out, and why; `encoding` is how the file
    was read (`detect_encoding`'s label)."""

    path: str
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)
    encoding: str = "UTF-8"

    def __str__(self) -> str:
        head = f"{self.path}: loaded {self.loaded}, skipped {len(self.skipped)}"
        head += f" (read as {self.encoding})" if self.encoding != "UTF-8" else ""
        return "\n".join([head] + [f"  {s}" for s in self.skipped])


def conversation_problems(record: object) -> list[str]:
    """Reasons why `record` is not a valid chat conversation (empty list if it is).

    >>> conversation_problems({"messages": [{"role": "user", "content": "hi"}]})
    ['no assistant turn']
    """
    if not isinstance(record, dict):
        return [f"record is a {type(record).__name__}, not an object"]
    msgs = record.get("messages")
    if msgs is None:
        return ["missing 'messages'"]
    if not isinstance(msgs, list) or not msgs:
        return ["'messages' must be a non-empty list"]
    problems = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append(f"message {i} is not an object")
            continue
        role = m.get("role")
        if "role" not in m:
            problems.append(f"message {i}: missing 'role'")
        elif not isinstance(role, str) or role not in ROLES:
            problems.append(f"message {i}: unknown role {role!r} (expected one of {sorted(ROLES)})")
        content = m.get("content")
        if "content" not in m:
            problems.append(f"message {i}: missing 'content'")
        elif not isinstance(content, str):
            problems.append(f"message {i}: content is {type(content).__name__}, not a string")
        elif not content.strip():
            problems.append(f"message {i}: empty content")
    roles = [m.get("role") for m in msgs if isinstance(m, dict)]
    if "assistant" not in roles:
        problems.append("no assistant turn")
    elif roles[-1] != "assistant":
        problems.append(f"conversation ends with a {roles[-1]!r} turn, not an assistant turn")
    return problems


def detect_encoding(data: bytes) -> tuple[str, int, str]:
    """`(codec, bom_length, label)` for the bytes of a text file: the encoding its byte order mark names
    (UTF-8, UTF-16 or UTF-32, LE or BE), else the one the NUL bytes of its first characters show (UTF-16
    or UTF-32 without a mark, as `json.detect_encoding` reads them), else UTF-8.

    >>> detect_encoding(codecs.BOM_UTF16_BE + '{"a": 1}'.encode("utf-16-be"))
    ('utf-16-be', 2, 'UTF-16 BE with BOM')
    >>> detect_encoding(b'{"a": 1}')
    ('utf-8', 0, 'UTF-8')
    """
    for bom, codec, name in BOMS:
        if data.startswith(bom):
            return codec, len(bom), f"{name} with BOM"
    codec = json.detect_encoding(data[:4])
    if codec == "utf-8":
        return codec, 0, "UTF-8"
    return codec, 0, codec.upper().replace("-LE", " LE").replace("-BE", " BE") + " without BOM"


def _decode(data: bytes, codec: str) -> tuple[str, list[str]]:
    """`data` decoded with `codec`, each undecodable run of bytes replaced by `_UNDECODABLE`, and for
    each such run its bytes and the codec's reason."""
    view, parts, runs, pos = memoryview(data), [], [], 0
    while True:
        try:
            parts.append(str(view[pos:], codec))
            return "".join(parts), runs
        except UnicodeDecodeError as e:  # e.start, e.end count from pos
            parts += [str(view[pos:pos + e.start], codec), _UNDECODABLE]
            runs.append(f"bytes {data[pos + e.start:pos + e.end].hex(' ')} ({e.reason})")
            pos += e.end


def load_conversations(path: str | Path, on_error: str = "raise"):
    """Load chat JSONL (`{"messages": [{"role", "content"}, ...]}` per line), checking every record.

    With `on_error="raise"` (default) any bad record raises one `ConversationFormatError` listing
    every problem as `file:line: reason`. With `on_error="skip"` returns `(records, SkipReport)`:
    the good records plus a count and reason for each line left out. Blank lines are ignored. The
    file may be UTF-8 (with or without BOM) or UTF-16/32 with a BOM (`detect_encoding`; the report
    says which); a line with bytes that do not decode is a bad record like any other.

    >>> recs = load_conversations(data_path("sft_test.jsonl"))
    >>> recs[0]["messages"][-1]["role"]
    'assistant'
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    path = Path(path)
    data = path.read_bytes()
    codec, bom, encoding = detect_encoding(data)
    text, runs = _decode(data[bom:], codec)
    hint = " (is it Latin-1 or cp1252? re-save it as UTF-8)" if codec == "utf-8" else ""
    records, problems = [], []
    for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):  # newlines as open() reads them
        if _UNDECODABLE in line:
            n = line.count(_UNDECODABLE)
            first, runs = runs[0], runs[n:]
            more = f" and {n - 1} more undecodable run(s)" if n > 1 else ""
            problems.append(f"{path}:{lineno}: cannot decode as {encoding} at column "
                            f"{line.index(_UNDECODABLE) + 1}: {first}{more}{hint}")
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})")
            continue
        bad = conversation_problems(record)
        if bad:
            problems.append(f"{path}:{lineno}: " + "; ".join(bad))
        else:
            records.append(record)
    if on_error == "raise":
        if problems:
            raise ConversationFormatError(problems, encoding)
        return records
    return records, SkipReport(str(path), loaded=len(records), skipped=problems, encoding=encoding)


def load_split(split: str) -> list[dict]:
    """The committed SFT split `train`, `validation` or `test`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return load_conversations(data_path(f"sft_{split}.jsonl"))


def load_world():
    """The committed world, as a `World`."""
    from .world import City, Country, Person, World

    raw = json.loads(data_path("world.json").read_text())
    return World(raw["seed"], tuple(Country(**{**c, "cities": tuple(c["cities"])}) for c in raw["countries"]),
                 tuple(City(**c) for c in raw["cities"]), tuple(Person(**p) for p in raw["people"]))


def load_pretraining_corpus() -> list[str]:
    return [json.loads(line)["text"] for line in data_path("pretrain.jsonl").open(encoding="utf-8")]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def build_data(out_dir: str | Path = DATA_DIR, seed: int = 0) -> dict[str, int]:
    """Regenerate the world, corpus and SFT splits into `out_dir`; returns row counts per file.
    Same seed, same bytes. (The tokenizer and base model are made by `sft-course pretrain`.)"""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(seed)
    (out / "world.json").write_text(world.to_json(), encoding="utf-8")
    corpus = pretraining_corpus(world)
    _write_jsonl(out / "pretrain.jsonl", [{"text": t} for t in corpus])
    counts = {"pretrain.jsonl": len(corpus)}
    for split in SPLITS:
        rows = sft_conversations(world, split)
        if split == "train":
            rows, planted = plant_duplicates(rows, seed)
            _write_jsonl(out / "sft_train_duplicates.jsonl", planted)
            counts["sft_train_duplicates.jsonl"] = len(planted)
        _write_jsonl(out / f"sft_{split}.jsonl", rows)
        counts[f"sft_{split}.jsonl"] = len(rows)
    return counts
