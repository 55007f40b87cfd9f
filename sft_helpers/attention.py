"""Attention across packed samples: the block-diagonal mask, and checks that nothing leaks (lesson 02).

Packing puts several samples in one row. They stay independent only if every token attends to
earlier tokens *of its own sample*: a block-diagonal causal mask. transformers builds that mask
itself (sdpa, eager, flex) when three things hold: `position_ids` restart at 0 for every sample, no
`attention_mask` is passed, and `use_cache=False`. Flash-attn variants take another road: they read
the samples from `cu_seq_lens_q/k` + `max_length_q/k` when given, and from position restarts only when
the batch is a single row, so several packed rows without `cu_seq_lens` leak under flash-attn.

`attention_blocks` asks transformers' own functions which tokens it will let attend to each other
for a batch and an attention implementation; `check_packed_batch` refuses, with the reason, any batch
that would leak; `check_no_leakage` runs the packed row the right way and the three naive ways and
compares each with the samples run one by one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.masking_utils import find_packed_sequence_indices
from transformers.modeling_flash_attention_utils import (_get_unpad_data, _is_packed_sequence,
                                                         prepare_fa_kwargs_from_position_ids)
from transformers.utils.generic import is_flash_attention_requested

from .collators import PaddingFreeCollator
from .masking import IGNORE

# attentions whose mask transformers builds from position restarts (masking_utils) when no
# attention_mask and no cache are given
MASK_ATTENTIONS = ("sdpa", "eager", "flex_attention")
FLASH_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def is_flash(attn_implementation: str) -> bool:
    """True for every flash-attn variant transformers dispatches to its flash path (`flash_attention_2/3/4`,
    kernels such as `kernels-community/flash-attn2`), by transformers' own test.

    >>> is_flash("flash_attention_2"), is_flash("kernels-community/vllm-flash-attn3"), is_flash("sdpa")
    (True, True, False)
    """
    return is_flash_attention_requested(requested_attention_implementation=attn_implementation)


def _positions(batch: dict) -> torch.Tensor | None:
    """The batch's `position_ids` as `[rows, T]` (transformers expands a single row of positions)."""
    pos = batch.get("position_ids")
    return None if pos is None else torch.as_tensor(pos).expand(batch["input_ids"].shape[0], -1)


def attention_blocks(batch: dict, attn_implementation: str) -> torch.Tensor:
    """Which tokens of `batch` (as passed to `model(**batch)`) transformers lets attend to each other
    under `attn_implementation`: a `[rows, T]` tensor of block ids, causal attention staying inside a
    block; -1 for padding dropped by the `attention_mask`. Decided by transformers' own functions, in
    the order its code applies them. Flash variants (`_flash_attention_forward`): the `attention_mask`
    (`_get_unpad_data`) unless it is all ones (then dropped, `masking_utils.flash_attention_mask`), else all
    four `cu_seq_lens_q/k`, `max_length_q/k`, else position restarts when the batch is one row
    (`_is_packed_sequence`, `prepare_fa_kwargs_from_position_ids`), else each row.
    sdpa / eager / flex (`masking_utils`): position restarts (`find_packed_sequence_indices`) when there
    is no `attention_mask` and no cache (a `use_cache` left out counts as False), else each row.

    >>> pos = torch.tensor([[0, 1, 0, 1], [0, 1, 2, 0]])
    >>> attention_blocks({"input_ids": pos, "position_ids": pos}, "sdpa").tolist()
    [[0, 0, 1, 1], [2, 2, 2, 3]]
    >>> attention_blocks({"input_ids": pos, "position_ids": pos}, "flash_attention_2").tolist()  # leaks
    [[0, 0, 0, 0], [1, 1, 1, 1]]
    >>> one = {"input_ids": pos[:1], "position_ids": pos[:1], "attention_mask": torch.ones_like(pos[:1])}
    >>> attention_blocks(one, "flash_attention_2").tolist()  # the all-ones mask dropped: split by positions
    [[0, 0, 1, 1]]
    """
    ids = torch.as_tensor(batch["input_ids"])
    (rows, width), device = ids.shape, ids.device
    pos, mask = _positions(batch), batch.get("attention_mask")
    if is_flash(attn_implementation):
        every = torch.arange(rows * width, device=device)
        if mask is not None and not bool(torch.as_tensor(mask).all()):  # all ones: dropped (`flash_attention_mask`)
            every, cu, _ = _get_unpad_data(torch.as_tensor(mask))
        elif all(batch.get(k) is not None for k in FLASH_KWARGS):
            cu = torch.as_tensor(batch["cu_seq_lens_q"])
        elif _is_packed_sequence(pos, rows):
            (cu, _), _ = prepare_fa_kwargs_from_position_ids(pos)
        else:
            cu = torch.arange(0, rows * width + 1, width)
        blocks = torch.full((rows * width,), -1, device=device)
        for i, (start, end) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
            blocks[every[start:end]] = i
        return blocks.view(rows, width)
    if attn_implementation not in MASK_ATTENTIONS:
        raise ValueError(f"unknown attention implementation {attn_implementation!r}: neither a flash variant "
                         f"nor one of {MASK_ATTENTIONS}, whose masks transformers builds from position_ids")
    cache = batch.get("use_cache") or batch.get("past_key_values") is not None
    packed = None if pos is None or mask is not None or cache else find_packed_sequence_indices(pos)
    blocks = torch.zeros(rows, width, dtype=torch.long, device=device) if packed is None else packed.long()
    blocks = blocks + torch.arange(rows, device=device)[:, None] * (width + 1)  # no block spans two rows
    if mask is not None:
        blocks[torch.as_tensor(mask) == 0] = -1
    kept = blocks >= 0
    blocks[kept] = torch.unique(blocks[kept], return_inverse=True)[1]  # number the blocks 0, 1, 2, ...
    return blocks


