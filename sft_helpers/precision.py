"""The precision policy: which dtype every weight, gradient and optimizer state has on each lane.

One policy for every lane (CPU fp32, T4 fp16, Ampere+ bf16), applied by `train_sft`:

* **full fine-tuning, mixed precision (default)**: trainable weights, their gradients and AdamW's
  two moments stay in **fp32** (the "master" copy); the forward and backward run under bf16/fp16
  autocast. 4 + 4 + 8 = 16 bytes per trained parameter, and an update of 2e-5 × a weight of ~1e-2 is
  not rounded away (bf16 keeps 8 bits of mantissa: anything below ~1/256 of a weight is lost);
* **pure bf16** (`pure_bf16=True`, bf16 lane only): weights, gradients and AdamW states in bf16, 8
  bytes per parameter and no master copy; most single-step updates at SFT learning rates round away
  (lesson 03 measures the share);
* **adapters (LoRA, QLoRA)**: LoRA's frozen base stays in the lane's half precision; QLoRA's keeps
  its blocks' linear layers in nf4 (computing in the lane's dtype) and everything else (norms,
  embeddings, lm_head) in fp32: peft's `prepare_model_for_kbit_training` upcasts every frozen
  half-precision weight that is not 4-bit. Adapters and any trained full copy (peft's
  `modules_to_save`, e.g. embeddings) are fp32;
* **fp16 lane**: as above plus a loss scaler (`GradScaler`); it unscales fp32 gradients only, which
  is why no trainable weight may be fp16 ("Attempting to unscale FP16 gradients").

`cast_trainable_to_fp32` applies the weight part; `precision_report` reads back what a model (and
optimizer, scaler) hold, so tests check the policy at the boundary where a kernel has no CPU path.
"""

from __future__ import annotations

from collections import Counter

import torch

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def precision_name(dtype: torch.dtype) -> str:
    """`"fp32"`, `"fp16"` or `"bf16"` for a torch dtype.

    >>> precision_name(torch.bfloat16)
    'bf16'
    """
    for name, d in PRECISIONS.items():
        if d == dtype:
            return name
    raise ValueError(f"no precision lane for dtype {dtype}; expected one of {list(PRECISIONS.values())}")


def model_precision(model) -> str:
    """The lane a loaded model is on, read from its floating-point weights: `"fp16"` or `"bf16"` when
    any weight is in that half precision (a frozen half base with fp32 adapters is still that lane),
    else `"fp32"`. 4-bit weights (uint8 storage) are skipped: their compute dtype is on the layer.

    >>> from sft_helpers import load_model
    >>> model_precision(load_model("tiny")[0])
    'fp32'
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    for name in ("fp16", "bf16"):
        if PRECISIONS[name] in dtypes:
            return name
    compute = {getattr(m, "compute_dtype", None) for m in model.modules()} - {None}
    for name in ("fp16", "bf16"):
        if PRECISIONS[name] in compute:
            return name
    return "fp32"


def cast_trainable_to_fp32(model) -> int:
    """Cast every trainable floating-point parameter (full weights, LoRA A/B, `modules_to_save`
    copies) to fp32 in place, leaving frozen weights as they are; returns how many were cast.
    This is the mixed-precision policy's master copy: optimizer states follow the parameter dtype.

    >>> from sft_helpers import load_model
    >>> model = load_model("tiny", precision="bf16")[0]
    >>> cast_trainable_to_fp32(model) > 0, model.model.embed_tokens.weight.dtype
    (True, torch.float32)
    """
    n = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
            n += 1
    return n


def precision_report(model, optimizer=None, scaler=None) -> dict:
    """What the model holds, by dtype: trainable and frozen parameters (counts of elements), the
    gradients present, the optimizer's state tensors, and whether a loss scaler is active.

    >>> from sft_helpers import load_model
    >>> precision_report(load_model("tiny")[0])["trainable"]
    {'fp32': 3898624}
    """
    def name(t):
        return precision_name(t.dtype) if t.dtype in PRECISIONS.values() else str(t.dtype).replace("torch.", "")

    trainable, frozen, grads, states = Counter(), Counter(), Counter(), Counter()
    for p in model.parameters():
        (trainable if p.requires_grad else frozen)[name(p)] += p.numel()
        if p.grad is not None:
            grads[name(p.grad)] += p.grad.numel()
    if optimizer is not None:
        for state in optimizer.state.values():
            for v in state.values():
                if torch.is_tensor(v) and v.numel() > 1:
                    states[name(v)] += v.numel()
    return {"trainable": dict(trainable), "frozen": dict(frozen), "grads": dict(grads),
            "optimizer_states": dict(states), "scaler": bool(scaler is not None and scaler.is_enabled())}


def check_precision_policy(model, pure_bf16: bool = False) -> None:
    """Raise a ValueError when a trainable weight is not fp32 (mixed precision), or, with
    `pure_bf16`, not bf16: the state `train_sft` must reach before its first step.

    >>> from sft_helpers import load_model
    >>> check_precision_policy(load_model("tiny", precision="fp16")[0])
    Traceback (most recent call last):
    ...
    ValueError: 3,898,624 trainable parameters are fp16, expected fp32 (mixed precision keeps an fp32 master copy; call cast_trainable_to_fp32)
    """
    want = "bf16" if pure_bf16 else "fp32"
    wrong = {k: v for k, v in precision_report(model)["trainable"].items() if k != want}
    if wrong:
        what = ", ".join(f"{v:,} trainable parameters are {k}" for k, v in wrong.items())
        why = ("pure bf16 keeps every trained weight in bf16" if pure_bf16 else
               "mixed precision keeps an fp32 master copy; call cast_trainable_to_fp32")
        raise ValueError(f"{what}, expected {want} ({why})")


def update_share(before: dict[str, torch.Tensor], model) -> float:
    """Share of trainable weights whose stored value changed since `before` (a `{name: tensor}`
    snapshot): the measure of updates rounding away in pure bf16.

    >>> import torch
    >>> m = torch.nn.Linear(2, 2)
    >>> snap = {n: p.detach().clone() for n, p in m.named_parameters()}
    >>> update_share(snap, m)
    0.0
    """
    changed = total = 0
    for n, p in model.named_parameters():
        if n in before:
            changed += (p.detach().float() != before[n].float()).sum().item()
            total += p.numel()
    return changed / max(total, 1)
