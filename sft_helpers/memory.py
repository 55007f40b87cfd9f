"""What fits where: a training-memory estimator for full fine-tuning, LoRA and QLoRA (lesson 03).

The precision policy it assumes is the package's (`sft_helpers.precision`, applied by `train_sft`):

* **full fine-tuning, mixed precision** (`method="full"`, the default row): fp32 master weights, fp32
  gradients and fp32 AdamW moments, 4 + 4 + 8 = **16 bytes per parameter**, the forward and backward
  under bf16/fp16 autocast, which adds a half-precision copy of each weight entering a matrix product
  (2 bytes: autocast caches it for the forward, autograd keeps it for the backward), ~18 at the peak;
* **pure bf16** (`"full_bf16"`, an explicit opt-in): weights, gradients and moments in bf16,
  2 + 2 + 4 = **8 bytes per parameter** and no master copy (small updates round away);
* **8-bit AdamW** (`"full_8bit"`, or `optimizer="adamw_8bit"` with any method): bitsandbytes keeps
  each moment in 1 byte plus an fp32 scale per block of 256 values: **~2 bytes** per parameter, not 8;
* **LoRA / QLoRA**: the frozen base in half precision (QLoRA: the blocks' linear layers in nf4),
  adapters and any trained embedding copies (peft's `modules_to_save`, `train_embeddings=True`) in
  fp32 with fp32 gradients and moments.

`estimate_memory(config, method, seq_len, batch, grad_ckpt, optimizer)` adds up, in bytes:

* **weights**: the trained full weights (fp32, or bf16 for `full_bf16`), or the frozen base: half
  precision for LoRA; for QLoRA the blocks' linear layers in nf4 with double quantisation (4 bits +
  0.127 bits of constants per parameter, QLoRA paper §2) and the rest (embeddings, lm_head, norms) in
  half precision at load (`weights_at_load`), fp32 once peft's `prepare_model_for_kbit_training` upcasts;
* **weight_copies**: the half-precision casts autocast makes of fp32 weights (mixed precision only);
* **adapters**: LoRA's A and B (`r·(in + out)` per adapted linear layer) and the trained embedding
  copies, fp32;
* **gradients** and **optimizer**: one gradient and AdamW's two moments per trained parameter, in its
  dtype (`adamw`), the moments in 8 bits (`adamw_8bit`), or none (`sgd`);
* **activations**: the tensors autograd keeps for the backward pass, per token and block (after
  Korthikanti et al. 2022, for a Llama block with memory-efficient attention: no `s²` scores), plus
  LoRA's dropout copies of each adapted layer's input; with gradient checkpointing only each block's
  input, plus one block's full set while it is recomputed;
* **logits**: the output head and the loss. transformers computes the cross-entropy in fp32 whatever
  the compute dtype, and the backward of its log-softmax holds the saved fp32 log-probabilities, their
  gradient and the logits' gradient at once: 12 bytes per token and vocabulary entry (the forward
  holds 8 in fp32, 10 in half precision); `measure_training_memory` measures it on a CPU step;
* **overhead**: the CUDA context and allocator fragmentation, a flat 1 GB (a rough figure; measure).

Early stopping (`early_stopping_patience`) keeps a copy of the best trained weights in host memory
(`EvalLossCallback` moves it to the CPU: 4 bytes per trained parameter of RAM), so nothing is added
on the GPU for it.

The total is the sum of the parts: an upper bound of a step's peak, since gradients, the half copies
and the logits' working set are not all alive at the same instant. `ARCHITECTURES` holds the published
dimensions of common sizes (no download), and `memory_table` gives a verdict per GPU in `GPUS`.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GB = 1024**3
NF4_BITS = 4 + 0.127  # nf4 weight + double-quantised absmax constants (QLoRA paper)
# What torch reports as total memory on each card, in GiB (a "16 GB" T4 shows 14.7).
GPUS = {"T4 16GB": 14.7, "L4 24GB": 22.0, "A100 40GB": 39.4, "A100 80GB": 79.1, "H100 80GB": 79.1}
CUDA_OVERHEAD_GB = 1.0
# Per token and vocabulary entry at the loss's backward: fp32 log-probs (saved), their gradient, the logits'.
LOSS_BYTES_PER_LOGIT = 4 + 4 + 4
# Optimizer state bytes per trained parameter, for a parameter of `b` bytes: AdamW's two moments in
# the parameter's dtype; bitsandbytes' 8-bit AdamW, one byte each plus an fp32 absmax per 256 values.
OPTIMIZER_STATE_BYTES = {"adamw": lambda b: 2 * b, "adamw_8bit": lambda b: 2 + 2 * 4 / 256,
                         "sgd": lambda b: 0}
# Named rows: the method trained, whether trained weights are pure bf16, and the optimizer they fix.
VARIANTS = {
    "full": dict(method="full", pure_bf16=False, optimizer=None),  # mixed precision: fp32 master + states
    "full_bf16": dict(method="full", pure_bf16=True, optimizer=None),  # bf16 weights, grads, states
    "full_8bit": dict(method="full", pure_bf16=False, optimizer="adamw_8bit"),  # mixed, 8-bit AdamW
    "lora": dict(method="lora", pure_bf16=False, optimizer=None),
    "qlora": dict(method="qlora", pure_bf16=False, optimizer=None),
}


def _config(model_type: str, **dims):
    from transformers import LlamaConfig, Qwen2Config

    return (Qwen2Config if model_type == "qwen2" else LlamaConfig)(**dims)


# Published dimensions (config.json on the hub), built offline.
ARCHITECTURES = {
    "Qwen2.5-0.5B": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True),
    "Qwen2.5-1.5B": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True),
    "Qwen2.5-3B": dict(model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                       tie_word_embeddings=True),
    "Qwen2.5-7B": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                       tie_word_embeddings=False),
    "Llama-2-7B": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                       tie_word_embeddings=False),
    "Llama-3.1-8B": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=False),
}


def architecture(name: str):
    """A transformers config (LlamaConfig / Qwen2Config) with `name`'s published dimensions.

    >>> architecture("Llama-2-7B").hidden_size
    4096
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    dims = dict(ARCHITECTURES[name])
    return _config(dims.pop("model_type"), **dims)


