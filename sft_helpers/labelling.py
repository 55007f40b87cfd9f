"""`build_labels` for large data: the same labels as Arrow columns, from a cached, multi-process map.

`label_dataset` runs `masking.label_record` (the whole of `build_labels`' per-record work: the checks,
the mask, the self-check, truncation, the drops and their reasons) over a `datasets.Dataset` with
`Dataset.map(batched=True, num_proc=...)`. The labelled examples are written to an Arrow file and
memory-mapped: `input_ids` and `labels` int32 (`loss_weights` float32 with a prompt weight), `id`
and `task`; what `packing.pack_dataset_columnar` packs and the collators batch. The file is named
by `labels_fingerprint`, so labelling the same data with the same tokenizer and settings again
reopens it instead of labelling again (with `num_proc`, each worker's finished shard is reused too).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .masking import LabelReport, check_label_settings, label_record

if TYPE_CHECKING:
    from datasets import Dataset

HELPER_COLUMNS = ("dropped", "truncated")  # per input record, read into the report, then removed


def _features(prompt_weight: float | None):
    from datasets import Features, List, Value

    columns = {"input_ids": List(Value("int32")), "labels": List(Value("int32")), "id": Value("string"),
               "task": Value("string"), "dropped": Value("string"), "truncated": Value("bool")}
    if prompt_weight is not None:
        columns["loss_weights"] = List(Value("float32"))
    return Features(columns)


def plain_record(row: dict) -> dict:
    """A record as it was written before Arrow filled in missing keys with None: the None values of
    the record and of its messages left out (a template may test `message.name is defined`).

    >>> plain_record({"id": None, "messages": [{"role": "user", "content": "Hi", "name": None}]})
    {'messages': [{'role': 'user', 'content': 'Hi'}]}
    """
    out = {k: v for k, v in row.items() if v is not None}
    if isinstance(out.get("messages"), list):
        out["messages"] = [{k: v for k, v in m.items() if v is not None} if isinstance(m, dict) else m
                           for m in out["messages"]]
    return out


def _label_batch(batch: dict, indices: list[int], tokenizer, settings: dict) -> dict:
    """`datasets.map` function: one output row per input record (dropped ones empty, with the reason)."""
    out = {k: [] for k in ("input_ids", "labels", "loss_weights", "id", "task", *HELPER_COLUMNS)}
    for n, i in enumerate(indices):
        ex, reason, cut = label_record(plain_record({k: v[n] for k, v in batch.items()}), i, tokenizer,
                                       **settings)
        ex = ex or {"input_ids": [], "labels": [], "loss_weights": [], "id": None, "task": None}
        for k in ("input_ids", "labels", "loss_weights"):
            out[k].append(ex.get(k, []))
        for k in ("id", "task"):
            out[k].append(None if ex[k] is None else str(ex[k]))
        out["dropped"].append(reason)
        out["truncated"].append(cut)
    if settings["prompt_weight"] is None:
        del out["loss_weights"]
    return out


def _source_hash(*modules: str) -> str:
    here = Path(__file__).resolve().parent
    return hashlib.sha256(b"".join((here / m).read_bytes() for m in modules)).hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides a tokenizer's ids: its vocabulary and rules (the fast tokenizer's JSON,
    else the vocabulary), special tokens and chat template."""
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items())
    return Hasher.hash([rules, tokenizer.chat_template, sorted(tokenizer.special_tokens_map.items())])


def labels_fingerprint(data: Dataset, tokenizer, settings: dict) -> str:
    """The labelled dataset's fingerprint: a hash of the input's `datasets` fingerprint (for a JSON
    file: its path and modification time; for a saved folder: its state), `tokenizer_fingerprint`,
    the label settings (mode, max_length, truncation, prompt_weight) and the source of `masking.py`
    and this module (a change in the labelling code labels again)."""
    from datasets.fingerprint import Hasher

    return Hasher.hash([data._fingerprint, tokenizer_fingerprint(tokenizer), sorted(settings.items()),
                        _source_hash("masking.py", "labelling.py", "records.py")])


