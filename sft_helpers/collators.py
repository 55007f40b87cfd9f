"""Collators that turn labelled examples into tensors for `transformers.Trainer` (or any loop).

A collator is called on a list of feature dicts (`input_ids`, `labels`, optionally `loss_weights`)
and returns a dict of tensors. Extra keys such as `id` or `task` are ignored.
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
            return [list(f[key]) + [value] * (width - len(f[key])) for f in features]

        batch = {"input_ids": torch.tensor(pad("input_ids", self.pad_token_id)),
                 "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"]))
                                                 for f in features]),
                 "labels": torch.tensor(pad("labels", IGNORE))}
        if "loss_weights" in features[0]:
            batch["loss_weights"] = torch.tensor(pad("loss_weights", 0.0), dtype=torch.float32)
        return batch


class PaddingFreeCollator:
    """Flatten a whole batch into one row with no padding (lesson 02, in progress): `input_ids`,
    `labels` and `position_ids` of shape `[1, total]`, positions restarting at 0 for every sample and
    the first label of each sample set to -100 (it would otherwise be predicted from the previous
    sample), plus `cu_seq_lens_q/k` and `max_length_q/k` for flash-attn's varlen kernels. No
    `attention_mask`: transformers then detects the packed samples from the position restarts and
    keeps attention inside each one (sdpa/eager with `use_cache=False`, or flash-attn via cu_seqlens).

    >>> b = PaddingFreeCollator()([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}])
    >>> b["labels"].tolist(), b["position_ids"].tolist(), b["cu_seq_lens_q"].tolist()
    ([[-100, 6, 7, -100, 9]], [[0, 1, 2, 0, 1]], [0, 3, 5])
    """

    def __call__(self, features: list[dict]) -> dict:
        ids, labels, positions, weights, cu = [], [], [], [], [0]
        for f in features:
            n = len(f["input_ids"])
            ids += list(f["input_ids"])
            labels += [IGNORE] + list(f.get("labels", f["input_ids"]))[1:]
            positions += range(n)
            if "loss_weights" in f:
                weights += [0.0] + list(f["loss_weights"])[1:]
            cu.append(cu[-1] + n)
        longest = max(b - a for a, b in zip(cu, cu[1:]))
        batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                 "position_ids": torch.tensor([positions]),
                 "cu_seq_lens_q": torch.tensor(cu, dtype=torch.int32), "cu_seq_lens_k": torch.tensor(cu, dtype=torch.int32),
                 "max_length_q": longest, "max_length_k": longest}
        if weights:
            batch["loss_weights"] = torch.tensor([weights], dtype=torch.float32)
        return batch