def _linear_shapes(config) -> list[tuple[int, int]]:
    """(in, out) of every linear layer in one decoder block: q, k, v, o, gate, up, down."""
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]


def parameter_counts(config) -> dict:
    """Parameters by kind: `linear` (the decoder blocks' linear layers, what QLoRA quantises),
    `embedding` (input embeddings, plus lm_head when untied), `other` (norms, biases), `total`.

    >>> parameter_counts(architecture("Llama-2-7B"))["total"]
    6738415616
    """
    h, layers = config.hidden_size, config.num_hidden_layers
    shapes = _linear_shapes(config)
    linear = layers * sum(a * b for a, b in shapes)
    embedding = config.vocab_size * h * (1 if config.tie_word_embeddings else 2)
    other = layers * 2 * h + h  # two RMSNorms per block, one final
    if getattr(config, "model_type", "") == "qwen2":
        other += layers * (h + 2 * shapes[1][1])  # q, k, v biases
    return {"linear": linear, "embedding": embedding, "other": other, "total": linear + embedding + other}


def lora_parameters(config, r: int = 16) -> int:
    """LoRA parameters on every linear layer of every block (`target_modules="all-linear"`):
    r·(in + out) each.

    >>> lora_parameters(architecture("Llama-2-7B"), r=64)
    159907840
    """
    return config.num_hidden_layers * sum(r * (a + b) for a, b in _linear_shapes(config))


def activation_bytes_per_token(config, grad_ckpt: bool, bytes_per_value: int = 2, lora: bool = False,
                               residual_bytes: int | None = None) -> float:
    """Bytes autograd keeps per token for the backward pass of all blocks (not the logits).

    A Llama block keeps, per token, its two RMSNorms' inputs and outputs (4·h values, in the residual
    stream's dtype, `residual_bytes`) and the matrix products' inputs and outputs: q/k/v, attention
    output, MLP gate/up/activation/product (4·h + 4·I + 2·kv values in the compute dtype,
    `bytes_per_value`). Three cases, measured on CPU steps of the tiny model within 5%:

    * everything in fp32, or everything in half precision: `residual_bytes = bytes_per_value`; in half
      precision the norms also keep their fp32 upcast of the input (+4·h bytes);
    * mixed precision (fp32 weights under half autocast, `residual_bytes=4`): the residual stream and
      the norms stay fp32 (16·h bytes), and every product keeps its own half cast of its input, so
      q, k, v and gate, up do not share one (16·h + 8·I + 4·kv bytes).

    LoRA with dropout adds, per adapted layer's input (6·h + I values), the dropped-out copy that
    `lora_A` keeps and dropout's mask (1 byte a value on CUDA; a CPU's dropout keeps an fp32 mask,
    so a CPU step measures more). With checkpointing only each block's input (h, in the residual
    dtype) is kept, plus one block's full set while it is recomputed.

    >>> activation_bytes_per_token(architecture("Llama-2-7B"), grad_ckpt=True)  # 32 block inputs + one block
    448512
    """
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    b, rb = bytes_per_value, residual_bytes or bytes_per_value
    if rb == b:
        block = (8 * h + 4 * i + 2 * kv) * b + (4 * h if b < 4 else 0)
    else:
        block = 4 * h * rb + (8 * h + 4 * i + 2 * kv) * b
    block += (6 * h + i) * (b + 1) if lora else 0
    if grad_ckpt:
        return config.num_hidden_layers * h * rb + block
    return config.num_hidden_layers * block


