"""What fits where: a training-memory estimator for full fine-tuning, LoRA and QLoRA (lesson 03).

`estimate_memory(config, method, seq_len, batch, grad_ckpt, optimizer)` adds up, in bytes:

* **weights**: bf16 (2 bytes per parameter) for full and LoRA; for QLoRA the linear layers of the
  decoder blocks in nf4 with double quantisation (4 bits + 0.127 bits of quantisation constants per
  parameter, QLoRA paper §2) and the rest (embeddings, lm_head, norms) in bf16 when loaded
  (`weights_at_load`), then in fp32 after peft's `prepare_model_for_kbit_training` upcasts them;
* **adapters**: LoRA's A and B (`r·(in + out)` per adapted linear layer), kept in fp32 by peft;
* **gradients**: one per trainable parameter, in its dtype;
* **optimizer states**: AdamW's two moments per trainable parameter, in the parameter's dtype
  (`adamw`), or 1 byte each (`adamw_8bit`), or none (`sgd`);
* **activations**: the tensors autograd keeps for the backward pass, per token and block
  (after Korthikanti et al. 2022, for a Llama block with memory-efficient attention: no `s²`
  scores), plus LoRA's dropout copies of each adapted layer's input; with gradient checkpointing
  only each block's input, plus one block's full set while it is recomputed;
* **logits**: the output head's logits per token, their fp32 copy and its gradient (large for
  150k-token vocabularies);
* **overhead**: the CUDA context and allocator fragmentation, a flat 1 GB (a rough figure; measure).

`ARCHITECTURES` holds the published dimensions of common sizes (no download), and
`memory_table` gives a verdict per GPU in `GPUS`.
"""

from __future__ import annotations

GB = 1024**3
NF4_BITS = 4 + 0.127  # nf4 weight + double-quantised absmax constants (QLoRA paper)
# What torch reports as total memory on each card, in GiB (a "16 GB" T4 shows 14.7).
GPUS = {"T4 16GB": 14.7, "L4 24GB": 22.0, "A100 40GB": 39.4, "A100 80GB": 79.1, "H100 80GB": 79.1}
CUDA_OVERHEAD_GB = 1.0


def _config(model_type: str, **dims):
    from transformers import LlamaConfig, Qwen2Config

    return (Qwen2Config if model_type == "qwen2" else LlamaConfig)(**dims)


