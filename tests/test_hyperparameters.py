"""Lesson 05's helpers: gradient accumulation is exact, length percentiles, the sweep runner."""

import pytest
import torch

from sft_helpers import load_model
from sft_helpers.course.data import load_split
from sft_helpers.course.hyperparameters import accumulation_gap, length_coverage, recommend_max_length, run_hp
from sft_helpers.masking import build_labels


def test_accumulating_8_batches_of_8_gives_the_weights_of_one_batch_of_64():
    """Same samples per optimizer step, different padding (each micro-batch is padded to its own
    longest example) and different target tokens per micro-batch: the loss is averaged over the
    target tokens of the whole accumulated batch, so the updates agree to float noise."""
    tok = load_model("tiny")[1]
    examples, _ = build_labels(load_split("train")[:128], tok, "completion_only")
    counts = [sum(x != -100 for x in e["labels"]) for e in examples[:64]]
    assert max(counts) > 3 * min(counts), "the examples should differ in target tokens"
    out = accumulation_gap("tiny", batch=64, micro_batch=8, steps=2)
    assert out["moved"] > 1e-3, "the weights should have moved"
    assert out["gap"] < 1e-5, f"accumulated and big-batch weights differ by {out['gap']:.2e}"


def test_length_coverage_and_recommendation_on_the_training_split():
    tok = load_model("tiny")[1]
    examples, _ = build_labels(load_split("train"), tok, "completion_only")
    cover = length_coverage(examples)
    assert list(cover) == [50, 90, 95, 99, 100] and cover[50] <= cover[95] <= cover[100]
    n = recommend_max_length(examples, 0.95)
    assert n % 64 == 0 and n >= cover[95]
    assert sum(len(e["input_ids"]) <= n for e in examples) >= 0.95 * len(examples)
    with pytest.raises(ValueError, match="no examples"):
        length_coverage([])


def test_run_hp_truncates_logs_exact_match_and_trains_lora():
    out = run_hp(steps=2, max_length=48, exact_every=1, eval_items=8, test_items=4, n_train=64,
                 method="lora", lr=3e-3)
    assert 0 < out["truncated"] < 1 and out["steps"] == 2
    assert [h["step"] for h in out["history"] if "exact" in h] == [1, 2]
    assert torch.isfinite(torch.tensor(out["val_loss"]))
    with pytest.raises(ValueError, match="batching"):
        run_hp(steps=1, batching="bucketed", n_train=8)


def test_padding_free_micro_batches_count_no_padding():
    packed = run_hp(steps=1, n_train=32, samples_per_step=8, grad_accum=2, batching="padding_free",
                    eval_items=4, test_items=2)
    padded = run_hp(steps=1, n_train=32, samples_per_step=8, grad_accum=2, batching="padded",
                    eval_items=4, test_items=2)
    assert packed["slots_per_epoch"] < padded["slots_per_epoch"]
    assert abs(packed["val_loss"] - padded["val_loss"]) < 1e-3, "same samples, same loss"


def test_small_model_lr_ranges_are_the_ones_the_stored_sweep_measured():
    from sft_helpers.diagnostics import SMALL_MODEL_LR_RANGES
    from sft_helpers.course.hyperparameters import good_lr_range, load_stored

    sweep = load_stored()["learning rate"]
    assert SMALL_MODEL_LR_RANGES["full"] == good_lr_range(sweep, "full")
    assert SMALL_MODEL_LR_RANGES["lora"] == good_lr_range(sweep, "lora") == SMALL_MODEL_LR_RANGES["qlora"]


def test_epoch_cost_packed_rows_are_nearly_full_padded_batches_are_not():
    tok = load_model("tiny")[1]
    examples, _ = build_labels(load_split("train"), tok, "completion_only")
    longest = max(len(e["input_ids"]) for e in examples)
    from sft_helpers.course.hyperparameters import epoch_cost

    cost = epoch_cost(examples, longest)
    assert cost["real"] == sum(len(e["input_ids"]) for e in examples)
    assert cost["real"] <= cost["packed"] < 1.05 * cost["real"] < cost["padded"]
    assert epoch_cost(examples, 8)["real"] == 8 * len(examples)  # every example cut to 8 tokens


