"""QLoRA on CPU for real: 4-bit loading, LoRA adapters, training, save/reload/merge, resume."""

import pytest
import torch

from sft_helpers import load_model
from sft_helpers.course.data import load_split
from sft_helpers.lora import (
    add_lora,
    footprint_mb,
    load_adapter,
    max_logit_difference,
    merge_adapter,
    save_adapter,
    trainable_parameters,
)
from sft_helpers.masking import build_labels
from sft_helpers.training import eval_loss, train_sft


@pytest.fixture(scope="module")
def data():
    _, tok = load_model("tiny")
    train, _ = build_labels(load_split("train")[:96], tok, "completion_only")
    val, _ = build_labels(load_split("validation")[:32], tok, "completion_only")
    ids = torch.tensor([tok("Velm is the capital of")["input_ids"]])
    return tok, train, val, ids


@pytest.fixture(scope="module")
def trained_qlora(data, tmp_path_factory):
    tok, train, val, _ = data
    model, _ = load_model("tiny", quantization="4bit")
    model = add_lora(model, train_embeddings=True, verbose=False)  # tied embeddings: one trained copy
    before = eval_loss(model, tok, val)
    train_sft(model, tok, train, lr=3e-3, max_steps=12, batch_size=8)
    folder = save_adapter(model, tmp_path_factory.mktemp("adapter"))
    return model, folder, before, eval_loss(model, tok, val)


def test_4bit_load_gives_linear4bit_layers_and_a_smaller_footprint():
    import bitsandbytes as bnb

    full, _ = load_model("tiny")
    q4, _ = load_model("tiny", quantization="4bit")
    layers = [m for m in q4.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 7 * q4.config.num_hidden_layers  # q k v o gate up down in every block
    assert layers[0].weight.quant_type == "nf4" and layers[0].weight.quant_state.nested  # double quantisation
    assert footprint_mb(q4) < 0.35 * footprint_mb(full)
    assert trainable_parameters(q4) == (0, trainable_parameters(full)[1])  # frozen, same parameter count


def test_only_the_adapters_train(data):
    model = add_lora(load_model("tiny", quantization="4bit")[0], verbose=False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)


def test_qlora_training_lowers_the_loss_and_the_adapter_reloads_exactly(data, trained_qlora):
    tok, _, val, ids = data
    model, folder, before, after = trained_qlora
    assert after < 0.8 * before
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in folder.iterdir()}
    reloaded, _ = load_adapter("tiny", folder)
    assert max_logit_difference(model, reloaded, ids) == 0.0


def test_merging_into_the_dequantised_base_keeps_the_logits(data, trained_qlora):
    _, _, _, ids = data
    model, folder, _, _ = trained_qlora
    merged, _ = merge_adapter("tiny", folder)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert max_logit_difference(model, merged, ids) < 1e-4
    into_original, _ = merge_adapter("tiny", folder, dequantize=False)  # weights the adapter never saw
    assert max_logit_difference(model, into_original, ids) > 10 * max_logit_difference(model, merged, ids)


def test_resume_from_checkpoint_continues_the_same_curve(data, tmp_path):
    tok, train, _, _ = data
    kwargs = dict(lr=3e-3, max_steps=8, batch_size=8, logging_steps=1, seed=3)
    model = add_lora(load_model("tiny")[0], verbose=False)
    whole = [h["loss"] for h in train_sft(model, tok, train, output_dir=str(tmp_path / "a"), **kwargs) if "loss" in h]
    model = add_lora(load_model("tiny")[0], verbose=False)
    out = str(tmp_path / "b")
    train_sft(model, tok, train, output_dir=out, save_steps=4, **kwargs)
    model = add_lora(load_model("tiny")[0], verbose=False)
    resumed = train_sft(model, tok, train, output_dir=out, resume_from_checkpoint=f"{out}/checkpoint-4",
                        save_steps=4, **kwargs)
    tail = [h["loss"] for h in resumed if "loss" in h and h["step"] > 4]
    assert len(whole) == 8 and len(tail) == 4
    assert tail == pytest.approx(whole[4:], rel=1e-4)


def test_trl_wraps_the_same_adapters_as_add_lora():
    from peft import LoraConfig

    from sft_helpers.lora import LORA_DEFAULTS
    from sft_helpers.reference import trl_peft_model

    _, tok = load_model("tiny")
    theirs = trl_peft_model(load_model("tiny", quantization="4bit")[0], tok, LoraConfig(task_type="CAUSAL_LM", **LORA_DEFAULTS))
    ours = add_lora(load_model("tiny", quantization="4bit")[0], verbose=False)
    assert trainable_parameters(theirs) == trainable_parameters(ours)
    assert sorted(n for n, p in theirs.named_parameters() if p.requires_grad) == \
        sorted(n for n, p in ours.named_parameters() if p.requires_grad)
