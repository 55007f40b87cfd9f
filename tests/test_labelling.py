"""`labelling.label_dataset`: the labels of `build_labels` as memory-mapped Arrow columns, cached."""

from __future__ import annotations

import os

import pytest

from sft_helpers.collators import PaddedCollator
from sft_helpers.course.data import load_split
from sft_helpers.labelling import label_dataset, labels_fingerprint
from sft_helpers.masking import build_labels
from sft_helpers.models import load_tokenizer
from sft_helpers.packing import pack_dataset_columnar, pack_examples


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny", verbose=False)


@pytest.fixture(scope="module")
def records():
    """Every 4th conversation of the course's training split, and three that are dropped: no assistant
    turn, no id (so named by its position), and a reply that is only whitespace."""
    recs = load_split("train")[::4]
    recs.insert(5, {"id": "planted-no-reply", "messages": recs[5]["messages"][:-1]})
    recs.insert(9, {"messages": recs[9]["messages"]})
    recs.insert(12, {"id": "planted-blank", "messages": [*recs[12]["messages"][:-1],
                                                          {"role": "assistant", "content": "  "}]})
    return recs


def _columns(examples: list[dict]) -> list[tuple]:
    """What training reads of each example; loss weights as the float32 the collators make of them."""
    import numpy as np

    return [(list(e["input_ids"]), list(e["labels"]), np.float32(e.get("loss_weights", [])).tolist(),
             str(e["id"]), e["task"]) for e in examples]


@pytest.mark.parametrize("settings", [
    {"mode": "full"},
    {"mode": "completion_only", "max_length": 48, "truncation": "keep_end"},
    {"mode": "assistant_only", "max_length": 40, "truncation": "keep_start"},
    {"mode": "completion_only", "prompt_weight": 0.1},
    {"mode": "full", "max_length": 40, "truncation": "drop"},
])
def test_same_labels_and_report_as_build_labels(tok, records, settings):
    expected, expected_report = build_labels(records, tok, on_error="skip", **settings)
    labelled, report = label_dataset(records, tok, num_proc=2 if settings["mode"] == "full" else None,
                                     **settings)
    assert _columns(labelled.to_list()) == _columns(expected)
    assert report == expected_report  # kept, truncated, and every dropped record's reason, in order
    assert {"planted-no-reply", "planted-blank"} <= {r.split(":")[0] for r in report.dropped}
    assert labelled.features["input_ids"].feature.dtype == "int32"
    cuts = settings.get("truncation") in ("keep_start", "keep_end")
    assert report.truncated > 0 if cuts else not report.truncated


def test_output_feeds_the_packer_and_the_collators(tok, records):
    expected, _ = build_labels(records, tok, "completion_only", on_error="skip")
    labelled, _ = label_dataset(records, tok, "completion_only")
    packed, stats = pack_dataset_columnar(labelled, 256, shuffle_seed=0)
    rows, expected_stats = pack_examples(expected, 256, shuffle_seed=0)
    assert packed.to_list() == rows and stats == expected_stats
    as_numpy = [labelled.with_format("numpy")[i] for i in range(4)]
    collate = PaddedCollator(tok.pad_token_id)
    batch, expected_batch = collate(as_numpy), collate(expected[:4])
    assert all(batch[k].equal(expected_batch[k]) and batch[k].dtype == expected_batch[k].dtype for k in batch)


def test_a_second_call_reopens_the_cached_labels(tok, records, tmp_path):
    from datasets import Dataset, load_from_disk

    Dataset.from_list(records[:40]).save_to_disk(str(tmp_path / "data"))
    data = load_from_disk(str(tmp_path / "data"))
    settings = {"mode": "completion_only", "max_length": None, "truncation": "keep_start",
                "prompt_weight": None, "on_error": "skip", "checked": False}
    first, report = label_dataset(data, tok)
    assert report.dropped  # so the kept rows went to a second cached file too
    files = [f["filename"] for f in first.cache_files]
    name = f"labels-{labels_fingerprint(data, tok, settings)}"
    assert [os.path.basename(f) for f in files] == [f"{name}-kept.arrow"]
    assert (tmp_path / "data" / f"{name}.arrow").exists()
    stamps = {f: os.stat(f).st_mtime_ns for f in tmp_path.joinpath("data").glob("labels-*.arrow")}
    second, second_report = label_dataset(load_from_disk(str(tmp_path / "data")), tok)
    assert [f["filename"] for f in second.cache_files] == files and second_report == report
    assert {f: os.stat(f).st_mtime_ns for f in stamps} == stamps  # reopened, not written again
    assert second.to_list() == first.to_list()
    other, _ = label_dataset(data, tok, "full")  # other settings: another file
    assert [f["filename"] for f in other.cache_files] != files
    cached, _ = label_dataset(records[:5], tok, cache_dir=str(tmp_path / "cache"))  # in memory, cache_dir
    assert cached.cache_files[0]["filename"].startswith(str(tmp_path / "cache" / "labels-"))


def test_checked_records_are_not_checked_again(tok, monkeypatch):
    """sft-train checks every record while reading (train.read_dataset); labelling with checked=True
    must not run conversation_problems a second time, and must give the same labels."""
    import sft_helpers.masking as masking

    records = load_split("train")[:20]  # valid conversations
    want, _ = label_dataset(records, tok)
    calls = []
    real = masking.conversation_problems
    monkeypatch.setattr(masking, "conversation_problems", lambda r: calls.append(1) or real(r))
    got, report = label_dataset(records, tok, checked=True)
    assert not calls and report.kept == 20 and got["input_ids"] == want["input_ids"]
    label_dataset(records, tok)
    assert len(calls) == 20  # unchecked input is checked, once per record


def test_sft_train_labels_checked_records(monkeypatch):
    import sft_helpers.labelling as labelling
    from sft_helpers import recipe as train

    seen = {}
    real = labelling.label_dataset
    monkeypatch.setattr(labelling, "label_dataset", lambda *a, **kw: seen.update(kw) or real(*a, **kw))
    cfg = train.load_config("full-tiny", ["--max_train_examples", "8", "--max_eval_examples", "2"])
    data = train.prepare(cfg, load_tokenizer("tiny", verbose=False))
    assert seen.get("checked") is True and data["label_report"].kept == 8