def check_packed_batch(batch: dict, attn_implementation: str) -> None:
    """Raise a `ValueError` saying why and what to do when `batch`, passed as `model(**batch)` (a
    `use_cache` left out means `use_cache=False`, as `train_sft` passes), would let a packed sample
    attend to another under `attn_implementation`; return `None` for a safe batch. A batch is packed
    when its `position_ids` restart inside a row or it carries `cu_seq_lens`. Refused: an
    `attention_mask` with a packed batch; a cache under sdpa/eager/flex; restarts not at 0, or
    `cu_seq_lens` without `position_ids` or other than the position restarts; some but not all of
    `cu_seq_lens_q/k`, `max_length_q/k`; several packed rows without them under a flash variant;
    an attention transformers builds no packed mask for. Batches of `PackedCollator`,
    `PaddingFreeCollator` and `PaddedCollator` pass under sdpa, eager, flex and every flash variant.

    >>> pos = torch.tensor([[0, 1, 0, 1], [0, 1, 2, 0]])
    >>> check_packed_batch({"input_ids": pos, "position_ids": pos}, "sdpa")
    >>> check_packed_batch({"input_ids": pos, "position_ids": pos}, "flash_attention_2")
    Traceback (most recent call last):
    ...
    ValueError: 2 packed rows without cu_seq_lens_q/k and max_length_q/k under flash_attention_2: ...
    """
    pos, mask = _positions(batch), batch.get("attention_mask")
    given = [k for k in FLASH_KWARGS if batch.get(k) is not None]
    restarts = pos is not None and find_packed_sequence_indices(pos) is not None
    if not restarts and not given:
        return  # one sample per row: nothing to leak
    fix = ("use PackedCollator or PaddingFreeCollator (positions restarting at 0, cu_seq_lens, "
           "no attention_mask)")
    if 0 < len(given) < len(FLASH_KWARGS):
        raise ValueError(f"the batch has {given} but not all of {FLASH_KWARGS}: flash-attn then ignores them "
                         f"and reads samples from position_ids of single-row batches only; {fix}")
    if mask is not None:
        raise ValueError("an attention_mask with packed samples (position restarts or cu_seq_lens): each "
                         "whole row is then one sequence (sdpa/eager/flex ignore the restarts, flash-attn "
                         "unpads by the mask and ignores cu_seq_lens), so samples see each other; drop "
                         f"attention_mask ({fix}) or pad instead of packing (PaddedCollator)")
    if pos is None:
        raise ValueError("cu_seq_lens without position_ids: sdpa/eager ignore cu_seq_lens, and positions run "
                         f"on across samples (RoPE) under any attention; {fix}")
    starts = torch.ones_like(pos, dtype=torch.bool)
    starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    if (pos[starts] != 0).any():
        raise ValueError("position_ids restart at a value other than 0: flash-attn splits samples where "
                         "the position is the minimum, sdpa/eager where it does not go up by 1, so they "
                         f"disagree; {fix}")
    if given:
        (cu, _), (longest, _) = prepare_fa_kwargs_from_position_ids(pos)
        for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
            if not torch.equal(torch.as_tensor(batch[key]).to(cu), cu):
                raise ValueError(f"{key} {torch.as_tensor(batch[key]).tolist()} are not the sample "
                                 f"boundaries of position_ids over the flattened rows ({cu.tolist()}); {fix}")
        if min(int(batch["max_length_q"]), int(batch["max_length_k"])) < int(longest):
            raise ValueError(f"max_length_q/k below the longest sample ({int(longest)} tokens): flash-attn "
                             f"would cut it; {fix}")
    if is_flash(attn_implementation):
        if not given and pos.shape[0] > 1:
            raise ValueError(f"{pos.shape[0]} packed rows without cu_seq_lens_q/k and max_length_q/k under "
                             f"{attn_implementation}: transformers reads samples from position_ids only when "
                             "the batch is one row (_is_packed_sequence), so every sample attends to the "
                             f"samples before it in its row; {fix}, or one row per batch")
    elif attn_implementation not in MASK_ATTENTIONS:
        raise ValueError(f"packed samples under attention {attn_implementation!r}: transformers builds the "
                         f"per-sample mask only for {MASK_ATTENTIONS} and flash variants; load the model "
                         "with one of them, or pad instead of packing (PaddedCollator)")
    elif batch.get("use_cache") or batch.get("past_key_values") is not None:
        raise ValueError(f"packed samples with a cache under {attn_implementation}: transformers skips the "
                         "per-sample mask when there is a cache; pass use_cache=False")


def attention_scores(rows: list[list[int]], row_length: int | None = None) -> dict[str, int]:
    """Attention scores one layer and head computes for a batch of rows holding samples of the given
    lengths: `dense` is what sdpa and eager compute (every query against every key of its row, the
    causal / block-diagonal mask applied afterwards; each row `row_length` long, else as long as its
    samples), `varlen` what flash-attn's varlen kernel computes (each sample against itself only).
    Packing into several short rows beats one long padding-free row under sdpa; with varlen both
    cost the same.

    >>> attention_scores([[4, 3, 5]]), attention_scores([[4], [3, 5]], row_length=8)
    ({'dense': 144, 'varlen': 50}, {'dense': 128, 'varlen': 50})
    """
    dense = sum((row_length or sum(r)) ** 2 for r in rows)
    return {"dense": dense, "varlen": sum(n * n for r in rows for n in r)}


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
