"""Chat records: the schema an engineer's data is checked against, and reading it from files.

A record is `{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}` with at
least one user and one assistant turn; for tool use, an assistant turn may carry `tool_calls`
(`[{"type": "function", "function": {"name", "arguments"}}]`, its content then possibly empty), `tool`
turns give their results, and a `tools` key the function schemas the chat template is given
(`chat_inputs` returns what `apply_chat_template` takes). `conversation_problems(record)` lists what is wrong with one record;
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

ROLES = {"system", "user", "assistant", "tool"}
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
    formats: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        head = f"{self.path}: loaded {self.loaded}, skipped {len(self.skipped)}"
        head += f" (read as {self.encoding})" if self.encoding != "UTF-8" else ""
        converted = {f: n for f, n in self.formats.items() if f != "messages"}
        if converted:
            head += "; converted to messages: " + ", ".join(f"{n} {FORMATS[f].split(':')[0]}"
                                                            for f, n in converted.items())
        return "\n".join([head] + [f"  {s}" for s in self.skipped])


def conversation_problems(record: object) -> list[str]:
    """Reasons why `record` is not a valid chat conversation (empty list if it is).

    >>> conversation_problems({"messages": [{"role": "user", "content": "hi"}]})
    ['no assistant turn']
    >>> conversation_problems({"messages": [{"role": "user", "content": "hi"},
    ...     {"role": "tool", "content": "21 C"}, {"role": "assistant", "content": "Warm."}]})
    ['message 1: a tool result with no tool call before it']
    """
    if not isinstance(record, dict):
        return [f"record is a {type(record).__name__}, not an object"]
    msgs = record.get("messages")
    if msgs is None:
        return ["missing 'messages'"]
    if not isinstance(msgs, list) or not msgs:
        return ["'messages' must be a non-empty list"]
    problems = _tools_problems(record.get("tools"))
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append(f"message {i} is not an object")
            continue
        role = m.get("role")
        if "role" not in m:
            problems.append(f"message {i}: missing 'role'")
        elif not isinstance(role, str) or role not in ROLES:
            problems.append(f"message {i}: unknown role {role!r} (expected one of {sorted(ROLES)})")
        calls = m.get("tool_calls")
        if calls is not None:
            problems += [f"message {i}: {p}" for p in _tool_call_problems(calls, role)]
        content = m.get("content")
        if "content" not in m:
            problems.append(f"message {i}: missing 'content'")
        elif not isinstance(content, str):
            problems.append(f"message {i}: content is {type(content).__name__}, not a string")
        elif not content.strip() and not calls and role != "tool":
            problems.append(f"message {i}: empty content")
        if role == "tool":
            before = msgs[i - 1] if i else {}
            if not isinstance(before, dict) or not (before.get("tool_calls") or before.get("role") == "tool"):
                problems.append(f"message {i}: a tool result with no tool call before it")
    roles = [m.get("role") for m in msgs if isinstance(m, dict)]
    if "assistant" not in roles:
        problems.append("no assistant turn")
    elif roles[-1] != "assistant":
        problems.append(f"conversation ends with a {roles[-1]!r} turn, not an assistant turn")
    return problems


def _json_object(text: object) -> object:
    """`text` parsed when it is a JSON string, else as it is (None when a string is not JSON)."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _tool_call_problems(calls: object, role: object) -> list[str]:
    if role != "assistant":
        return ["only assistant turns make tool calls"]
    if not isinstance(calls, list) or not calls:
        return ["tool_calls must be a non-empty list"]
    problems = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            problems.append(f"tool call {j}: needs a function name ({{'function': {{'name', 'arguments'}}}})")
        elif not isinstance(_json_object(function.get("arguments", "{}")), dict):
            problems.append(f"tool call {j} ({function['name']}): arguments must be a JSON object")
    return problems


