"""Collators: padding by position, and the padding-free batch matches transformers and is exact."""

import pytest
import torch
from transformers import DataCollatorWithFlattening

from sft_helpers import load_model
from sft_helpers.course.data import load_split
from sft_helpers.collators import PackedCollator, PaddedCollator, PaddingFreeCollator
from sft_helpers.masking import build_labels
from sft_helpers.packing import pack_examples


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


def test_packed_rows_give_the_same_logits_and_loss_as_padded_batches():
    from sft_helpers.masking import weighted_lm_loss
    from sft_helpers.packing import pack_examples

    tok, feats = examples(8)
    model, _ = load_model("tiny")
    rows, stats = pack_examples(feats, max_length=256)
    assert stats["rows"] < len(feats) and stats["overflow"] == 0
    packed = PackedCollator(tok.pad_token_id, max_length=256)(rows)
    padded = PaddedCollator(tok.pad_token_id)(feats)
    assert "attention_mask" not in packed and packed["input_ids"].shape == (len(rows), 256)
    with torch.no_grad():
        lp = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        lq = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False).logits
    # every token of every sample has the same logits in its packed row as in its padded row
    by_id = {tuple(f["input_ids"]): i for i, f in enumerate(feats)}
    for r, row in enumerate(rows):
        start = 0
        for n in row["seq_lengths"]:
            i = by_id[tuple(row["input_ids"][start:start + n])]
            assert (lp[r, start:start + n] - lq[i, :n]).abs().max() < 1e-4
            start += n
    assert abs(weighted_lm_loss(lp, packed["labels"]).item() - weighted_lm_loss(lq, padded["labels"]).item()) < 1e-5
    # the same number of target tokens: only the (never predicted) first token of each sample is dropped
    assert (packed["labels"][:, 1:] != -100).sum() == (padded["labels"][:, 1:] != -100).sum()


def test_packed_collator_masks_sample_starts_and_pads_and_rejects_long_rows():
    batch = PackedCollator(pad_token_id=0, max_length=7)(
        [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4], "loss_weights": [1.0] * 4, "seq_lengths": [2, 2]}])
    assert batch["labels"].tolist() == [[-100, 2, -100, 4, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 0, 1, 2]]
    assert batch["loss_weights"].tolist() == [[0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]]
    two = PackedCollator(pad_token_id=0, max_length=5)([{"input_ids": [1, 2, 3], "seq_lengths": [2, 1]},
                                                        {"input_ids": [4, 5, 6, 7, 8], "seq_lengths": [5]}])
    # flash-attn's boundaries over both rows flattened: every sample, and the pad tail as a block of its own
    assert two["cu_seq_lens_q"].tolist() == two["cu_seq_lens_k"].tolist() == [0, 2, 3, 5, 10]
    assert two["max_length_q"] == two["max_length_k"] == 5
    with pytest.raises(ValueError, match="more than max_length=3"):
        PackedCollator(0, max_length=3)([{"input_ids": [1, 2, 3, 4]}])
    with pytest.raises(ValueError, match="do not add up"):
        PackedCollator(0)([{"input_ids": [1, 2, 3], "seq_lengths": [2, 2]}])


def test_padding_free_splits_packed_rows_into_their_samples():
    rows = [{"input_ids": [1, 2, 3, 4, 5], "labels": [1, 2, 3, 4, 5], "seq_lengths": [3, 2]}]
    plain = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]
    a, b = PaddingFreeCollator()(rows), PaddingFreeCollator()(plain)
    for key in ("input_ids", "labels", "position_ids", "cu_seq_lens_q"):
        assert torch.equal(a[key], b[key])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_no_leakage_when_packed_correctly_and_every_naive_variant_leaks(attn):
    from sft_helpers.attention import check_no_leakage

    tok, feats = examples(4)
    model, _ = load_model("tiny", attn_implementation=attn)
    rows = {r["variant"].split(":")[0] + r["variant"].split(":")[1]: r for r in check_no_leakage(model, feats)}
    correct = rows.pop("correct positions restart, no mask, use_cache=False")
    assert not correct["leaks"] and correct["later_samples_diff"] < 1e-4 and abs(correct["loss_diff"]) < 1e-5
    assert len(rows) == 3
    for name, r in rows.items():
        assert r["leaks"] and r["later_samples_diff"] > 1e-2, name
        assert r["first_sample_diff"] < 1e-4, name  # the first sample has nothing before it to leak from


