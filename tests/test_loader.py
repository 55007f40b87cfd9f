"""`load_conversations`: every bad record is reported as `file:line: reason`; skip mode keeps the rest."""

import codecs
import json
import re
from pathlib import Path

import pytest

from sft_helpers.records import ConversationFormatError, SkipReport, conversation_problems, load_conversations
from sft_helpers.course.world import SPLITS

DATA = Path(__file__).resolve().parent.parent / "data"


def _good(i: int) -> dict:
    return {"id": f"good-{i}", "messages": [{"role": "user", "content": f"Question {i}?"},
                                            {"role": "assistant", "content": f"Answer {i}."}]}


# (kind, raw line, substring the reason must contain); None marks a good record, "" a blank line
LINES = [
    ("good", json.dumps(_good(0)), None),
    ("invalid_json", '{"messages": [{"role": "user", "content": "hi"}', "invalid JSON"),
    ("blank", "", None),
    ("missing_messages", json.dumps({"id": "x", "text": "no messages here"}), "missing 'messages'"),
    ("good", json.dumps(_good(1)), None),
    ("unknown_role", json.dumps({"messages": [{"role": "narrator", "content": "Once upon a time."},
                                              {"role": "assistant", "content": "Go on."}]}),
     "unknown role 'narrator'"),
    ("non_string_content", json.dumps({"messages": [{"role": "user", "content": "What is 2 plus 2?"},
                                                    {"role": "assistant", "content": 4}]}),
     "content is int, not a string"),
    ("blank", "   \t", None),
    ("empty_content", json.dumps({"messages": [{"role": "user", "content": "   "},
                                               {"role": "assistant", "content": "Hello."}]}),
     "empty content"),
    ("no_assistant", json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "Hi?"}]}),
     "no assistant turn"),
    ("good", json.dumps(_good(2)), None),
    ("ends_with_user", json.dumps({"messages": [{"role": "user", "content": "Hi?"},
                                                {"role": "assistant", "content": "Hello."},
                                                {"role": "user", "content": "And then?"}]}),
     "ends with a 'user' turn"),
    ("not_an_object", json.dumps([{"role": "user", "content": "a list, not an object"}]),
     "record is a list, not an object"),
    ("good", json.dumps(_good(3)), None),
]
BAD = {n: reason for n, (kind, _, reason) in enumerate(LINES, start=1) if reason is not None}
GOOD = [json.loads(line) for kind, line, _ in LINES if kind == "good"]
NON_BLANK = sum(1 for kind, _, _ in LINES if kind != "blank")
PROBLEM_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<reason>.+)$")


@pytest.fixture
def malformed(tmp_path) -> Path:
    path = tmp_path / "malformed_chat.jsonl"
    path.write_text("\n".join(line for _, line, _ in LINES) + "\n", encoding="utf-8")
    return path


def test_raise_lists_every_bad_record_with_file_and_line(malformed):
    with pytest.raises(ConversationFormatError) as exc:
        load_conversations(malformed)
    problems = exc.value.problems
    assert len(problems) == len(BAD), "exactly one problem line per bad record"
    seen = {}
    for p in problems:
        m = PROBLEM_LINE.match(p)
        assert m, f"not 'file:line: reason': {p!r}"
        assert m["file"] == str(malformed) and Path(m["file"]).name == "malformed_chat.jsonl"
        seen[int(m["line"])] = m["reason"]
    assert set(seen) == set(BAD), "line numbers must be the bad lines, counting blank lines"
    for lineno, expected in BAD.items():
        assert expected in seen[lineno], f"line {lineno}: {seen[lineno]!r} lacks {expected!r}"
    # the message itself carries every problem, so a user sees them all at once
    message = str(exc.value)
    assert message.startswith(f"{len(BAD)} bad record(s)")
    assert all(p in message for p in problems)
    assert isinstance(exc.value, ValueError)


def test_skip_returns_good_records_and_report(malformed):
    records, report = load_conversations(malformed, on_error="skip")
    assert records == GOOD
    assert isinstance(report, SkipReport)
    assert report.path == str(malformed)
    assert report.loaded == len(GOOD)
    assert len(report.skipped) == len(BAD)
    assert report.loaded + len(report.skipped) == NON_BLANK
    with pytest.raises(ConversationFormatError) as exc:
        load_conversations(malformed)
    assert report.skipped == exc.value.problems
    text = str(report)
    assert f"loaded {len(GOOD)}, skipped {len(BAD)}" in text
    assert all(s in text for s in report.skipped)


def test_skip_on_clean_file_skips_nothing(tmp_path):
    path = tmp_path / "clean.jsonl"
    path.write_text("".join(json.dumps(g) + "\n" for g in GOOD) + "\n", encoding="utf-8")
    assert load_conversations(path) == GOOD
    records, report = load_conversations(path, on_error="skip")
    assert records == GOOD and report.loaded == len(GOOD) and report.skipped == []


@pytest.mark.parametrize("on_error", ["ignore", "warn", "", None, "RAISE"])
def test_invalid_on_error_raises_value_error(malformed, on_error):
    with pytest.raises(ValueError, match="on_error") as exc:
        load_conversations(malformed, on_error=on_error)
    # a plain ValueError about the argument, not a format error about the file
    assert type(exc.value) is ValueError


def test_committed_split_files_are_exactly_the_splits_and_their_variants():
    side_files = {"sft_train_duplicates.jsonl", "sft_train_paraphrases.jsonl", "sft_train_paraphrase_pairs.jsonl",
                  "sft_train_noisy.jsonl", "sft_test_reworded.jsonl", "sft_train_narrow_phrasing.jsonl"}
    found = {p.name for p in DATA.glob("sft_*.jsonl")} - side_files
    assert found == {f"sft_{s}.jsonl" for s in SPLITS}


