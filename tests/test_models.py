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


# --- flash-attn: chosen only when it imports and transformers accepts it (issue 3) ---------------------

@pytest.fixture
def fake_ampere_flash_attn(tmp_path, monkeypatch):
    """A CUDA device of compute capability 8.0 (Ampere) as far as `device_settings` sees, and a
    `write(init_source)` that puts a fake `flash_attn` package (and its flash-attn 2.7.4 dist-info) first
    on sys.path. Every cached answer the check reads is cleared before and after."""
    import importlib
    import sys

    from transformers.utils import import_utils

    from sft_helpers import models

    caches = [f for f in vars(models).values() if hasattr(f, "cache_clear")] + [
        import_utils.is_flash_attn_2_available, import_utils.is_torch_cuda_available,
        import_utils._package_distribution_mapping]

    def clear():
        sys.modules.pop("flash_attn", None)
        for cached in caches:
            cached.cache_clear()
        importlib.invalidate_caches()

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))

    def write(init_source: str) -> None:
        (tmp_path / "flash_attn").mkdir()
        (tmp_path / "flash_attn" / "__init__.py").write_text(init_source)
        info = tmp_path / "flash_attn-2.7.4.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flash-attn\nVersion: 2.7.4\n")
        (info / "top_level.txt").write_text("flash_attn\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        clear()

    clear()
    yield write
    monkeypatch.undo()
    clear()


@pytest.mark.parametrize("error, words", [
    ("ImportError", "/usr/lib/python3/flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: "
                    "undefined symbol: _ZN3c104cuda9SetDeviceEi"),
    ("OSError", "libcudart.so.11.0: cannot open shared object file: No such file or directory"),
])
def test_a_flash_attn_that_does_not_import_falls_back_to_sdpa(fake_ampere_flash_attn, error, words, capsys):
    # a wheel built for another torch/CUDA: found by find_spec, fails on import (before: flash_attention_2)
    fake_ampere_flash_attn(f"raise {error}({words!r})\n")
    s = device_settings("cuda", precision="bf16")
    assert s["attn_implementation"] == "sdpa" and s["dtype"] == torch.bfloat16
    note = capsys.readouterr().out
    assert note.count("\n") == 1 and "does not import" in note and "using sdpa" in note
    assert f"{error}: {words}" in note  # the import error itself, on the one line
    device_settings("cuda")
    assert capsys.readouterr().out == ""  # the note is printed once per process


def test_a_flash_attn_that_imports_is_chosen_when_transformers_accepts_it(fake_ampere_flash_attn,
                                                                         monkeypatch):
    fake_ampere_flash_attn('__version__ = "2.7.4"\n')
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # transformers' check asks for CUDA
    assert device_settings("cuda")["attn_implementation"] == "flash_attention_2"
    assert device_settings("cuda", precision="fp16")["attn_implementation"] == "flash_attention_2"
    assert device_settings("cuda", precision="fp32")["attn_implementation"] == "sdpa"


def test_a_flash_attn_that_transformers_refuses_falls_back_to_sdpa(fake_ampere_flash_attn, capsys):
    fake_ampere_flash_attn('__version__ = "2.7.4"\n')  # imports, but no CUDA: transformers says no
    assert device_settings("cuda")["attn_implementation"] == "sdpa"
    assert "is_flash_attn_2_available() is False" in capsys.readouterr().out
