"""Packing is exact under every attention implementation, proven with transformers' own functions.

sdpa/eager/flex build the per-sample mask from position restarts; flash-attn variants read samples
from `cu_seq_lens` (or from position restarts only when the batch is one row). The batches of our
collators are checked against the boundaries transformers derives, and any leaking batch is refused.
"""

import pytest
import torch
import torch.nn.functional as F
import transformers.modeling_flash_attention_utils as fau
from transformers.masking_utils import find_packed_sequence_indices

from sft_helpers import load_model
from sft_helpers.course.data import load_split
from sft_helpers.attention import FLASH_KWARGS, attention_blocks, check_packed_batch
from sft_helpers.collators import PackedCollator, PaddedCollator, PaddingFreeCollator
from sft_helpers.masking import build_labels, weighted_lm_loss
from sft_helpers.packing import pack_examples

WIDTH = 256
ATTENTIONS = ["sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3",
              "kernels-community/flash-attn2"]


@pytest.fixture(scope="module")
def data():
    model, tok = load_model("tiny")
    feats, _ = build_labels(load_split("test")[:8], tok, "assistant_only")
    rows, _ = pack_examples(feats, max_length=WIDTH)
    assert len(rows) >= 2 and all(sum(r["seq_lengths"]) < WIDTH for r in rows)  # rows with pad tails
    return model, tok, feats, rows


def blocks_of(rows_of_lengths: list[list[int]], width: int, pad_block: bool) -> torch.Tensor:
    """The blocks a batch should have: consecutive samples of each row, then the pad tail as a block
    of its own (`pad_block`) or -1 (padding masked out)."""
    out, n = [], 0
    for lengths in rows_of_lengths:
        row = []
        for length in lengths:
            row, n = row + [n] * length, n + 1
        tail = width - len(row)
        row, n = row + ([n] if pad_block else [-1]) * tail, n + (1 if pad_block and tail else 0)
        out.append(row)
    return torch.tensor(out)


def same_blocks(expected: torch.Tensor, got: torch.Tensor) -> bool:
    """Whether `got` groups the tokens of `expected`'s blocks (ids >= 0) exactly as `expected` does."""
    keep = expected >= 0
    e, g = expected[keep], got[keep]
    return bool((g >= 0).all()) and torch.equal(e[:, None] == e[None, :], g[:, None] == g[None, :])


def collated(feats, rows, pad_id):
    """Each collator's batch on the same samples, with the blocks it must give."""
    lengths, sizes = [r["seq_lengths"] for r in rows], [len(f["input_ids"]) for f in feats]
    flat = sum(lengths, [])
    return {"packed rows": (PackedCollator(pad_id, WIDTH)(rows), blocks_of(lengths, WIDTH, True)),
            "one packed row": (PackedCollator(pad_id, WIDTH)(rows[:1]), blocks_of(lengths[:1], WIDTH, True)),
            "padding-free": (PaddingFreeCollator()(rows), blocks_of([flat], sum(flat), True)),
            "padded": (PaddedCollator(pad_id)(feats), blocks_of([[n] for n in sizes], max(sizes), False))}


def test_fa2_reads_the_samples_of_two_packed_rows_from_the_batch(data):
    _, tok, _, rows = data
    batch = PackedCollator(tok.pad_token_id, WIDTH)(rows[:2])
    pos = batch["position_ids"]
    assert not fau._is_packed_sequence(pos, batch_size=2)  # transformers alone would not split these rows
    assert find_packed_sequence_indices(pos) is not None  # (sdpa/eager do, from the same positions)
    (cu, _), (longest, _) = fau.prepare_fa_kwargs_from_position_ids(pos)  # its builder on the flattened rows
    samples = [n for r in rows[:2] for n in r["seq_lengths"] + [WIDTH - sum(r["seq_lengths"])]]
    assert cu.tolist() == torch.tensor([0] + samples).cumsum(0).tolist()
    for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
        assert batch[key].dtype == torch.int32 and torch.equal(batch[key], cu), key
    assert batch["max_length_q"] == batch["max_length_k"] == int(longest) == max(samples)


