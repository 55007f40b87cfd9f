"""`load_conversations`: every bad record is reported as `file:line: reason`; skip mode keeps the rest."""

import json
import re
from pathlib import Path

import pytest

from sft_helpers.data import ConversationFormatError, SkipReport, load_conversations
from sft_helpers.world import SPLITS

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


def test_committed_split_files_are_exactly_the_splits():
    found = {p.name for p in DATA.glob("sft_*.jsonl")} - {"sft_train_duplicates.jsonl"}
    assert found == {f"sft_{s}.jsonl" for s in SPLITS}


@pytest.mark.parametrize("split", SPLITS)
def test_committed_split_loads_without_error(split):
    path = DATA / f"sft_{split}.jsonl"
    records = load_conversations(path)
    n_lines = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    assert len(records) == n_lines > 0
    _, report = load_conversations(path, on_error="skip")
    assert report.skipped == []
