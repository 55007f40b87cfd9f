"""Collators: padding by position, and the padding-free batch matches transformers and is exact."""

import torch
from transformers import DataCollatorWithFlattening

from sft_helpers import load_model, load_split
from sft_helpers.collators import PaddedCollator, PaddingFreeCollator
from sft_helpers.masking import build_labels


def examples(n=6):
    _, tok = load_model("tiny")
    out, _ = build_labels(load_split("test")[:n], tok, "assistant_only")
    return tok, out


def test_padding_free_matches_transformers_flattening():
    _, feats = examples()
    ours = PaddingFreeCollator()(feats)
    ref = DataCollatorWithFlattening(return_flash_attn_kwargs=True)([{k: f[k] for k in ("input_ids", "labels")}
                                                                      for f in feats])
    for key in ("input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k"):
        assert torch.equal(ours[key], ref[key].to(ours[key].dtype)), key
    assert ours["max_length_q"] == ref["max_length_q"] and ours["max_length_k"] == ref["max_length_k"]


def test_padding_free_logits_equal_separate_runs_and_naive_positions_leak():
    tok, feats = examples(4)
    model, _ = load_model("tiny")
    batch = PaddingFreeCollator()(feats)
    with torch.no_grad():
        flat = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([f["input_ids"]]), use_cache=False).logits[0] for f in feats])
        naive = model(input_ids=batch["input_ids"], use_cache=False).logits[0]  # positions not reset: one long text
    assert (flat - alone).abs().max() < 1e-4
    first = len(feats[0]["input_ids"])
    assert (naive[:first] - alone[:first]).abs().max() < 1e-4  # the first sample sees nothing before it
    assert (naive[first:] - alone[first:]).abs().max() > 1e-2  # later samples attend to earlier ones


def test_padded_collator_pads_labels_by_position_and_to_a_multiple():
    tok, feats = examples(3)
    batch = PaddedCollator(tok.pad_token_id, pad_to_multiple_of=8)(feats)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(len(f["input_ids"]) for f in feats)
    for row, f in enumerate(feats):
        n = len(f["input_ids"])
        assert batch["labels"][row, :n].tolist() == f["labels"]
        assert (batch["labels"][row, n:] == -100).all() and (batch["attention_mask"][row, n:] == 0).all()