# Published dimensions (config.json on the hub), built offline.
ARCHITECTURES = {
    "Qwen2.5-0.5B": dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Qwen2.5-1.5B": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Qwen2.5-3B": dict(model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "Qwen2.5-7B": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "Llama-2-7B": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "Llama-3.1-8B": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
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
    """LoRA parameters on every linear layer of every block (`target_modules="all-linear"`): r·(in + out) each.

    >>> lora_parameters(architecture("Llama-2-7B"), r=64)
    159907840
    """
    return config.num_hidden_layers * sum(r * (a + b) for a, b in _linear_shapes(config))


def activation_bytes_per_token(config, grad_ckpt: bool, bytes_per_value: int = 2, lora: bool = False) -> float:
    """Bytes autograd keeps per token for the backward pass of all blocks (not the logits).

    Without checkpointing, a Llama block keeps about 8·h + 4·I + 2·kv values per token (norm inputs
    and outputs, q/k/v, attention output, MLP gate/up/activation/product); LoRA with dropout adds a
    dropped-out copy of each adapted layer's input (6·h + I). With checkpointing only each block's
    input (h) is kept, plus one block's full set while it is recomputed.
    """
    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    block = (8 * h + 4 * i + 2 * kv + (6 * h + i if lora else 0)) * bytes_per_value
    if grad_ckpt:
        return config.num_hidden_layers * h * bytes_per_value + block
    return config.num_hidden_layers * block


def estimate_memory(config, method: str = "qlora", seq_len: int = 1024, batch: int = 1, grad_ckpt: bool = True,
                    optimizer: str = "adamw", r: int = 16, dtype_bytes: int = 2,
                    overhead_gb: float = CUDA_OVERHEAD_GB) -> dict:
    """Training memory in GiB by part (`weights`, `adapters`, `gradients`, `optimizer`, `activations`,
    `logits`, `overhead`) and their `total`, plus `weights_at_load` and `trainable_params`, for `method` "full",
    "lora" or "qlora" (see the module docstring for what each part assumes). `dtype_bytes` is the
    compute dtype (2 for bf16/fp16 on a GPU, 4 for fp32 on a CPU, where `overhead_gb=0`).

    >>> m = estimate_memory(architecture("Llama-2-7B"), "qlora")
    >>> round(m["weights_at_load"], 2), round(m["weights"], 2), m["total"] < 14.7
    (3.6, 4.09, True)
    """
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method must be 'full', 'lora' or 'qlora', not {method!r}")
    if optimizer not in ("adamw", "adamw_8bit", "sgd"):
        raise ValueError(f"optimizer must be 'adamw', 'adamw_8bit' or 'sgd', not {optimizer!r}")
    p = parameter_counts(config)
    if method == "qlora":
        at_load = p["linear"] * NF4_BITS / 8 + (p["embedding"] + p["other"]) * dtype_bytes
        weights = p["linear"] * NF4_BITS / 8 + (p["embedding"] + p["other"]) * 4
    else:
        weights = at_load = p["total"] * dtype_bytes
    adapter_params = 0 if method == "full" else lora_parameters(config, r)
    adapters = adapter_params * 4  # peft keeps adapters in fp32
    trainable, trainable_bytes = (p["total"], dtype_bytes) if method == "full" else (adapter_params, 4)
    gradients = trainable * trainable_bytes
    optimizer_bytes = {"adamw": 2 * trainable_bytes, "adamw_8bit": 2, "sgd": 0}[optimizer] * trainable
    tokens = seq_len * batch
    activations = tokens * activation_bytes_per_token(config, grad_ckpt, dtype_bytes, lora=method != "full")
    logits = tokens * config.vocab_size * (dtype_bytes + 4 + 4)  # logits, fp32 copy, its gradient
    parts = {"weights": weights, "adapters": adapters, "gradients": gradients, "optimizer": optimizer_bytes,
             "activations": activations, "logits": logits}
    out = {k: v / GB for k, v in parts.items()} | {"overhead": overhead_gb}
    out["total"] = sum(out.values())
    out["weights_at_load"] = at_load / GB
    out["trainable_params"] = trainable
    return out


def max_tokens_per_step(config, method: str, capacity_gib: float, grad_ckpt: bool = True, **kwargs) -> int:
    """The most tokens per optimizer micro-step (batch × sequence length) whose estimate stays under
    90% of `capacity_gib`; 0 when even the weights and optimizer do not fit.

    >>> max_tokens_per_step(architecture("Llama-3.1-8B"), "full", 14.7)
    0
    """
    fixed = estimate_memory(config, method, seq_len=0, batch=0, grad_ckpt=grad_ckpt, **kwargs)["total"]
    per_token = estimate_memory(config, method, seq_len=1, batch=1, grad_ckpt=grad_ckpt, **kwargs)["total"] - fixed
    return max(0, int((0.9 * capacity_gib - fixed) / per_token))


def memory_table(names=None, methods=("full", "lora", "qlora"), seq_len: int = 1024, batch: int = 1,
                 grad_ckpt: bool = True, optimizer: str = "adamw") -> list[dict]:
    """One row per (architecture, method): the estimated total in GiB and, per GPU in `GPUS`, whether
    it fits ("yes" under 90% of the card, "tight" under 100%, "no").

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
                row[gpu] = "yes" if est["total"] < 0.9 * capacity else "tight" if est["total"] < capacity else "no"
            rows.append(row)
    return rows


def measure_training_memory(model, batch: dict, optimizer: str = "adamw") -> dict:
    """Measure, in GiB, what `estimate_memory` estimates, on a real model and batch (CPU or GPU):
    `weights` (parameters and buffers), `gradients` and `optimizer` (bytes of the gradients and
    AdamW states after one step, trainable parameters only), `activations` (bytes of the distinct
    tensors autograd saved during the forward pass, parameters excluded; the logits' share is in
    `logits`, from the output head onward) and `trainable_params`. The model takes one optimizer step.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def keep(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    head = model.get_output_embeddings()
    before_head: dict[int, int] = {}
    hook = head.register_forward_pre_hook(lambda module, args: before_head.update(saved))
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = model(**batch, use_cache=False).loss
    hook.remove()
    loss.backward()
    opt = torch.optim.AdamW(params, lr=1e-6) if optimizer == "adamw" else None
    if opt:
        opt.step()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    states = sum(v.numel() * v.element_size() for st in (opt.state.values() if opt else []) for v in st.values()
                 if torch.is_tensor(v) and v.dim() > 0)
    model.zero_grad(set_to_none=True)
    model.eval()
    blocks = sum(before_head.values())
    return {"weights": model.get_memory_footprint() / GB, "gradients": grads / GB, "optimizer": states / GB,
            "activations": blocks / GB, "logits": (sum(saved.values()) - blocks) / GB,
            "trainable_params": sum(p.numel() for p in params)}