def _variant(method: str, optimizer: str | None) -> tuple[str, bool, str]:
    """(method, pure_bf16, optimizer) for a `VARIANTS` name, checking `optimizer` against it."""
    if method not in VARIANTS:
        raise ValueError(f"method must be one of {', '.join(map(repr, VARIANTS))}, not {method!r}")
    v = VARIANTS[method]
    if optimizer is not None and v["optimizer"] is not None and optimizer != v["optimizer"]:
        raise ValueError(f"method {method!r} means optimizer={v['optimizer']!r}, "
                         f"but optimizer={optimizer!r} was given")
    optimizer = optimizer or v["optimizer"] or "adamw"
    if optimizer not in OPTIMIZER_STATE_BYTES:
        known = ", ".join(map(repr, OPTIMIZER_STATE_BYTES))
        raise ValueError(f"optimizer must be one of {known}, not {optimizer!r}")
    return v["method"], v["pure_bf16"], optimizer


def estimate_memory(config, method: str = "qlora", seq_len: int = 1024, batch: int = 1,
                    grad_ckpt: bool = True, optimizer: str | None = None, r: int = 16, dtype_bytes: int = 2,
                    overhead_gb: float = CUDA_OVERHEAD_GB, train_embeddings: bool = False) -> dict:
    """Training memory in GiB by part (`weights`, `weight_copies`, `adapters`, `gradients`, `optimizer`,
    `activations`, `logits`, `overhead`) and their `total`, plus `weights_at_load` (the model as loaded,
    before trained weights are cast to fp32) and `trainable_params`, for a `VARIANTS` name: `"full"`
    (mixed precision, the default for full fine-tuning), `"full_bf16"` (pure bf16), `"full_8bit"`
    (mixed precision, 8-bit AdamW), `"lora"` or `"qlora"` (see the module docstring for what each part
    assumes). `optimizer` ("adamw", the default, "adamw_8bit" or "sgd") must agree with the name.
    `dtype_bytes` is the compute dtype (2 for bf16/fp16 on a GPU, 4 for fp32 on a CPU, where there is
    no autocast, hence no half copies, and `overhead_gb=0`). `train_embeddings` (LoRA / QLoRA) adds
    fp32 trained copies of the embeddings and the head, as `lora.add_lora(train_embeddings=True)`.

    >>> m = estimate_memory(architecture("Llama-2-7B"), "qlora")
    >>> round(m["weights_at_load"], 2), round(m["weights"], 2), m["total"] < 14.7
    (3.6, 4.09, True)
    >>> full = estimate_memory(architecture("Llama-2-7B"), "full")
    >>> (full["weights"] + full["gradients"] + full["optimizer"]) * 1024**3 / full["trainable_params"]
    16.0
    """
    method, pure_bf16, optimizer = _variant(method, optimizer)
    if dtype_bytes not in (2, 4):
        raise ValueError(f"dtype_bytes must be 2 (bf16/fp16) or 4 (fp32), not {dtype_bytes!r}")
    if pure_bf16 and dtype_bytes != 2:
        raise ValueError("full_bf16 (pure bf16) keeps weights in bf16: it needs dtype_bytes=2")
    if train_embeddings and method == "full":
        raise ValueError("train_embeddings is for 'lora' and 'qlora' "
                         "(full fine-tuning trains the embeddings already)")
    p = parameter_counts(config)
    head = config.vocab_size * config.hidden_size  # the output head's weight (the embeddings' when tied)
    autocast = dtype_bytes < 4 and not pure_bf16  # fp32 trained weights, half-precision compute
    if method == "full":
        master = 2 if pure_bf16 else 4
        trainable, trained_bytes = p["total"], master
        weights, at_load = p["total"] * master, p["total"] * dtype_bytes
        adapters, cast = 0, p["linear"] + head
    else:
        lora = lora_parameters(config, r)
        embeddings = p["embedding"] if train_embeddings else 0
        trainable, trained_bytes = lora + embeddings, 4
        if method == "qlora":
            at_load = p["linear"] * NF4_BITS / 8 + (p["embedding"] + p["other"]) * dtype_bytes
            weights = p["linear"] * NF4_BITS / 8 + (p["embedding"] + p["other"]) * 4
        else:
            weights = at_load = p["total"] * dtype_bytes
        # autocast casts the fp32 adapters, the trained head copy, and QLoRA's head (upcast to fp32 by peft)
        adapters, cast = trainable * 4, lora + (head if train_embeddings or method == "qlora" else 0)
    # the residual stream is fp32 when the embeddings are: trained in mixed precision, or upcast for QLoRA
    # by peft's prepare_model_for_kbit_training
    residual = 4 if method == "qlora" or (autocast and method == "full") else None
    tokens = seq_len * batch
    parts = {"weights": weights, "weight_copies": cast * dtype_bytes if autocast else 0, "adapters": adapters,
             "gradients": trainable * trained_bytes,
             "optimizer": trainable * OPTIMIZER_STATE_BYTES[optimizer](trained_bytes),
             "activations": tokens * activation_bytes_per_token(
                 config, grad_ckpt, dtype_bytes, lora=method != "full", residual_bytes=residual),
             "logits": tokens * config.vocab_size * LOSS_BYTES_PER_LOGIT}
    out = {k: v / GB for k, v in parts.items()} | {"overhead": overhead_gb}
    out["total"] = sum(out.values())
    out["weights_at_load"] = at_load / GB
    out["trainable_params"] = trainable
    return out