def test_a_k_epoch_run_at_a_constant_rate_is_the_first_k_epochs_of_a_longer_run():
    """Why lesson 05's epochs study trains once for 8 epochs and reads epochs 1, 2, 3, 5 off it:
    with a constant rate after a fixed number of warmup steps, a 1-epoch run and the first epoch
    of a 3-epoch run take the same steps on the same batches (and a cosine schedule would not)."""
    common = dict(n_train=32, samples_per_step=8, steps=-1, warmup=2, eval_every="epoch",
                  eval_items=8, test_items=2)
    one = run_hp(epochs=1, schedule="constant_with_warmup", **common)
    three = run_hp(epochs=3, schedule="constant_with_warmup", **common)
    cosine = run_hp(epochs=3, schedule="cosine", **common)
    evals = [[h["eval_loss"] for h in r["history"] if "eval_loss" in h] for r in (one, three, cosine)]
    assert len(evals[0]) == 2 and len(evals[1]) == 4, "evaluated before training and at each epoch end"
    assert evals[0][1] == pytest.approx(evals[1][1], abs=1e-5), (evals[0], evals[1])
    assert abs(evals[2][1] - evals[0][1]) > 1e-3, "a decaying schedule's first epoch differs"


def test_best_rate_ratio_recovers_a_known_ratio_between_grid_points():
    """Losses shaped like a parabola in log10(rate), LoRA's optimum 10x full's plus seed noise: the fitted
    ratio lands near 10 although neither optimum is on the grid, and its interval holds it."""
    import math
    import random

    from sft_helpers.course.hyperparameters import best_rate_ratio, quarter_decades

    rng = random.Random(0)

    def run(lr, best):
        return {"val_loss": 2.0 + (math.log10(lr) - math.log10(best)) ** 2 + rng.gauss(0, 0.01)}

    results = {}
    for method, best, grid in (("full", 7e-4, quarter_decades(-4, -2)), ("lora", 7e-3, quarter_decades(-3, -1))):
        for lr in grid:
            results[f"{method} {lr:.3g}"] = [run(lr, best) for _ in range(3)]
    d = best_rate_ratio(results)
    assert 10 ** d.low <= 10 <= 10 ** d.high and abs(10 ** d.delta - 10) < 1.5, d
    assert d.n_seeds == 3 and d.supports(">")


def test_the_embeddings_apart_sweep_shares_its_one_rate_row_and_reads_as_stored():
    """At a body rate equal to `EMBEDDING_LR`, the "embeddings apart" run is the one-rate run (two
    optimizer groups, the same rate: the same updates), seed for seed; and `rates_apart` gives the
    docs' reading of both sweeps: three seeds, a best body rate per seed inside the grid."""
    from sft_helpers.course.hyperparameters import EMBEDDING_LR, LR_GRID, load_stored, rates_apart

    stored = load_stored()
    name = f"full {EMBEDDING_LR:.3g}"
    apart, one = stored["learning rate, embeddings apart"][name], stored["learning rate"][name]
    assert len(apart) == len(one) >= 3
    for a, b in zip(apart, one):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=0.02), (a["val_loss"], b["val_loss"])
    study = rates_apart(stored)
    assert len(study["body"]) == len(study["one rate"]) == 3
    assert all(LR_GRID["full"][0] < lr < LR_GRID["full"][-1] for lr in study["body"] + study["one rate"])
    assert study["pretraining"] / max(study["one rate"]) == pytest.approx(study["pre_over_one"], rel=0.5)


def test_stored_regularisation_has_the_attention_dropout_rows_on_three_seeds():
    from sft_helpers.course.hyperparameters import REGULARISATION, load_stored

    reg = load_stored()["regularisation"]
    assert list(reg) == list(REGULARISATION)
    assert all(len(runs) == 3 for runs in reg.values())
