"""Attention across packed samples: the block-diagonal mask, and a check that nothing leaks (lesson 02).

Packing puts several samples in one row. They stay independent only if every token attends to
earlier tokens *of its own sample*: a block-diagonal causal mask. transformers builds that mask
itself (sdpa and eager) when three things hold: `position_ids` restart at 0 for every sample, no
`attention_mask` is passed, and `use_cache=False`. `check_no_leakage` runs the packed row the right
way and the three naive ways and compares each with the samples run one by one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .collators import PaddingFreeCollator
from .masking import IGNORE


def block_diagonal_mask(position_ids) -> torch.Tensor:
    """The boolean `[T, T]` mask a packed row needs: query `q` may attend to key `k` when `k ≤ q` and
    both belong to the same sample (a new sample starts wherever the position does not go up by 1,
    as in transformers' `find_packed_sequence_indices`).

    >>> block_diagonal_mask([0, 1, 0, 1, 2]).int().tolist()
    [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
    """
    pos = torch.as_tensor(position_ids).reshape(-1)
    sample = torch.cat([torch.zeros(1, dtype=torch.long), (pos[1:] != pos[:-1] + 1).long()]).cumsum(0)
    causal = torch.ones(len(pos), len(pos), dtype=torch.bool).tril()
    return causal & (sample[:, None] == sample[None, :])


LEAK_VARIANTS = {
    "correct: positions restart, no mask, use_cache=False": {},
    "naive: positions not reset": {"reset_positions": False},
    "naive: attention_mask passed": {"attention_mask": True},
    "naive: use_cache=True": {"use_cache": True},
}


def _token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token loss over the labels that are not -100, and how many there are."""
    logits, labels = logits[:-1], labels[1:]
    keep = labels != IGNORE
    return F.cross_entropy(logits[keep], labels[keep], reduction="sum").item(), int(keep.sum())


@torch.no_grad()
def check_no_leakage(model, samples: list[dict], tolerance: float = 1e-4) -> list[dict]:
    """Run `samples` (dicts with `input_ids`, optional `labels`) packed in one row, the correct way
    and each naive way of `LEAK_VARIANTS`, and compare with running every sample on its own.

    One row per variant: the largest logit difference on the first sample and on the later ones,
    the packed loss minus the token-weighted loss of the separate runs, and `leaks` (a difference
    above `tolerance`). Works with whatever attention `model` was loaded with (sdpa, eager).

    >>> from sft_helpers import load_model
    >>> model, tok = load_model("tiny")
    >>> rows = check_no_leakage(model, [{"input_ids": tok("Paris is big")["input_ids"]},
    ...                                 {"input_ids": tok("Rome is old")["input_ids"]}])
    >>> [r["leaks"] for r in rows]
    [False, True, True, True]
    """
    model.eval()
    device = model.device
    alone_logits, loss_sum, count = [], 0.0, 0
    for s in samples:
        ids = torch.tensor([s["input_ids"]], device=device)
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
        alone_logits.append(logits)
        part = _token_loss_sum(logits, torch.tensor(s.get("labels", s["input_ids"]), device=device))
        loss_sum, count = loss_sum + part[0], count + part[1]
    alone = torch.cat(alone_logits)
    first = len(samples[0]["input_ids"])
    batch = {k: v.to(device) for k, v in PaddingFreeCollator()(samples).items() if torch.is_tensor(v)}
    rows = []
    for name, v in LEAK_VARIANTS.items():
        kwargs = {"input_ids": batch["input_ids"], "use_cache": v.get("use_cache", False)}
        if v.get("reset_positions", True):
            kwargs["position_ids"] = batch["position_ids"]
        if v.get("attention_mask"):
            kwargs["attention_mask"] = torch.ones_like(batch["input_ids"])
        packed = model(**kwargs).logits[0].float()
        diff = (packed - alone).abs().amax(-1)
        loss = F.cross_entropy(packed[:-1], batch["labels"][0, 1:], ignore_index=IGNORE).item()
        rows.append({"variant": name, "first_sample_diff": diff[:first].max().item(),
                     "later_samples_diff": diff[first:].max().item(), "loss_diff": loss - loss_sum / count,
                     "leaks": bool(diff.max().item() > tolerance)})
    return rows
