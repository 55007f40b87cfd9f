"""Collators that turn labelled examples into tensors for `transformers.Trainer` (or any loop).

A collator is called on a list of feature dicts (`input_ids`, `labels`, optionally `loss_weights`,
and `seq_lengths` for packed rows) and returns a dict of tensors. Extra keys such as `id` or `task`
are ignored. Three ways to batch (lesson 02):

* `PaddedCollator`: right-pad to the longest example, with an `attention_mask`;
* `PackedCollator`: fixed-length rows of several samples (from `packing.pack_examples` or
  `packing.pack_dataset_columnar`), positions restarting per sample, no `attention_mask`, plus
  flash-attn's `cu_seq_lens` over the whole batch;
* `PaddingFreeCollator`: the whole batch as one row, positions restarting, plus flash-attn's
  `cu_seq_lens`.

The two packing collators' batches carry `use_cache=False` (with a cache, transformers would not keep
the samples apart): call `model(**batch)`, as `transformers.Trainer` does.
"""

from __future__ import annotations

import torch

from .masking import IGNORE


class PaddedCollator:
    """Right-pad a batch to its longest example (or a multiple of `pad_to_multiple_of`): pads get
    `pad_token_id` in `input_ids`, 0 in `attention_mask`, -100 in `labels` and weight 0.

    Labels are padded by position, never by token id, so a pad token equal to EOS cannot hide the
    real EOS.

    >>> batch = PaddedCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
    ...                                         {"input_ids": [8], "labels": [8]}])
    >>> batch["labels"].tolist()
    [[-100, 6, 7], [8, -100, -100]]
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

        def pad(key, value):
            return [_as_list(f[key]) + [value] * (width - len(f[key])) for f in features]

        batch = {"input_ids": torch.tensor(pad("input_ids", self.pad_token_id)),
                 "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                                 for f in features]),
                 "labels": torch.tensor(pad("labels", IGNORE))}
        if "loss_weights" in features[0]:
            batch["loss_weights"] = torch.tensor(pad("loss_weights", 0.0), dtype=torch.float32)
        return batch


def _as_list(values) -> list:
    """A list of Python numbers from a list, a numpy array or a tensor (a row of a formatted dataset)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _samples(feature: dict) -> list[tuple[list, list, list | None]]:
    """The samples in one feature: `(input_ids, labels, loss_weights)` per sample, split by
    `seq_lengths` for a packed row (from `pack_examples` or `pack_dataset_columnar`, as lists, numpy
    arrays or tensors), else the feature as one sample. The first label (and weight) of every sample
    is masked: it would be predicted from the previous sample."""
    ids = _as_list(feature["input_ids"])
    labels = _as_list(feature["labels"]) if "labels" in feature else ids
    weights = _as_list(feature["loss_weights"]) if "loss_weights" in feature else None
    packed = feature.get("seq_lengths")
    lengths = (_as_list(packed) if packed is not None else []) or [len(ids)]
    if sum(lengths) != len(ids) or min(lengths) < 1:
        raise ValueError(f"seq_lengths {lengths} do not add up to the row's {len(ids)} tokens")
    out, start = [], 0
    for n in lengths:
        end = start + n
        out.append((ids[start:end], [IGNORE] + labels[start + 1:end],
                    None if weights is None else [0.0] + weights[start + 1:end]))
        start = end
    return out


def flash_attn_kwargs(lengths: list[int]) -> dict:
    """The varlen kwargs transformers hands to flash-attn for blocks of `lengths` tokens laid end to
    end over the flattened batch: `cu_seq_lens_q/k` (int32 cumulative boundaries, flash-attn's
    `cu_seqlens`) and `max_length_q/k` (the longest block). With all four, every flash variant
    (`flash_attention_2/3`, kernels) attends within each block whatever the number of rows;
    sdpa and eager ignore them.

    >>> kw = flash_attn_kwargs([3, 2, 1])
    >>> kw["cu_seq_lens_q"].tolist(), kw["max_length_q"]
    ([0, 3, 5, 6], 3)
    """
    cu = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(), "max_length_q": max(lengths),
            "max_length_k": max(lengths)}


MISSING_BOUNDARIES = (
    "PackedCollator: a packed row without `seq_lengths` (where its samples start): its samples would "
    "train as one sequence, attending to each other. Rows from pack_examples carry them, and "
    "transformers.Trainer drops them unless TrainingArguments(remove_unused_columns=False).")