@pytest.mark.parametrize("split", SPLITS)
def test_committed_split_loads_without_error(split):
    path = DATA / f"sft_{split}.jsonl"
    records = load_conversations(path)
    n_lines = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    assert len(records) == n_lines > 0
    _, report = load_conversations(path, on_error="skip")
    assert report.skipped == []


# --- encodings: files as editors and exporters write them ---------------------------------------

def _accented(i: int) -> dict:  # non-ASCII text, so a wrong decoding cannot go unnoticed
    return {"id": f"enc-{i}", "messages": [{"role": "user", "content": f"Où est Velm, n° {i}? 日本"},
                                           {"role": "assistant", "content": f"Velm est à l'est. — {i} ✓"}]}


ACCENTED = [_accented(i) for i in range(3)]
# (codec, byte order mark, newline, label); Windows Notepad writes "UTF-16 LE" with BOM and CRLF
ENCODINGS = [("utf-8", b"", "\n", "UTF-8"), ("utf-8", codecs.BOM_UTF8, "\r\n", "UTF-8 with BOM"),
             ("utf-16-le", codecs.BOM_UTF16_LE, "\r\n", "UTF-16 LE with BOM"),
             ("utf-16-be", codecs.BOM_UTF16_BE, "\n", "UTF-16 BE with BOM"),
             ("utf-32-le", codecs.BOM_UTF32_LE, "\n", "UTF-32 LE with BOM"),
             ("utf-16-le", b"", "\n", "UTF-16 LE without BOM")]


@pytest.mark.parametrize("codec,bom,newline,label", ENCODINGS, ids=[e[3] for e in ENCODINGS])
def test_reads_utf8_with_or_without_bom_and_utf16_with_bom(tmp_path, codec, bom, newline, label):
    path = tmp_path / "exported.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in ACCENTED]
    path.write_bytes(bom + newline.join(lines[:2] + ["", lines[2], ""]).encode(codec))
    assert load_conversations(path) == ACCENTED
    records, report = load_conversations(path, on_error="skip")
    assert records == ACCENTED and report.skipped == [] and report.encoding == label
    plain = label == "UTF-8"  # the report of a plain UTF-8 file reads as before; others say what was detected
    assert str(report) == f"{path}: loaded 3, skipped 0" + ("" if plain else f" (read as {label})")
    # a bad record in such a file is still reported at its line (the blank line 3 counts)
    path.write_bytes(bom + newline.join(lines[:2] + ["", "{oops", lines[2]]).encode(codec))
    with pytest.raises(ConversationFormatError) as exc:
        load_conversations(path)
    assert exc.value.problems == [f"{path}:4: invalid JSON (Expecting property name enclosed in double "
                                  "quotes at column 2)"]
    assert (label in str(exc.value)) != plain


def test_undecodable_bytes_are_file_line_reason_not_unicode_error(tmp_path):
    path = tmp_path / "latin1_line.jsonl"
    good = [json.dumps(r, ensure_ascii=False).encode() for r in ACCENTED]
    latin1 = json.dumps(_accented(9), ensure_ascii=False).encode("latin-1", errors="replace")  # é as 0xe9
    path.write_bytes(b"\n".join([good[0], latin1, good[1], b'{"messages": "\xff\xfe"}', good[2]]) + b"\n")
    with pytest.raises(ConversationFormatError) as exc:
        load_conversations(path)
    problems = exc.value.problems
    assert [int(PROBLEM_LINE.match(p)["line"]) for p in problems] == [2, 4]
    col = latin1.decode("latin-1").index("ù") + 1
    assert problems[0].startswith(f"{path}:2: cannot decode as UTF-8 at column {col}: "
                                  "bytes f9 (invalid start byte)")
    assert "and 2 more undecodable run(s)" in problems[0] and "Latin-1" in problems[0]
    assert problems[1].startswith(f"{path}:4: cannot decode as UTF-8 at column 15: "
                                  "bytes ff (invalid start byte)")
    records, report = load_conversations(path, on_error="skip")
    assert records == ACCENTED and report.skipped == problems and report.loaded == 3


def test_undecodable_utf16_is_reported_at_its_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-16-le") for r in ACCENTED]
    lone_surrogate = '{"id": "'.encode("utf-16-le") + b"\x00\xd8" + '"}'.encode("utf-16-le")
    nl = "\n".encode("utf-16-le")
    path.write_bytes(codecs.BOM_UTF16_LE + nl.join([lines[0], lone_surrogate, lines[1], lines[2]]) + b"\n")
    records, report = load_conversations(path, on_error="skip")  # the last byte is half a character
    assert records == ACCENTED[:2] and report.encoding == "UTF-16 LE with BOM"
    assert [s.split(": ")[0] for s in report.skipped] == [f"{path}:2", f"{path}:4"]
    assert report.skipped[0].endswith("cannot decode as UTF-16 LE with BOM at column 9: bytes 00 d8 "
                                      "(illegal UTF-16 surrogate)")
    assert "truncated data" in report.skipped[1]


def test_missing_fields_and_odd_roles_are_reasons_not_crashes():
    msgs = [{"role": ["user"], "content": "Hi"}, {"content": "Hi"}, {"role": "user"},
            {"role": "assistant", "content": "Hello."}]
    assert conversation_problems({"messages": msgs}) == [
        "message 0: unknown role ['user'] (expected one of ['assistant', 'system', 'tool', 'user'])",
        "message 1: missing 'role'", "message 2: missing 'content'"]
    odd = conversation_problems({"messages": [{"role": {"r": 1}, "content": "x"}]})
    assert odd[0].startswith("message 0: unknown role {'r': 1}")
