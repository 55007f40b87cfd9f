"""LoRA / QLoRA adapters with peft: add, count, save, reload, merge (lesson 03).

QLoRA = a frozen base whose linear layers are stored in 4-bit nf4 (`load_model(..., quantization="4bit")`)
plus small trainable LoRA matrices on every linear layer (`add_lora`). Only the adapters are trained
and saved (megabytes); for deployment they can be merged into a full-precision copy of the base.
Everything here is plain peft: the models are `PeftModel`s and the folders are what
`PeftModel.from_pretrained` reads.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

# QLoRA paper (Dettmers et al. 2023): r=64, alpha=16, dropout 0.1 (0.05 above 13B), all linear layers.
# Current practice (TRL / axolotl examples): r=16, alpha=2r, dropout 0.05, all linear layers.
LORA_DEFAULTS = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}


def trainable_parameters(model) -> tuple[int, int]:
    """`(trainable, total)` parameter counts (a 4-bit weight counts as the parameters it holds).

    >>> from sft_helpers import load_model
    >>> trainable_parameters(load_model("tiny")[0])
    (3898624, 3898624)
    """
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # two 4-bit values per byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def add_lora(model, r: int = LORA_DEFAULTS["r"], alpha: int = LORA_DEFAULTS["lora_alpha"],
             dropout: float = LORA_DEFAULTS["lora_dropout"], target_modules="all-linear", seed: int | None = 0,
             train_embeddings: bool = False, verbose: bool = True):
    """Wrap `model` in a peft `PeftModel` with LoRA adapters (rank `r`, scale `alpha / r`, dropout) on
    `target_modules` (every linear layer but the output head by default); only the adapters train.
    B starts at zero (the model is unchanged) and A at random, drawn after `torch.manual_seed(seed)`
    so runs repeat. `train_embeddings=True` also trains full copies of the input embeddings and the
    output head (peft's `modules_to_save`): needed when the fine-tuning data uses tokens the base model
    never learned (new chat special tokens; on the tiny base also JSON and Markdown symbols), which
    low-rank updates of the linear layers cannot teach. Prints trainable / total parameters.

    >>> from sft_helpers import load_model
    >>> model = add_lora(load_model("tiny")[0], r=8, alpha=16)
    LoRA r=8, alpha=16, dropout 0.05 on all-linear: 163,840 trainable of 4,062,464 parameters (4.03%)
    """
    from peft import LoraConfig, get_peft_model

    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    to_save = [names[id(model.get_input_embeddings())], names[id(model.get_output_embeddings())]]
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        modules_to_save=to_save if train_embeddings else None, task_type="CAUSAL_LM",
                        ensure_weight_tying=tied and train_embeddings)
    if seed is not None:
        torch.manual_seed(seed)
    with _quiet():
        model = get_peft_model(model, config)
    if verbose:
        trainable, total = trainable_parameters(model)
        extra = " + embeddings and output head" if train_embeddings else ""
        print(f"LoRA r={r}, alpha={alpha}, dropout {dropout} on {target_modules}{extra}: {trainable:,} trainable of "
              f"{total:,} parameters ({trainable / total:.2%})")
    return model


def _quiet():
    """A context that hides peft's use of transformers' deprecated `is_gradient_checkpointing` (their
    FutureWarning) and transformers' notice that a model was dequantised."""
    import contextlib

    from transformers.utils import logging as hf_logging

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    stack.callback(hf_logging.set_verbosity, level)
    return stack


def footprint_mb(model) -> float:
    """Memory held by the model's parameters and buffers, in MB (`get_memory_footprint`)."""
    return model.get_memory_footprint() / 2**20


def save_adapter(model, folder) -> Path:
    """Save only the adapter weights and config of a `PeftModel` to `folder` (what `load_adapter` reads)."""
    folder = Path(folder)
    model.save_pretrained(folder)
    return folder


def load_adapter(model_id: str, folder, quantization: str | None = "4bit", trainable: bool = False,
                 precision: str | None = None):
    """The base of `model_id` (quantised as when it was trained, in the lane's `precision`) with the
    adapter in `folder`; returns `(model, tokenizer)`. Adapter weights are loaded in fp32."""
    from peft import PeftModel

    from .models import load_model

    base, tok = load_model(model_id, quantization=quantization, precision=precision)
    with _quiet():
        model = PeftModel.from_pretrained(base, str(folder), is_trainable=trainable)
    model.eval()
    return model, tok


def merge_adapter(model_id: str, folder, dequantize: bool = True, precision: str | None = None):
    """A plain transformers model with the adapter in `folder` merged into its weights, every weight
    in the lane's dtype (`device_settings(precision)`: fp32 on CPU, bf16/fp16 on a GPU); returns
    `(model, tokenizer)`.

    With `dequantize=True` the base is the 4-bit base the adapter was trained on, dequantised to the
    compute dtype: the merged model then computes what the adapter model computed (up to rounding).
    With `dequantize=False` the adapter is merged into the original full-precision base, whose weights
    differ from the nf4 ones the adapter was trained against. The merge is done in fp32 and the result
    cast to one dtype: a k-bit base keeps its norms and embeddings in fp32 (peft's
    `prepare_model_for_kbit_training`) while `dequantize` gives half-precision linear layers, and a
    model of mixed dtypes fails in its forward pass.

    >>> import tempfile
    >>> from sft_helpers import load_model
    >>> folder = save_adapter(add_lora(load_model("tiny", quantization="4bit")[0], r=2, verbose=False),
    ...                       tempfile.mkdtemp())
    >>> merged, _ = merge_adapter("tiny", folder, precision="bf16")
    >>> sorted({str(p.dtype) for p in merged.parameters()})
    ['torch.bfloat16']
    """
    from peft import PeftModel

    from .models import device_settings, load_model

    dtype = device_settings(precision=precision)["dtype"]
    with _quiet():
        if dequantize:
            base, tok = load_model(model_id, quantization="4bit", precision=precision)
            base = base.dequantize(dtype=torch.float32)
        else:
            base, tok = load_model(model_id, precision="fp32")
        model = PeftModel.from_pretrained(base, str(folder))
    return merge_loaded(model, dtype), tok


def merge_loaded(model, dtype: torch.dtype):
    """Merge the adapters of the loaded `PeftModel` `model` into its base, in place, and return the
    plain transformers model with every weight cast to `dtype` (in eval mode). Without the cast,
    whatever trained in fp32 beside a half-precision base (the trained embedding copies of
    `train_embeddings`, a k-bit base's fp32 norms) would stay fp32: a model of mixed dtypes fails
    in a forward pass without autocast, and `save_pretrained` records the first weight's dtype.
    The merge itself is done in the base weights' dtype (`merge_adapter` loads an fp32 base for it).

    >>> from sft_helpers import load_model
    >>> from sft_helpers.precision import cast_trainable_to_fp32
    >>> model = add_lora(load_model("tiny", precision="bf16")[0], r=2, train_embeddings=True, verbose=False)
    >>> n = cast_trainable_to_fp32(model)  # as training does
    >>> merged = merge_loaded(model, torch.bfloat16)
    >>> sorted({str(p.dtype) for p in merged.parameters()}), merged.config.dtype
    (['torch.bfloat16'], torch.bfloat16)
    """
    with _quiet():  # peft's use of a deprecated transformers property
        merged = model.merge_and_unload()
    merged.to(dtype)
    merged.eval()
    return merged


@torch.no_grad()
def max_logit_difference(a, b, input_ids: torch.Tensor) -> float:
    """The largest absolute difference between two models' logits on `input_ids`."""
    la = a(input_ids=input_ids.to(a.device)).logits.float().cpu()
    lb = b(input_ids=input_ids.to(b.device)).logits.float().cpu()
    return (la - lb).abs().max().item()