@pytest.mark.parametrize("attn", ATTENTIONS)
def test_every_collator_keeps_samples_apart_under_every_attention(data, attn):
    _, tok, feats, rows = data
    for name, (batch, expected) in collated(feats, rows, tok.pad_token_id).items():
        assert same_blocks(expected, attention_blocks(batch, attn)), name
        check_packed_batch(batch, attn)  # and the guard lets it through


@pytest.mark.parametrize("attn", ATTENTIONS)
def test_refusal_fires_for_every_leaking_combination(data, attn):
    _, tok, feats, rows = data
    variants = {"as collated": lambda b: b,
                "with an attention_mask": lambda b: {**b, "attention_mask": torch.ones_like(b["input_ids"])},
                "without cu_seq_lens": lambda b: {k: v for k, v in b.items() if k not in FLASH_KWARGS},
                "with use_cache": lambda b: {**b, "use_cache": True}}
    leaking = []
    for name, (batch, expected) in collated(feats, rows, tok.pad_token_id).items():
        for variant, change in variants.items():
            b = change(batch)
            if same_blocks(expected, attention_blocks(b, attn)):
                continue
            leaking.append((name, variant))
            with pytest.raises(ValueError, match="use PackedCollator|pass use_cache=False"):
                check_packed_batch(b, attn)
    if "flash" in attn:  # the bug: several packed rows without cu_seq_lens (one row is read from positions)
        # an all-ones attention_mask is dropped (`flash_attention_mask`): the samples stay apart
        assert ("packed rows", "with an attention_mask") not in leaking
        assert ("padding-free", "with an attention_mask") not in leaking
        assert ("packed rows", "without cu_seq_lens") in leaking
        assert ("one packed row", "without cu_seq_lens") not in leaking
    else:  # sdpa/eager/flex read every row's positions, but not with a cache or a mask
        assert ("packed rows", "with an attention_mask") in leaking
        assert ("padding-free", "with an attention_mask") in leaking
        assert ("packed rows", "with use_cache") in leaking
        assert ("packed rows", "without cu_seq_lens") not in leaking
    assert not any(variant == "as collated" for _, variant in leaking)


def test_refusal_of_inconsistent_packed_batches(data):
    _, tok, _, rows = data
    batch = PackedCollator(tok.pad_token_id, WIDTH)(rows[:2])
    shifted = batch["cu_seq_lens_q"].clone()
    shifted[1] += 1
    cases = {"not all of": {**batch, "max_length_k": None},
             "not the sample boundaries": {**batch, "cu_seq_lens_q": shifted, "cu_seq_lens_k": shifted},
             "below the longest sample": {**batch, "max_length_q": 1, "max_length_k": 1},
             "without position_ids": {k: v for k, v in batch.items() if k != "position_ids"},
             "other than 0": {**batch, "position_ids": batch["position_ids"] + 1}}
    for match, bad in cases.items():
        for attn in ("sdpa", "flash_attention_2"):
            with pytest.raises(ValueError, match=match):
                check_packed_batch(bad, attn)
    with pytest.raises(ValueError, match=r"attention 'paged\|eager'"):
        check_packed_batch(batch, "paged|eager")
    unpacked = PaddedCollator(tok.pad_token_id)([{"input_ids": [5, 6], "labels": [5, 6]}])
    check_packed_batch(unpacked, "paged|eager")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_whole_packed_batch_runs_and_gives_per_sample_logits_and_the_padded_loss(data, attn):
    model, tok, feats, rows = data
    model.set_attn_implementation(attn)
    batch = PackedCollator(tok.pad_token_id, WIDTH)(rows)
    padded = PaddedCollator(tok.pad_token_id)(feats)
    with torch.no_grad():
        # the whole batch, cu_seq_lens and max_length too, as Trainer passes it
        lp = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # the batch says use_cache=False
        lq = model(**{k: padded[k] for k in ("input_ids", "attention_mask")}, use_cache=False).logits
        with_labels = model(**{**batch, "use_cache": False}).loss
    by_id = {tuple(f["input_ids"]): i for i, f in enumerate(feats)}
    for r, row in enumerate(rows):
        start = 0
        for n in row["seq_lengths"]:
            i = by_id[tuple(row["input_ids"][start:start + n])]
            assert (lp[r, start:start + n] - lq[i, :n]).abs().max() < 1e-4
            start += n
    loss = weighted_lm_loss(lp, batch["labels"]).item()
    assert abs(loss - weighted_lm_loss(lq, padded["labels"]).item()) < 1e-5
    assert abs(loss - with_labels.item()) < 1e-5