def _tools_problems(tools: object) -> list[str]:
    if tools is None:
        return []
    parsed = _json_object(tools)
    if not isinstance(parsed, list) or not all(isinstance(t, dict) for t in parsed):
        return ["'tools' must be a list of function schemas (or that list as JSON text)"]
    return []


def chat_inputs(record: dict) -> tuple[list[dict], list[dict] | None]:
    """`(messages, tools)` of a checked record as `apply_chat_template` takes them: tool-call arguments
    as objects (templates render them with `tojson`), `tools` as a list (records keep both as JSON
    text, so that Arrow never merges the schemas of different records into one with None fields).

    >>> msgs, tools = chat_inputs(to_messages({"tools": [{"type": "function", "function": {"name": "f"}}],
    ...     "messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": None,
    ...                   "tool_calls": [{"function": {"name": "f", "arguments": '{"x": 1}'}}]}]}))
    >>> msgs[1]["tool_calls"][0]["function"], tools[0]["function"]["name"]
    ({'name': 'f', 'arguments': {'x': 1}}, 'f')
    """
    messages = [{**m, "tool_calls": [{**c, "function": {**c["function"],
                                                        "arguments": _json_object(c["function"]["arguments"])}}
                                     for c in m["tool_calls"]]} if m.get("tool_calls") else m
                for m in record["messages"]]
    tools = record.get("tools")
    return messages, (_json_object(tools) or None) if tools is not None else None


def _canonical_call(call: object) -> object:
    """A tool call as `{"type": "function", "function": {"name", "arguments": JSON text}}`, from that
    shape or a flat `{"name", "arguments"}`; anything else as it is (the check names it)."""
    if not isinstance(call, dict):
        return call
    function = call.get("function", call if "name" in call else None)
    if not isinstance(function, dict):
        return call
    arguments = function.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {**{k: v for k, v in call.items() if k not in ("name", "arguments")}, "type": "function",
            "function": {"name": function.get("name"), "arguments": arguments}}


def _canonical_message(m: object) -> object:
    """A message with text content (OpenAI content blocks joined; None content of a tool-call turn
    as ""), and canonical tool calls."""
    if not isinstance(m, dict):
        return m
    out = {**m, "content": _text(m["content"])} if "content" in m else dict(m)
    if m.get("tool_calls") is not None:
        calls = m["tool_calls"]
        out["tool_calls"] = [_canonical_call(c) for c in calls] if isinstance(calls, list) else calls
        if out.get("content") is None:
            out["content"] = ""
    return out


# --- other formats: converted to messages before they are checked ---------------------------------

FORMATS = {
    "messages": "messages: {'messages': [{'role', 'content'}, ...]} (OpenAI content blocks joined; "
                "tool calls: 'tool_calls', 'tool' turns and a 'tools' column)",
    "prompt_completion": "prompt/completion: the prompt a user turn, the completion the assistant's reply",
    "conversational_prompt_completion": "prompt/completion as message lists: prompt + completion",
    "sharegpt": "ShareGPT: 'conversations' of {'from', 'value'} (human: user, gpt: assistant)",
    "alpaca": "Alpaca: instruction (+ input) a user turn, output the assistant's reply",
}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}


def detect_format(record: object) -> str | None:
    """The name (a key of `FORMATS`) of the format `record` is in, by its keys; None when none fits.

    >>> detect_format({"conversations": [{"from": "human", "value": "Hi"}]})
    'sharegpt'
    >>> detect_format({"instruction": "Add 2 and 2.", "output": "4"})
    'alpaca'
    """
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "messages"
    if "prompt" in record and "completion" in record:
        return "conversational_prompt_completion" if isinstance(record["prompt"], list) else "prompt_completion"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def _text(content: object) -> object:
    """OpenAI content blocks (`[{"type": "text", "text": ...}, ...]`) as one string; anything else as
    it is (a non-text block stays a list, which the check then names)."""
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return "".join(str(b.get("text", "")) for b in content)
    return content


