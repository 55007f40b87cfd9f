"""The memory estimator: exact parameter arithmetic for known configs, and its parts measured on CPU."""

import pytest
import torch

from sft_helpers import load_model
from sft_helpers.memory import (ARCHITECTURES, GPUS, architecture, estimate_memory, lora_parameters, max_tokens_per_step,
                                measure_training_memory, memory_table, parameter_counts)

GIB = 1024**3


@pytest.mark.parametrize("name,published", [("Llama-2-7B", 6.74e9), ("Llama-3.1-8B", 8.03e9), ("Qwen2.5-7B", 7.62e9),
                                            ("Qwen2.5-0.5B", 0.494e9), ("Qwen2.5-1.5B", 1.54e9), ("Qwen2.5-3B", 3.09e9)])
def test_parameter_counts_match_the_published_sizes(name, published):
    assert parameter_counts(architecture(name))["total"] == pytest.approx(published, rel=0.01)


def test_a_7b_model_in_nf4_takes_3_5_to_4_gb_and_bf16_about_13():
    config = architecture("Llama-2-7B")
    qlora, lora = estimate_memory(config, "qlora"), estimate_memory(config, "lora")
    linear = parameter_counts(config)["linear"]
    assert qlora["weights_at_load"] * GIB == pytest.approx(linear * 4.127 / 8 + 262_410_240 * 2, rel=1e-6)
    assert 3.5e9 <= qlora["weights_at_load"] * GIB <= 4.0e9  # hand arithmetic: 6.48B × 0.516 B + 0.52 GB
    assert lora["weights"] * GIB == pytest.approx(6_738_415_616 * 2)
    assert qlora["trainable_params"] == lora_parameters(config, 16) == lora["trainable_params"]


def test_methods_order_and_parts_add_up():
    config = architecture("Qwen2.5-7B")
    full, lora, qlora = (estimate_memory(config, m) for m in ("full", "lora", "qlora"))
    assert full["total"] > lora["total"] > qlora["total"]
    parts = ("weights", "adapters", "gradients", "optimizer", "activations", "logits", "overhead")
    assert qlora["total"] == pytest.approx(sum(qlora[p] for p in parts))
    assert estimate_memory(config, "qlora", grad_ckpt=False)["activations"] > 5 * qlora["activations"]
    assert estimate_memory(config, "full", optimizer="adamw_8bit")["optimizer"] == pytest.approx(full["optimizer"] / 2)
    with pytest.raises(ValueError, match="method must be"):
        estimate_memory(config, "prefix")


def test_memory_table_verdicts_follow_the_totals():
    rows = memory_table(["Llama-3.1-8B"])
    by = {r["method"]: r for r in rows}
    assert by["full"]["T4 16GB"] == "no" and by["qlora"]["T4 16GB"] == "yes"
    for r in rows:
        for gpu, cap in GPUS.items():
            assert (r[gpu] == "no") == (r["total_gb"] >= cap)
    assert len(memory_table()) == 3 * len(ARCHITECTURES)


def test_lora_parameter_count_matches_peft_on_the_tiny_model():
    from sft_helpers.lora import add_lora, trainable_parameters

    model, _ = load_model("tiny")
    peft_model = add_lora(model, r=8, verbose=False)
    assert trainable_parameters(peft_model)[0] == lora_parameters(model.config, r=8)
    assert trainable_parameters(model)[1] - trainable_parameters(peft_model)[0] == parameter_counts(model.config)["total"]


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_estimate_matches_what_cpu_training_holds(method):
    from sft_helpers.lora import add_lora

    model, tok = load_model("tiny", quantization="4bit" if method == "qlora" else None)
    if method != "full":
        model = add_lora(model, verbose=False)
    ids = torch.tensor([tok("The capital of Norland is Velm. " * 8)["input_ids"][:64]] * 2)
    measured = measure_training_memory(model, {"input_ids": ids, "labels": ids})
    est = estimate_memory(model.config, method, seq_len=64, batch=2, grad_ckpt=False, dtype_bytes=4, overhead_gb=0)
    assert measured["trainable_params"] == est["trainable_params"]
    assert measured["gradients"] == pytest.approx(est["gradients"], rel=1e-6)
    assert measured["optimizer"] == pytest.approx(est["optimizer"], rel=1e-6)
    weights = est["weights"] + est["adapters"]
    assert measured["weights"] == pytest.approx(weights, rel=0.05)  # nf4 constants are not parameters
    assert measured["activations"] == pytest.approx(est["activations"], rel=0.25)


def test_max_tokens_per_step_is_where_the_estimate_reaches_90_percent():
    config = architecture("Qwen2.5-7B")
    tokens = max_tokens_per_step(config, "qlora", 14.7)
    assert tokens > 1000
    assert estimate_memory(config, "qlora", seq_len=tokens, batch=1)["total"] <= 0.9 * 14.7
    assert estimate_memory(config, "qlora", seq_len=tokens + 50, batch=1)["total"] > 0.9 * 14.7
    assert max_tokens_per_step(config, "full", 14.7) == 0