def test_block_diagonal_mask_matches_what_transformers_builds():
    from transformers.masking_utils import find_packed_sequence_indices

    from sft_helpers.attention import block_diagonal_mask

    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    mask = block_diagonal_mask(positions)
    sample = find_packed_sequence_indices(positions)[0]
    expected = torch.tensor([[k <= q and sample[k] == sample[q] for k in range(9)] for q in range(9)])
    assert torch.equal(mask, expected)
    assert mask.sum() == 6 + 3 + 10  # 3·4/2 + 2·3/2 + 4·5/2


def test_trl_packed_rows_collate_the_same_with_ours():
    from sft_helpers.reference import trl_packed

    tok, _ = examples(1)
    rows, collator = trl_packed(tok, [r["messages"] for r in load_split("test")[:40]], max_length=256)
    assert all(sum(r["seq_lengths"]) == len(r["input_ids"]) <= 256 for r in rows)
    theirs, ours = collator(rows[:3]), PaddingFreeCollator()(rows[:3])
    for key in ("input_ids", "labels", "position_ids", "cu_seq_lens_q"):
        assert torch.equal(ours[key], theirs[key].to(ours[key].dtype)), key


def _first_trainer_batch(model, rows, collator, tmp_path, **args):
    """The first batch a plain `transformers.Trainer` hands to the model."""
    from transformers import Trainer, TrainingArguments

    targs = TrainingArguments(str(tmp_path), per_device_train_batch_size=2, report_to="none", use_cpu=True, **args)
    trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collator)
    return next(iter(trainer.get_train_dataloader()))


def _largest_leak(model, batch, samples) -> float:
    """Largest logit difference between each sample of `batch` (its blocks by `cu_seq_lens_q`, over
    the flattened rows) as the model sees it when called as Trainer calls it, `model(**batch)`, and
    the sample alone; pad tails are skipped. Fails unless at least two samples were compared."""
    with torch.no_grad():
        logits = model(**batch).logits.reshape(-1, model.config.vocab_size)
        flat, bounds = batch["input_ids"].reshape(-1).tolist(), batch["cu_seq_lens_q"].tolist()
        worst, compared = 0.0, 0
        for start, end in zip(bounds, bounds[1:]):
            if flat[start:end] in samples:
                alone = model(input_ids=torch.tensor([flat[start:end]]), use_cache=False).logits[0]
                worst = max(worst, (logits[start:end] - alone).abs().max().item())
                compared += 1
    assert compared >= 2
    return worst


def test_plain_trainer_packing_refuses_dropped_boundaries_and_does_not_leak(tmp_path):
    """With Trainer's default `remove_unused_columns=True` the packed rows lose `seq_lengths`: the
    collator refuses them. With False, and padding-free batches with the default, every sample's
    logits as Trainer feeds the model equal the sample alone (before: 9 logits apart, the model's
    default `use_cache=True` merged the samples)."""
    model, tok = load_model("tiny")
    examples, _ = build_labels(load_split("train")[:6], tok, "completion_only")
    rows, _ = pack_examples(examples, 256, shuffle_seed=0)
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        _first_trainer_batch(model, rows, PackedCollator(tok.pad_token_id, 256), tmp_path)
    batch = _first_trainer_batch(model, rows, PackedCollator(tok.pad_token_id, 256), tmp_path,
                                 remove_unused_columns=False)
    samples = [e["input_ids"] for e in examples]
    assert _largest_leak(model, batch, samples) < 1e-4
    batch = _first_trainer_batch(model, examples, PaddingFreeCollator(), tmp_path)
    assert _largest_leak(model, batch, samples) < 1e-4


def test_readme_plain_trainer_example_runs(run_readme_example):
    run = run_readme_example("### With a plain `transformers.Trainer`")
    assert run.returncode == 0, run.stderr[-3000:]