def to_messages(record: dict, fmt: str | None = None) -> dict:
    """`record` (in `fmt`, detected when None) as a messages record, its other keys kept. Raises
    `ValueError` naming the keys a format needs when the record is in none.

    >>> to_messages({"prompt": "2+2?", "completion": "4"})["messages"]
    [{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]
    >>> to_messages({"instruction": "Add.", "input": "2 and 2", "output": "4"})["messages"][0]["content"]
    'Add.\\n\\n2 and 2'
    """
    if not isinstance(record, dict):
        raise ValueError(f"record is a {type(record).__name__}, not an object")
    fmt = fmt or detect_format(record)
    if fmt is None:
        raise ValueError("missing 'messages' (and no other format's keys: 'prompt'+'completion', "
                         "'conversations' (ShareGPT) or 'instruction'+'output' (Alpaca))")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    rest = {k: v for k, v in record.items()
            if k not in ("messages", "prompt", "completion", "conversations", "instruction", "input", "output")}
    if fmt == "messages":
        msgs = record.get("messages")
        if isinstance(msgs, list):
            msgs = [_canonical_message(m) for m in msgs]
        if isinstance(rest.get("tools"), list):
            rest["tools"] = json.dumps(rest["tools"], ensure_ascii=False)
        return {**rest, "messages": msgs}
    if fmt == "prompt_completion":
        msgs = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
    elif fmt == "conversational_prompt_completion":
        prompt, completion = record["prompt"], record["completion"]
        msgs = (prompt if isinstance(prompt, list) else []) + (completion if isinstance(completion, list) else [])
        return to_messages({**rest, "messages": msgs}, "messages")
    elif fmt == "sharegpt":
        turns = record["conversations"] if isinstance(record["conversations"], list) else []
        msgs = [{"role": SHAREGPT_ROLES.get(t.get("from"), t.get("from")), "content": t.get("value")}
                if isinstance(t, dict) else t for t in turns]
    else:  # alpaca
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        msgs = ([{"role": "system", "content": record["system"]}] if record.get("system") else []) + [
            {"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
        rest.pop("system", None)
    return {**rest, "messages": msgs}


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


def _drop_nones(value: object) -> object:
    """`value` with the None fields Arrow gives to keys a struct lacks removed (Parquet rows)."""
    if isinstance(value, dict):
        return {k: _drop_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nones(v) for v in value]
    return value


def _cell(key: str, value: str) -> object:
    """A CSV cell: the message lists of `messages`, `conversations`, `tools` and conversational
    `prompt` / `completion` columns are JSON text; any other cell is text as it is (an answer that
    happens to be JSON stays a string)."""
    if key in ("messages", "conversations", "tools", "prompt", "completion") and value[:1] == "[":
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        if key not in ("prompt", "completion") or all(isinstance(m, dict) and "role" in m for m in parsed):
            return parsed
    return value


def read_items(path: str | Path) -> tuple[list[tuple[str, object]], str]:
    """`(items, encoding)` of a data file: `(where, record)` for every record, or `(where, problem)`
    with the problem a `str` when the record cannot be read. `where` is `file:line` (1-based) for
    JSONL and CSV, `file: record N` for JSON (a list of records) and `file: row N` for Parquet.

    >>> items, encoding = read_items(data_path("sft_test.jsonl"))
    >>> items[0][0].endswith("sft_test.jsonl:1"), encoding
    (True, 'UTF-8')
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001  (pyarrow raises several types for a broken file)
            return [(str(path), f"not a readable Parquet file ({type(e).__name__}: {e})")], "Parquet"
        return [(f"{path}: row {n}", _drop_nones(r)) for n, r in enumerate(rows, start=1)], "Parquet"
    data = path.read_bytes()
    codec, bom, encoding = detect_encoding(data)
    text, runs = _decode(data[bom:], codec)
    hint = " (is it Latin-1 or cp1252? re-save it as UTF-8)" if codec == "utf-8" else ""
    if _UNDECODABLE in text and suffix in (".json", ".csv"):
        line = text[:text.index(_UNDECODABLE)].count("\n") + 1
        return [(f"{path}:{line}", f"cannot decode as {encoding}: {runs[0]}{hint}")], encoding
    if suffix == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            return [(f"{path}:{e.lineno}", f"invalid JSON ({e.msg} at column {e.colno})")], encoding
        if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
            value = next(iter(value.values()))  # {"data": [...]}
        if not isinstance(value, list):
            return [(str(path), "a .json file must hold a list of records (JSONL: one per line)")], encoding
        return [(f"{path}: record {n}", r) for n, r in enumerate(value, start=1)], encoding
    if suffix == ".csv":
        import csv

        reader = csv.DictReader(io.StringIO(text, newline=""))
        items = []
        for row in reader:
            items.append((f"{path}:{reader.line_num}",
                          {k: _cell(k, v) for k, v in row.items() if v not in (None, "")}))
        return items, encoding
    items = []
    for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):  # newlines as open() reads them
        where = f"{path}:{lineno}"
        if _UNDECODABLE in line:
            n = line.count(_UNDECODABLE)
            first, runs = runs[0], runs[n:]
            more = f" and {n - 1} more undecodable run(s)" if n > 1 else ""
            items.append((where, f"cannot decode as {encoding} at column "
                                 f"{line.index(_UNDECODABLE) + 1}: {first}{more}{hint}"))
        elif line.strip():
            try:
                items.append((where, json.loads(line)))
            except json.JSONDecodeError as e:
                items.append((where, f"invalid JSON ({e.msg} at column {e.colno})"))
    return items, encoding


def load_conversations(path: str | Path, on_error: str = "raise", format: str = "auto"):
    """Load chat records from a file, converted to messages and checked one by one.

    Files: JSONL (one record per line), JSON (a list of records), CSV (one per row; a `messages`
    column as JSON text) or Parquet (`read_items`). Records: `format` (a key of `FORMATS`), or with
    "auto" each record's own (`detect_format`): messages (OpenAI content blocks joined),
    prompt/completion (plain or as message lists), ShareGPT, Alpaca (`to_messages`).

    With `on_error="raise"` (default) any bad record raises one `ConversationFormatError` listing
    every problem as `file:line: reason`. With `on_error="skip"` returns `(records, SkipReport)`:
    the good records plus a count and reason for each record left out, and how many were in each
    format. Blank lines are ignored. A text file may be UTF-8 (with or without BOM) or UTF-16/32 with
    a BOM (`detect_encoding`; the report says which); a line with bytes that do not decode is a bad
    record like any other.

    >>> recs = load_conversations(data_path("sft_test.jsonl"))
    >>> recs[0]["messages"][-1]["role"]
    'assistant'
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {list(FORMATS)}, not {format!r}")
    items, encoding = read_items(path)
    records, problems, formats = [], [], {}
    for where, item in items:
        if isinstance(item, str):
            problems.append(f"{where}: {item}")
            continue
        fmt = detect_format(item) if format == "auto" else format
        try:
            record = to_messages(item, fmt)
        except (ValueError, KeyError, TypeError) as e:
            reason = str(e) if isinstance(e, ValueError) else f"not in the {fmt} format (missing {e})"
            problems.append(f"{where}: {reason}")
            continue
        bad = conversation_problems(record)
        if bad:
            problems.append(f"{where}: " + "; ".join(bad))
        else:
            records.append(record)
            formats[fmt] = formats.get(fmt, 0) + 1
    if on_error == "raise":
        if problems:
            raise ConversationFormatError(problems, encoding)
        return records
    return records, SkipReport(str(path), loaded=len(records), skipped=problems, encoding=encoding,
                               formats=formats)
