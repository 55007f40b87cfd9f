"""Chat records: the schema an engineer's data is checked against, and reading it from files.

A record is `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}` with at least
one user and one assistant turn. `conversation_problems(record)` lists what is wrong with one record;
`load_conversations(path)` reads chat JSONL, checks every record and reports every problem
(undecodable bytes included) as `file:line: reason`; files are read as UTF-8 with or without a byte
order mark, or as the UTF-16/32 their byte order mark names.
"""

from __future__ import annotations

import codecs
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from .paths import data_path  # noqa: F401  (records name files relative to the data folder

ROLES = {"system", "user", "assistant"}
# byte order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one)
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32 LE"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32 BE"),
        (codecs.BOM_UTF8, "utf-8", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 LE"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 BE"))
_UNDECODABLE = "\ud800"  # a lone surrogate: strict decoding never yields one, so it marks undecodable bytes


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
