"""The memory estimator: exact parameter arithmetic for known configs, and its parts measured on CPU steps.

Lanes measured on the CPU: fp32 (no autocast), mixed precision (fp32 weights under bf16 autocast, the
package's default for full fine-tuning), pure bf16 (bf16 weights and AdamW states), 8-bit AdamW.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from sft_helpers import load_model
from sft_helpers.memory import (
    ARCHITECTURES,
    GPUS,
    VARIANTS,
    architecture,
    estimate_memory,
    lora_parameters,
    max_tokens_per_step,
    measure_training_memory,
    memory_table,
    parameter_counts,
)

GIB = 1024**3


def per_param(est: dict, *parts) -> float:
    return sum(est[p] for p in parts) * GIB / est["trainable_params"]


@pytest.mark.parametrize("name,published", [("Llama-2-7B", 6.74e9), ("Llama-3.1-8B", 8.03e9),
                                            ("Qwen2.5-7B", 7.62e9), ("Qwen2.5-0.5B", 0.494e9),
                                            ("Qwen2.5-1.5B", 1.54e9), ("Qwen2.5-3B", 3.09e9)])
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


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_full_fine_tuning_bytes_per_parameter_16_mixed_8_pure_bf16_2_for_8bit_states(name):
    config = architecture(name)
    counts = parameter_counts(config)
    mixed, pure, eight = (estimate_memory(config, m) for m in ("full", "full_bf16", "full_8bit"))
    # mixed precision: fp32 master weights 4 + fp32 gradients 4 + fp32 AdamW moments 8
    assert [per_param(mixed, part) for part in ("weights", "gradients", "optimizer")] == [4, 4, 8]
    assert per_param(mixed, "weights", "gradients", "optimizer") == 16
    # plus autocast's bf16 copy of every weight entering a matrix product (the blocks' linears and the head)
    head = config.vocab_size * config.hidden_size
    assert mixed["weight_copies"] * GIB == 2 * (counts["linear"] + head)
    assert 17 < per_param(mixed, "weights", "weight_copies", "gradients", "optimizer") <= 18
    assert mixed["weights_at_load"] * GIB == 2 * counts["total"]  # loaded in bf16, then cast to fp32
    assert per_param(pure, "weights", "gradients", "optimizer") == 8 and pure["weight_copies"] == 0
    assert 2 < per_param(eight, "optimizer") < 2.05  # one byte per moment + an fp32 absmax per 256 values
    assert per_param(eight, "weights", "gradients") == 8
    assert estimate_memory(config, "full", optimizer="adamw_8bit") == eight
    fp32 = estimate_memory(config, "full", dtype_bytes=4)  # a CPU: fp32 compute, no autocast copies
    assert per_param(fp32, "weights", "gradients", "optimizer") == 16 and fp32["weight_copies"] == 0


def test_variants_order_and_parts_add_up():
    config = architecture("Qwen2.5-7B")
    est = {m: estimate_memory(config, m) for m in VARIANTS}
    assert est["full"]["total"] > est["full_8bit"]["total"] > est["full_bf16"]["total"] > est["lora"]["total"]
    assert est["lora"]["total"] > est["qlora"]["total"]
    parts = ("weights", "weight_copies", "adapters", "gradients", "optimizer", "activations", "logits",
             "overhead")
    for e in est.values():
        assert e["total"] == pytest.approx(sum(e[p] for p in parts))
    qlora = est["qlora"]
    assert estimate_memory(config, "qlora", grad_ckpt=False)["activations"] > 5 * qlora["activations"]
    emb = estimate_memory(config, "lora", train_embeddings=True)
    assert emb["trainable_params"] == est["lora"]["trainable_params"] + parameter_counts(config)["embedding"]
    assert per_param(emb, "adapters", "gradients", "optimizer") == 16  # fp32 adapters and embedding copies
    with pytest.raises(ValueError, match="method must be one of"):
        estimate_memory(config, "prefix")
    with pytest.raises(ValueError, match="'full_8bit' means optimizer='adamw_8bit'"):
        estimate_memory(config, "full_8bit", optimizer="adamw")
    with pytest.raises(ValueError, match="needs dtype_bytes=2"):
        estimate_memory(config, "full_bf16", dtype_bytes=4)
    with pytest.raises(ValueError, match="train_embeddings is for"):
        estimate_memory(config, "full", train_embeddings=True)


def test_memory_table_verdicts_follow_the_totals():
    rows = memory_table(["Llama-3.1-8B", "Llama-2-7B"])
    by = {(r["model"], r["method"]): r for r in rows}
    assert [r["method"] for r in rows[:len(VARIANTS)]] == list(VARIANTS)  # mixed-precision full first
    for name in ("Llama-3.1-8B", "Llama-2-7B"):
        # 16-18 bytes per parameter: a 7-8B model's full fine-tuning needs more than one 80 GB card
        assert by[(name, "full")]["A100 80GB"] == by[(name, "full")]["H100 80GB"] == "no"
        assert by[(name, "full_bf16")]["A100 80GB"] == "yes"  # 8 bytes per parameter
        assert by[(name, "full")]["T4 16GB"] == "no" and by[(name, "qlora")]["T4 16GB"] == "yes"
    for r in rows:
        for gpu, cap in GPUS.items():
            assert (r[gpu] == "no") == (r["total_gb"] >= cap)
    assert len(memory_table()) == len(VARIANTS) * len(ARCHITECTURES)


def test_lora_parameter_count_matches_peft_on_the_tiny_model():
    from sft_helpers.lora import add_lora, trainable_parameters

    model, _ = load_model("tiny")
    peft_model = add_lora(model, r=8, verbose=False)
    assert trainable_parameters(peft_model)[0] == lora_parameters(model.config, r=8)
    base = trainable_parameters(model)[1] - trainable_parameters(peft_model)[0]
    assert base == parameter_counts(model.config)["total"]


def _random_llama(vocab_size: int, hidden_size: int):
    """A random 2-block Llama built offline from a config (untied head, MLP 3x wide, like the tiny base)."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=hidden_size, intermediate_size=3 * hidden_size, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size,
                         tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config)