class PackedCollator:
    """Fixed-length packed rows (from `pack_examples`, or `pack_dataset_columnar` in any format) as a
    batch with no `attention_mask`: `position_ids` restart at 0 for every sample, the first label of
    each sample is -100, and each row is filled up to `max_length` (or the longest row) with pad
    tokens that form a block of their own (positions from 0, labels -100). With sdpa/eager and
    `use_cache=False`, transformers builds the block-diagonal causal mask from the position restarts,
    so no sample sees another. A row without `seq_lengths` is refused (a plain `transformers.Trainer`
    drops the key unless `remove_unused_columns=False`). Flash-attn variants read position restarts
    only when the batch is one row, so the batch also carries `flash_attn_kwargs` of every sample and pad tail over the
    flattened rows: exact with any number of rows under every attention
    (`attention.check_packed_batch` checks a batch).

    >>> b = PackedCollator(pad_token_id=0, max_length=6)([{"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9],
    ...                                                    "seq_lengths": [3, 2]}])
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["position_ids"].tolist()
    ([[5, 6, 7, 8, 9, 0]], [[-100, 6, 7, -100, 9, -100]], [[0, 1, 2, 0, 1, 0]])
    >>> b["cu_seq_lens_q"].tolist(), b["max_length_q"]
    ([0, 3, 5, 6], 3)
    """

    def __init__(self, pad_token_id: int, max_length: int | None = None):
        self.pad_token_id, self.max_length = pad_token_id, max_length

    def __call__(self, features: list[dict]) -> dict:
        width = self.max_length or max(len(f["input_ids"]) for f in features)
        rows = {"input_ids": [], "labels": [], "position_ids": [], "loss_weights": []}
        blocks = []  # token count of every sample and pad tail, row after row
        for f in features:
            if len(f["input_ids"]) > width:
                raise ValueError(f"a packed row has {len(f['input_ids'])} tokens, more than max_length={width}")
            if f.get("seq_lengths") is None:
                raise ValueError(MISSING_BOUNDARIES)
            row = {k: [] for k in rows}
            for ids, labels, weights in _samples(f):
                row["input_ids"] += ids
                row["labels"] += labels
                row["position_ids"] += range(len(ids))
                row["loss_weights"] += weights or []
                blocks.append(len(ids))
            pad = width - len(row["input_ids"])
            blocks += [pad] if pad else []
            row["input_ids"] += [self.pad_token_id] * pad
            row["labels"] += [IGNORE] * pad
            row["position_ids"] += range(pad)
            row["loss_weights"] += [0.0] * pad if "loss_weights" in f else []
            for k in rows:
                rows[k].append(row[k])
        batch = {k: torch.tensor(v) for k, v in rows.items() if k != "loss_weights"}
        if "loss_weights" in features[0]:
            batch["loss_weights"] = torch.tensor(rows["loss_weights"], dtype=torch.float32)
        return {**batch, **flash_attn_kwargs(blocks), "use_cache": False}  # a cache would merge the samples


class PaddingFreeCollator:
    """Flatten a whole batch into one row with no padding: `input_ids`, `labels` and `position_ids`
    of shape `[1, total]`, positions restarting at 0 for every sample and the first label of each
    sample set to -100 (it would otherwise be predicted from the previous sample), plus
    `cu_seq_lens_q/k` (cumulative sample boundaries, flash-attn's `cu_seqlens`) and `max_length_q/k`
    for flash-attn's varlen kernels. No `attention_mask`: transformers then detects the samples from
    the position restarts and keeps attention inside each one (sdpa/eager with `use_cache=False`, or
    flash-attn via cu_seqlens). Packed rows (with `seq_lengths`) are split back into their samples.

    >>> b = PaddingFreeCollator()([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    >>> b["labels"].tolist(), b["position_ids"].tolist(), b["cu_seq_lens_q"].tolist()
    ([[-100, 6, 7, -100, 9]], [[0, 1, 2, 0, 1]], [0, 3, 5])
    """

    def __call__(self, features: list[dict]) -> dict:
        ids, labels, positions, weights, lengths = [], [], [], [], []
        for f in features:
            for sample_ids, sample_labels, sample_weights in _samples(f):
                ids += sample_ids
                labels += sample_labels
                positions += range(len(sample_ids))
                weights += sample_weights or []
                lengths.append(len(sample_ids))
        batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                 "position_ids": torch.tensor([positions]), **flash_attn_kwargs(lengths),
                 "use_cache": False}  # with a cache transformers would not split the samples
        if weights:
            batch["loss_weights"] = torch.tensor([weights], dtype=torch.float32)
        return batch
