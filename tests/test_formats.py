"""Chat data in the formats engineers have (messages with content blocks, prompt/completion,
ShareGPT, Alpaca) and the files they keep it in (JSONL, JSON, CSV, Parquet) read as messages, with
`file:line` problems; `sft-train` trains each from a 20-record file."""

import csv
import json

import pytest

from sft_helpers.course.data import load_split
from sft_helpers.records import ConversationFormatError, detect_format, load_conversations, to_messages
from sft_helpers.recipe import main


def single_turn(n: int = 20) -> list[dict]:
    """`n` training conversations of one user turn and one reply (no system prompt)."""
    out = []
    for r in load_split("train"):
        msgs = [m for m in r["messages"] if m["role"] != "system"]
        if len(msgs) == 2:
            out.append({"messages": msgs})
        if len(out) == n:
            return out
    raise AssertionError("not enough single-turn conversations")


def as_format(record: dict, fmt: str) -> dict:
    """`record` (one user turn, one reply) written in `fmt`."""
    user, reply = (m["content"] for m in record["messages"])
    return {
        "messages": record,
        "content_blocks": {"messages": [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                                        for m in record["messages"]]},
        "prompt_completion": {"prompt": user, "completion": reply},
        "conversational_prompt_completion": {"prompt": record["messages"][:1], "completion": record["messages"][1:]},
        "sharegpt": {"conversations": [{"from": "human", "value": user}, {"from": "gpt", "value": reply}]},
        "alpaca": {"instruction": user, "input": "", "output": reply},
    }[fmt]


FORMATS = ("messages", "content_blocks", "prompt_completion", "conversational_prompt_completion", "sharegpt",
           "alpaca")


def write(path, records: list[dict]) -> None:
    """`records` into `path` as its suffix says (JSONL, JSON, CSV with JSON-text cells, Parquet)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(records), encoding="utf-8")
    elif path.suffix == ".csv":
        keys = sorted({k for r in records for k in r})
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, keys)
            w.writeheader()
            for r in records:
                w.writerow({k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()})
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_format_in_every_file_type_reads_as_the_same_messages(tmp_path, fmt, suffix):
    records = single_turn()
    path = tmp_path / f"data{suffix}"
    write(path, [as_format(r, fmt) for r in records])
    got, report = load_conversations(path, on_error="skip")
    assert report.skipped == []
    assert [g["messages"] for g in got] == [r["messages"] for r in records]
    detected = "messages" if fmt == "content_blocks" else fmt
    assert report.formats == {detected: 20}
    assert (detected == "messages") == ("converted to messages" not in str(report))


def test_detection_and_a_record_in_no_format():
    assert [detect_format(as_format(single_turn(1)[0], f)) for f in FORMATS] == [
        "messages", "messages", "prompt_completion", "conversational_prompt_completion", "sharegpt", "alpaca"]
    assert to_messages({"instruction": "Sum.", "input": "2, 2", "output": "4", "system": "Be brief."})[
        "messages"][0] == {"role": "system", "content": "Be brief."}
    with pytest.raises(ValueError, match="'conversations' \\(ShareGPT\\)"):
        to_messages({"question": "2+2?", "answer": "4"})


def test_problems_keep_file_and_line_in_every_file_type(tmp_path):
    good = as_format(single_turn(1)[0], "sharegpt")
    bad = {"conversations": [{"from": "human", "value": "Hi"}]}  # no reply
    for suffix, where in ((".jsonl", ":2: "), (".json", ": record 2: "), (".csv", ":3: "), (".parquet", ": row 2: ")):
        path = tmp_path / f"d{suffix}"
        write(path, [good, bad])
        with pytest.raises(ConversationFormatError) as e:
            load_conversations(path)
        assert e.value.problems == [f"{path}{where}no assistant turn"], suffix


def test_a_parquet_file_is_not_read_as_text(tmp_path):
    """Before, Parquet went through the JSONL reader: every line 'cannot decode as UTF-8 ... Latin-1?'."""
    path = tmp_path / "d.parquet"
    write(path, single_turn(3))
    records, report = load_conversations(path, on_error="skip")
    assert len(records) == 3 and report.skipped == [] and "Latin-1" not in str(report)


@pytest.mark.parametrize("fmt,suffix", [("sharegpt", ".jsonl"), ("alpaca", ".csv"), ("prompt_completion", ".parquet"),
                                        ("conversational_prompt_completion", ".json"), ("content_blocks", ".jsonl")])
def test_sft_train_trains_each_format(tmp_path, capsys, one_thread, fmt, suffix):
    path = tmp_path / f"train{suffix}"
    write(path, [as_format(r, fmt) for r in single_turn()])
    args = ["--train", str(path)]
    common = args + ["--method", "full", "--save", "model", "--max_steps", "2", "--batch_size", "4",
                     "--output_dir", str(tmp_path / "run")]
    assert main(common + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "20 records read" in out and "dry run: config and data OK" in out
    assert ("records read as" in out) == (fmt not in ("messages", "content_blocks"))
    assert main(common) == 0
    logged = [json.loads(ln) for ln in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 2


def test_readme_formats_example_runs(run_readme_example):
    run = run_readme_example("### Your own data: formats")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "converted to messages: 1 ShareGPT" in run.stdout and "1 Alpaca" in run.stdout