def _lane(lane: str, model):
    """The model, the measured step's autocast dtype and the estimate's method / dtype_bytes for a lane."""
    if lane == "pure_bf16":
        return model.to(torch.bfloat16), None, "full_bf16", 2
    if lane == "mixed":  # the package's default: fp32 weights, bf16 autocast
        return model, torch.bfloat16, "full", 2
    return model, None, "full", 4


def _measure_and_estimate(model, lane: str, seq_len: int, optimizer: str = "adamw"):
    model, autocast, method, dtype_bytes = _lane(lane, model)
    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len))
    batch = {"input_ids": ids, "labels": ids}
    measured = measure_training_memory(model, batch, optimizer, autocast_dtype=autocast)
    est = estimate_memory(model.config, "full_8bit" if optimizer == "adamw_8bit" else method, seq_len=seq_len,
                          batch=1, grad_ckpt=False, dtype_bytes=dtype_bytes, overhead_gb=0)
    return measured, est


@pytest.mark.parametrize("which,lane", [("tiny", "fp32"), ("big_vocab", "fp32"), ("big_vocab", "mixed"),
                                        ("big_vocab", "pure_bf16")])
def test_logits_part_matches_a_measured_step(which, lane):
    # the tiny base (vocabulary 1,908) and a random model with Llama-2's 32,000-token vocabulary
    model = load_model("tiny")[0] if which == "tiny" else _random_llama(32000, 64)
    seq_len = 256 if which == "tiny" else 128
    measured, est = _measure_and_estimate(model, lane, seq_len)
    # the loss's working set: fp32 log-probs + their gradient + the logits' gradient, 12 bytes per logit
    assert measured["logits"] == pytest.approx(est["logits"], rel=0.05)
    # autograd saves only the fp32 log-probs (4 bytes per logit, plus the head's input): comparing the
    # estimate with that (docs/benchmarks.md before) made it look ~2.6x too high
    assert 4.0 <= measured["logits_saved"] * GIB / (seq_len * model.config.vocab_size) < 4.6


@pytest.mark.parametrize("lane,optimizer", [("fp32", "adamw"), ("mixed", "adamw"), ("pure_bf16", "adamw"),
                                            ("fp32", "adamw_8bit")])
def test_full_fine_tuning_parts_and_peak_match_a_measured_step(lane, optimizer):
    measured, est = _measure_and_estimate(_random_llama(8000, 128), lane, 256, optimizer)
    assert measured["trainable_params"] == est["trainable_params"]
    for part in ("weights", "gradients"):  # bytes per parameter: 4 + 4 (mixed, fp32) or 2 + 2 (pure bf16)
        assert measured[part] == pytest.approx(est[part], rel=1e-3)
    assert measured["optimizer"] == pytest.approx(est["optimizer"], rel=0.01)  # 8-bit: norms keep fp32 states
    assert measured["weight_copies"] == pytest.approx(est["weight_copies"], rel=1e-6)  # autocast's bf16 casts
    assert measured["activations"] == pytest.approx(est["activations"], rel=0.1)
    assert measured["logits"] == pytest.approx(est["logits"], rel=0.05)
    # the sum of the parts bounds the step's peak from above, and not by much
    assert measured["peak"] <= est["total"] <= 1.25 * measured["peak"]


@pytest.mark.parametrize("method,train_embeddings", [("full", False), ("lora", False), ("qlora", False),
                                                     ("lora", True)])
def test_estimate_matches_what_cpu_training_holds(method, train_embeddings):
    from sft_helpers.lora import add_lora

    model, tok = load_model("tiny", quantization="4bit" if method == "qlora" else None)
    if method != "full":
        model = add_lora(model, train_embeddings=train_embeddings, verbose=False)
    ids = torch.tensor([tok("The capital of Norland is Velm. " * 8)["input_ids"][:64]] * 2)
    measured = measure_training_memory(model, {"input_ids": ids, "labels": ids})
    est = estimate_memory(model.config, method, seq_len=64, batch=2, grad_ckpt=False, dtype_bytes=4,
                          overhead_gb=0, train_embeddings=train_embeddings)
    assert measured["trainable_params"] == est["trainable_params"]
    assert measured["gradients"] == pytest.approx(est["gradients"], rel=1e-6)
    assert measured["optimizer"] == pytest.approx(est["optimizer"], rel=1e-6)
    weights = est["weights"] + est["adapters"]
    assert measured["weights"] == pytest.approx(weights, rel=0.05)  # nf4 constants are not parameters
    assert measured["activations"] == pytest.approx(est["activations"], rel=0.25)
    assert measured["logits"] == pytest.approx(est["logits"], rel=0.05)


def test_max_tokens_per_step_is_where_the_estimate_reaches_90_percent():
    config = architecture("Qwen2.5-7B")
    tokens = max_tokens_per_step(config, "qlora", 14.7)
    assert tokens > 1000
    assert estimate_memory(config, "qlora", seq_len=tokens, batch=1)["total"] <= 0.9 * 14.7
    assert estimate_memory(config, "qlora", seq_len=tokens + 50, batch=1)["total"] > 0.9 * 14.7
    assert max_tokens_per_step(config, "full", 14.7) == 0
    small = architecture("Qwen2.5-0.5B")
    assert max_tokens_per_step(small, "full_bf16", 14.7) > max_tokens_per_step(small, "full", 14.7) > 0
