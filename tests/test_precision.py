"""The precision policy on every lane, proven on the CPU (issue: every lane correct without a GPU).

Half precision runs on a CPU for the 4M tiny base, so the fp16 (T4) and bf16 (Ampere) lanes train
here for real: full fine-tuning, LoRA, LoRA + embeddings and QLoRA. Where a CPU has no fp16 loss
scaler in accelerate, `train_sft` installs `torch.amp.GradScaler("cpu")`, which reproduces the T4's
"Attempting to unscale FP16 gradients" when a trained weight is fp16. Batches are tiny: bf16 matmuls
are ~17x slower than fp32 on CPUs without AVX-512 BF16.
"""

import math
import tempfile

import pytest
import torch
from transformers import TrainerCallback

from sft_helpers import load_model
from sft_helpers.course.data import load_split
from sft_helpers.lora import add_lora, merge_adapter, save_adapter
from sft_helpers.masking import build_labels
from sft_helpers.precision import (
    cast_trainable_to_fp32,
    check_precision_policy,
    model_precision,
    precision_report,
    update_share,
)
from sft_helpers.training import train_sft, training_precision


@pytest.fixture(scope="module")
def examples():
    _, tok = load_model("tiny")
    train, _ = build_labels(load_split("train")[:4], tok, "completion_only", max_length=48)
    return tok, train


class Seen(TrainerCallback):
    """Records the precision report (model, optimizer states, scaler) after each optimizer step."""

    def __init__(self):
        self.reports = []

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        scaler = getattr(optimizer, "scaler", None)
        report = precision_report(model, getattr(optimizer, "optimizer", optimizer), scaler)
        report["scale"] = scaler.get_scale() if scaler is not None else None
        self.reports.append(report)


def _model(precision, method):
    model, _ = load_model("tiny", precision=precision, quantization="4bit" if method == "qlora" else None)
    if method != "full":
        model = add_lora(model, r=4, alpha=8, train_embeddings=method in ("lora+embeddings", "qlora"),
                         verbose=False)
    return model


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("method", ["full", "lora", "lora+embeddings", "qlora"])
def test_every_method_trains_on_the_half_precision_lanes(examples, precision, method):
    tok, train = examples
    model = _model(precision, method)
    assert model_precision(model) == precision
    seen = Seen()
    history = train_sft(model, tok, train, lr=1e-3, max_steps=2, batch_size=2, warmup=0, logging_steps=1,
                        callbacks=[seen])
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    report = seen.reports[-1]
    # fp32 master weights, gradients and AdamW states for whatever trains; frozen base stays half
    assert set(report["trainable"]) == {"fp32"}
    assert set(report["optimizer_states"]) == {"fp32"}
    if method == "lora":
        assert set(report["frozen"]) == {precision}
    # the fp16 lane runs with a working loss scaler (2**16 unless a step overflowed)
    assert report["scaler"] == (precision == "fp16")
    if precision == "fp16":
        assert report["scale"] >= 2.0**10


def test_fp16_weights_cannot_be_unscaled_the_policy_is_what_makes_it_work(examples):
    """The T4 failure, reproduced at the boundary: GradScaler refuses fp16 gradients."""
    tok, train = examples
    from sft_helpers.collators import PaddedCollator

    batch = PaddedCollator(tok.pad_token_id)(train[:2])
    for cast in (False, True):
        model, _ = load_model("tiny", precision="fp16")
        if cast:
            cast_trainable_to_fp32(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        if not cast:
            with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
                scaler.unscale_(optimizer)
        else:
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
            assert scaler.get_scale() == 2.0**8  # no overflow: the step was taken
            assert precision_report(model, optimizer)["optimizer_states"] == {"fp32": 2 * 3898624}


def test_pure_bf16_is_an_explicit_opt_in_and_rounds_small_updates_away(examples):
    tok, train = examples
    shares = {}
    for pure in (False, True):
        model, _ = load_model("tiny", precision="bf16")
        training_precision(model, pure_bf16=pure)  # the state train_sft starts from
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen = Seen()
        train_sft(model, tok, train[:2], lr=2e-5, max_steps=1, batch_size=2, warmup=0, weight_decay=0.0,
                  pure_bf16=pure, callbacks=[seen])
        assert set(seen.reports[-1]["optimizer_states"]) == {"bf16" if pure else "fp32"}
        shares[pure] = update_share(before, model)
    # Adam's first step moves every weight by ~lr; fp32 keeps (almost) all of them, bf16 loses most
    assert shares[False] > 0.9 and shares[True] < 0.5 * shares[False]
    with pytest.raises(ValueError, match="pure_bf16 needs the bf16 lane"):
        train_sft(load_model("tiny", precision="fp16")[0], tok, train, max_steps=1, pure_bf16=True)


def test_check_precision_policy_names_what_is_wrong():
    model, _ = load_model("tiny", precision="bf16")
    with pytest.raises(ValueError, match="trainable parameters are bf16, expected fp32"):
        check_precision_policy(model)
    cast_trainable_to_fp32(model)
    check_precision_policy(model)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_merged_model_runs_forward_in_half_precision(precision):
    folder = tempfile.mkdtemp()
    model = add_lora(load_model("tiny", quantization="4bit", precision=precision)[0], r=2, verbose=False,
                     train_embeddings=True)
    with torch.no_grad():  # a non-zero adapter, so the merge changes something
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    save_adapter(model, folder)
    merged, tok = merge_adapter("tiny", folder, precision=precision)
    assert {p.dtype for p in merged.parameters()} == {model_precision_dtype(precision)}
    ids = torch.tensor([tok("Where does Ana live?")["input_ids"]])
    with torch.no_grad():
        logits = merged(input_ids=ids).logits
    assert torch.isfinite(logits.float()).all()


def model_precision_dtype(precision):
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@pytest.mark.parametrize("precision, checkpointing", [("fp16", False), ("bf16", True)])
def test_qlora_base_is_nf4_linear_layers_and_fp32_elsewhere(precision, checkpointing):
    """What the precision table (docs/benchmarks.md, `sft_helpers.precision`) and `load_model` say a
    QLoRA base holds after peft's `prepare_model_for_kbit_training`: the blocks' linear layers in nf4
    computing in the lane's dtype, every other weight (norms, embeddings; the tiny base's lm_head is tied)
    upcast to fp32, all frozen; the embedding output requires grad only with (non-reentrant) checkpointing,
    where transformers, not peft, turns it on."""
    model, _ = load_model("tiny", quantization="4bit", precision=precision,
                          gradient_checkpointing=checkpointing)
    params = dict(model.named_parameters())
    nf4 = {n for n, p in params.items() if type(p).__name__ == "Params4bit"}
    assert nf4 and all(".self_attn." in n or ".mlp." in n for n in nf4)
    rest = {n: p.dtype for n, p in params.items() if n not in nf4}
    assert "model.embed_tokens.weight" in rest and "model.norm.weight" in rest
    assert set(rest.values()) == {torch.float32}
    assert model_precision(model) == precision  # the 4-bit layers' compute dtype
    assert not any(p.requires_grad for p in params.values())
    assert model.get_input_embeddings()(torch.tensor([[1, 2]])).requires_grad == checkpointing
