"""Model lanes load offline, with the device/dtype/attention the helper picks."""

import time

import pytest
import torch

from sft_helpers import device_settings, generate, load_model
from sft_helpers.masking import has_generation_markers
from sft_helpers.models import smollm2_gguf_path


def test_cpu_settings_are_fp32_sdpa():
    assert device_settings("cpu") == {"device": "cpu", "dtype": torch.float32, "attn_implementation": "sdpa"}


def test_tiny_loads_offline_fast_in_fp32(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    model, tok = load_model("tiny")
    assert time.perf_counter() - start < 60  # "seconds": generous, this is not a benchmark
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    n = sum(p.numel() for p in model.parameters())
    assert 2e6 < n < 8e6
    assert tok.pad_token_id != tok.eos_token_id
    assert model.config.vocab_size == len(tok)


def test_tiny_base_recalls_a_fact_in_plain_text():
    from sft_helpers.course.data import load_world

    model, tok = load_model("tiny")
    country = load_world().countries[0]
    out = generate(model, tok, [f"The capital of {country.name} is"], max_new_tokens=6)[0]
    assert out["text"].strip().startswith(country.capital)


def test_unknown_id_is_treated_as_a_hub_id_and_fails_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError):
        load_model("no-such-org/no-such-model-for-sft-course")


@pytest.fixture(scope="module")
def smollm2():
    try:
        smollm2_gguf_path()
    except RuntimeError as e:
        pytest.skip(str(e))
    return load_model("smollm2-135m")


def test_smollm2_loads_offline_and_answers(smollm2, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = smollm2
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert 100e6 < sum(p.numel() for p in model.parameters()) < 200e6
    # facts the course relies on: no {% generation %} markers; SmolLM2 ships pad == EOS (<|im_end|>),
    # which ensure_pad_token replaces by its <|endoftext|>
    assert not has_generation_markers(tok.chat_template)
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    out = generate(model, tok, [prompt], max_new_tokens=20)[0]
    assert "Paris" in out["text"]