def _reference_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                      softmax_scale=None, causal=True):
    """flash_attn_varlen_func in plain torch: causal attention inside each `cu_seqlens` block."""
    cu = cu_seqlens_q.tolist()
    assert cu_seqlens_q.dtype == torch.int32 and cu == cu_seqlens_k.tolist()
    assert min(int(max_seqlen_q), int(max_seqlen_k)) >= max(b - a for a, b in zip(cu, cu[1:]))
    out = torch.empty_like(q)
    for a, b in zip(cu, cu[1:]):
        q_, k_, v_ = (x[a:b].transpose(0, 1) for x in (q, k, v))
        attn = F.scaled_dot_product_attention(q_, k_, v_, is_causal=causal, scale=softmax_scale)
        out[a:b] = attn.transpose(0, 1)
    return out


def _reference_dense(q, k, v, dropout_p=0.0, softmax_scale=None, causal=True):
    """flash_attn_func in plain torch: causal attention over each whole row."""
    return F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=causal,
                                          scale=softmax_scale).transpose(1, 2)


@pytest.mark.parametrize("attn", ["flash_attention_2", "flash_attention_3"])
def test_transformers_flash_path_with_a_reference_kernel_keeps_packed_rows_apart(data, attn, monkeypatch):
    """transformers' own `_flash_attention_forward` (its choice of dense, varlen from the mask, from the
    kwargs or from the positions), with flash-attn's two kernels replaced by plain-torch references."""
    model, tok, feats, rows = data
    monkeypatch.setattr(fau, "_lazy_imports", lambda *a, **k: (_reference_dense, _reference_varlen, None,
                                                               fau._pad_input, fau._unpad_input))
    monkeypatch.setattr(fau, "_loaded_implementation", None)
    model.set_attn_implementation("sdpa")
    batch = PackedCollator(tok.pad_token_id, WIDTH)(rows)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    old = {k: v for k, v in inputs.items() if k not in FLASH_KWARGS}  # the collator's batch before the fix
    padded = PaddedCollator(tok.pad_token_id)(feats)
    with torch.no_grad():
        reference = model(**old).logits
        model.config._attn_implementation = attn
        try:
            fixed = model(**{**inputs, "use_cache": False}).logits
            leaked = model(**old).logits
            lq = model(**{k: padded[k] for k in ("input_ids", "attention_mask")}, use_cache=False).logits
        finally:
            model.config._attn_implementation = "sdpa"
        lq_sdpa = model(**{k: padded[k] for k in ("input_ids", "attention_mask")}, use_cache=False).logits
    keep = padded["attention_mask"].bool()
    assert (lq - lq_sdpa)[keep].abs().max() < 1e-4  # the reference kernels are right on a padded batch
    assert (fixed - reference).abs().max() < 1e-4
    for r, row in enumerate(rows):
        first = row["seq_lengths"][0]
        assert (leaked[r, :first] - reference[r, :first]).abs().max() < 1e-4  # nothing before sample 1
        assert (leaked[r, first:] - reference[r, first:]).abs().max() > 1e-2  # the later ones attend to it
    with pytest.raises(ValueError, match="packed rows without cu_seq_lens"):
        check_packed_batch(old, attn)