def max_tokens_per_step(config, method: str, capacity_gib: float, grad_ckpt: bool = True, **kwargs) -> int:
    """The most tokens per optimizer micro-step (batch × sequence length) whose estimate stays under
    90% of `capacity_gib`; 0 when even the weights and optimizer do not fit. `method` is a
    `VARIANTS` name; `kwargs` go to `estimate_memory`.

    >>> max_tokens_per_step(architecture("Llama-3.1-8B"), "full", 14.7)
    0
    """
    fixed = estimate_memory(config, method, seq_len=0, batch=0, grad_ckpt=grad_ckpt, **kwargs)["total"]
    one = estimate_memory(config, method, seq_len=1, batch=1, grad_ckpt=grad_ckpt, **kwargs)["total"]
    per_token = one - fixed
    return max(0, int((0.9 * capacity_gib - fixed) / per_token))


def memory_table(names=None, methods=tuple(VARIANTS), seq_len: int = 1024, batch: int = 1,
                 grad_ckpt: bool = True, optimizer: str | None = None) -> list[dict]:
    """One row per (architecture, method): the estimated total in GiB and, per GPU in `GPUS`, whether
    it fits ("yes" under 90% of the card, "tight" under 100%, "no"). `methods` are `VARIANTS` names
    (all of them by default: full fine-tuning in mixed precision first, then its pure-bf16 and 8-bit
    AdamW variants, LoRA and QLoRA).

    >>> rows = memory_table(["Qwen2.5-0.5B"], ["qlora"])
    >>> rows[0]["T4 16GB"]
    'yes'
    """
    rows = []
    for name in names or ARCHITECTURES:
        config = architecture(name)
        for method in methods:
            est = estimate_memory(config, method, seq_len, batch, grad_ckpt, optimizer)
            row = {"model": name, "method": method, "total_gb": est["total"]}
            for gpu, capacity in GPUS.items():
                total = est["total"]
                row[gpu] = "yes" if total < 0.9 * capacity else "tight" if total < capacity else "no"
            rows.append(row)
    return rows