def _cache_file(data: Dataset, fingerprint: str, cache_dir: str | None) -> str | None:
    """Where the labels go: `cache_dir`, else next to the input's Arrow files (None: in memory, or a
    temporary file with `num_proc`)."""
    from datasets.fingerprint import is_caching_enabled

    folder = cache_dir or (os.path.dirname(data.cache_files[0]["filename"]) if data.cache_files else None)
    if folder is None or not (cache_dir or is_caching_enabled()):
        return None
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"labels-{fingerprint}.arrow")


def label_dataset(data: Dataset | list[dict], tokenizer, mode: str = "completion_only",
                  max_length: int | None = None, truncation: str = "keep_start",
                  prompt_weight: float | None = None, num_proc: int | None = None,
                  cache_dir: str | None = None, checked: bool = False) -> tuple[Dataset, LabelReport]:
    """`build_labels(records, ..., on_error="skip")` as a `datasets.Dataset`: returns `(examples,
    report)` with the same examples (columns `input_ids`, `labels`, `loss_weights` with a prompt
    weight, `id`, `task`) and the same report (kept, truncated, each dropped record's reason, in
    order). `data` is a Dataset of records (a `messages` column; None values, which Arrow gives to
    keys a record lacks, are left out) or a list of records. Labelled by `num_proc` processes,
    written to `labels-<labels_fingerprint>.arrow` in `cache_dir` (default: next to the input's
    Arrow files, when it has some) and memory-mapped; a second call with the same inputs reuses it.
    With `checked`, every record is known to be a valid conversation (`train.read_dataset` checked
    them while reading) and `label_record` does not check it again.

    >>> from sft_helpers.models import load_tokenizer
    >>> msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes."}]
    >>> tok = load_tokenizer("tiny", verbose=False)
    >>> ds, report = label_dataset([{"messages": msgs}, {"messages": msgs[:1]}], tok)
    >>> ds.column_names, report.kept, report.dropped
    (['input_ids', 'labels', 'id', 'task'], 1, ['#1: bad conversation: no assistant turn'])
    """
    import numpy as np
    import pyarrow.compute as pc
    from datasets import Dataset

    check_label_settings(mode, on_error="skip")
    if isinstance(data, list):
        data = Dataset.from_list(data)
    if not len(data):
        features = _features(prompt_weight)
        empty = Dataset.from_dict({k: [] for k in features}, features=features)
        return empty.remove_columns(list(HELPER_COLUMNS)), LabelReport()
    settings = {"mode": mode, "max_length": max_length, "truncation": truncation,
                "prompt_weight": prompt_weight, "on_error": "skip", "checked": checked}
    fingerprint = labels_fingerprint(data, tokenizer, settings)
    if num_proc and num_proc > 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread per worker, no fork warning
    labelled = data.map(_label_batch, with_indices=True, batched=True, remove_columns=data.column_names,
                        fn_kwargs={"tokenizer": tokenizer, "settings": settings},
                        features=_features(prompt_weight),
                        num_proc=num_proc if num_proc and num_proc > 1 and len(data) > 1 else None,
                        cache_file_name=_cache_file(data, fingerprint, cache_dir),
                        new_fingerprint=fingerprint,
                        desc=f"labelling ({mode if prompt_weight is None else 'prompt weight'})")
    table = labelled.data
    dropped = pc.drop_null(table.column("dropped")).to_pylist()
    truncated = pc.sum(table.column("truncated")).as_py() or 0
    report = LabelReport(kept=len(labelled) - len(dropped), truncated=truncated, dropped=dropped)
    if dropped:  # keep the labelled rows, contiguous on disk (what the packer reads without a copy)
        kept = np.flatnonzero(pc.is_null(table.column("dropped")).to_numpy(zero_copy_only=False))
        out = _cache_file(data, f"{fingerprint}-kept", cache_dir)
        labelled = labelled.select(kept).flatten_indices(cache_file_name=out,
                                                         new_fingerprint=f"{fingerprint}k")
    return labelled.remove_columns(list(HELPER_COLUMNS)), report