class _LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages that ops create while the mode is on and that are still alive (each
    storage counted once, dropped when freed), and their peak; half-precision casts of parameters
    (autocast's copies) are counted apart in `copies`. A window (`open_window` / `close_window`)
    records its own peak of the non-copy bytes."""

    def __init__(self, params, existing=()):
        super().__init__()
        self.param_ptrs = {p.untyped_storage().data_ptr() for p in params}
        self.known = {t.untyped_storage().data_ptr() for t in existing} | self.param_ptrs
        self.alive: dict[int, tuple[int, bool, weakref.ref]] = {}  # ptr -> (bytes, is a copy, ref)
        self.live = self.copies = self.peak = self.peak_copies = 0
        self.window_base = self.window_peak = None

    def open_window(self):
        self.window_base = self.window_peak = self.live - self.copies

    def close_window(self):
        self.window_base, self.window_peak = None, (self.window_peak or 0) - (self.window_base or 0)

    def _free(self, ptr):
        n, copy, _ = self.alive.pop(ptr)
        self.live -= n
        self.copies -= n if copy else 0

    def _add(self, t: torch.Tensor, copy: bool):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr in self.known or ptr in self.alive or st.nbytes() == 0:
            return
        self.alive[ptr] = (st.nbytes(), copy, weakref.ref(st, lambda _, ptr=ptr: self._free(ptr)))
        self.live += st.nbytes()
        self.copies += st.nbytes() if copy else 0
        self.peak, self.peak_copies = max(self.peak, self.live), max(self.peak_copies, self.copies)
        if self.window_base is not None:
            self.window_peak = max(self.window_peak, self.live - self.copies)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        copy = (func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor)
                and args[0].untyped_storage().data_ptr() in self.param_ptrs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._add(t, copy)
        return out


def _optimizer(name: str, params):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-6)
    if name == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=1e-6)
    if name == "sgd":
        return None
    raise ValueError(f"optimizer must be 'adamw', 'adamw_8bit' or 'sgd', not {name!r}")


def measure_training_memory(model, batch: dict, optimizer: str = "adamw", autocast_dtype=None) -> dict:
    """Measure, in GiB, what `estimate_memory` estimates, on a real model and batch, over one training
    step taken with the optimizer's states already there, as in every step after the first (a step on
    zero gradients makes them; the model takes two optimizer steps):

    * `weights` (parameters and buffers), `gradients` and `optimizer` (bytes of the gradients and the
      optimizer's states, trained parameters only), `trainable_params`;
    * `activations`: the distinct tensors autograd saved in the forward pass up to the output head,
      parameters and their casts excluded;
    * `weight_copies`: the peak bytes of parameters cast to another dtype (autocast's half copies);
    * `logits`: the peak, above what was alive when the output head started, of the tensors made
      from the head's forward until its input has a gradient (the estimate's `logits`), and
      `logits_saved`, the tensors autograd saved from the head onward (4 bytes per logit);
    * `peak`: weights, optimizer states and the peak of every tensor made during the step.

    `optimizer` is "adamw", "adamw_8bit" (bitsandbytes) or "sgd" (no step); `autocast_dtype` (e.g.
    torch.bfloat16) runs the forward under autocast, as mixed precision does. Tensors are followed
    with a TorchDispatchMode: made for CPU steps (on a GPU, `torch.cuda.max_memory_allocated` is the
    peak).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device.type

    def amp():
        return torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None)

    model.train()
    opt = _optimizer(optimizer, params)
    if opt is not None:  # a step on zero gradients creates the states
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        model.zero_grad(set_to_none=True)
    states = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes()
              for st in (opt.state.values() if opt is not None else []) for v in st.values()
              if torch.is_tensor(v) and v.dim() > 0}
    existing = [t for t in batch.values() if torch.is_tensor(t)] + list(model.buffers())
    tracker = _LiveBytes(list(model.parameters()), existing)
    tracker.known |= set(states)
    saved: dict[int, int] = {}

    def keep(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in tracker.param_ptrs and not (ptr in tracker.alive and tracker.alive[ptr][1]):
            saved[ptr] = storage.nbytes()
        return t

    before_head: dict[int, int] = {}

    def at_head(module, args):
        before_head.update(saved)
        tracker.open_window()
        if args[0].requires_grad:  # the window closes when the head's input has its gradient
            args[0].register_hook(lambda grad: tracker.close_window())

    hook = model.get_output_embeddings().register_forward_pre_hook(at_head)
    try:
        with tracker:
            with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), amp():
                loss = model(**{**batch, "use_cache": False}).loss
            hook.remove()
            loss.backward()
            del loss
            if tracker.window_base is not None:
                tracker.close_window()
            if opt is not None:
                opt.step()
    finally:
        hook.remove()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    model.zero_grad(set_to_none=True)
    model.eval()
    weights, states = model.get_memory_footprint(), sum(states.values())
    blocks = sum(before_head.values())
    return {"weights": weights / GB, "weight_copies": tracker.peak_copies / GB, "gradients": grads / GB,
            "optimizer": states / GB, "activations": blocks / GB, "logits": tracker.window_peak / GB,
            "logits_saved": (sum(saved.values()) - blocks) / GB,
            "peak": (weights + states + tracker.peak) / GB,
            "trainable_params": sum(p.numel() for p in params)}
