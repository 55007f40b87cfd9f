"""`train_sft`: the one training entry point notebooks and scripts share.

It wraps `transformers.Trainer` with our labels and collator: AdamW, warmup + cosine schedule, loss
averaged over every target token of the whole accumulated batch (so neither padding nor gradient
accumulation changes it), optional per-token `loss_weights` (prompt-loss weighting), eval loss, and a
`log_history` that `plot_loss_curves` turns into curves.
"""

from __future__ import annotations

import tempfile

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from .attention import check_packed_batch
from .collators import PaddedCollator
from .masking import IGNORE, weighted_lm_loss


class WeightedLossTrainer(Trainer):
    """Trainer whose loss is `weighted_lm_loss`: sum of (weighted) token losses over the number (or
    total weight) of target tokens in the whole accumulated batch."""

    loss_is_scaled_for_ga = True  # compute_loss already divides by the accumulated token count
    embedding_lr: float | None = None  # the embeddings' and output head's rate (None: the model's)

    def create_optimizer(self, model=None):
        """Trainer's AdamW, with the input embeddings and the output head in groups of their own at
        `embedding_lr` when it is set (the scheduler, created after, scales every group alike)."""
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.embedding_lr is None:
            return optimizer
        model = self.model
        own = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings())
               if m is not None and getattr(m, "weight", None) is not None}
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in own]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in own]
                optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"},
                                           "params": moved, "lr": self.embedding_lr})
        return optimizer

    def _get_num_items_in_batch(self, batch_samples, device):
        """Target tokens (or their total weight) of the whole accumulated batch, over every
        data-parallel process, divided by the number of processes. Each process's loss is then
        (its token losses) * processes / (all target tokens), and DDP's mean of the processes'
        gradients is the gradient of the one-process loss over all the batches: exact, whatever
        each process's share of target tokens (transformers gathers the count the same way and
        multiplies the loss by the processes instead). `average_tokens_across_devices=False`
        keeps each process's own count (a mean of per-process means)."""
        if not batch_samples or "labels" not in batch_samples[0]:
            return None
        total = torch.zeros((), device=device)
        for b in batch_samples:
            w = (b["labels"][..., 1:] != IGNORE).float()
            if "loss_weights" in b:
                w = w * b["loss_weights"][..., 1:]
            total += w.sum().to(device)
        processes = self.accelerator.num_processes
        if processes > 1 and self.args.average_tokens_across_devices:
            total = self.accelerator.gather(total).sum() / processes
        return total

    def _get_train_sampler(self, train_dataset=None):
        data = train_dataset if train_dataset is not None else self.train_dataset
        if not isinstance(data, WithPadRows):  # rows that train nothing go last (`TailPaddedSampler`)
            return super()._get_train_sampler(train_dataset)
        return TailPaddedSampler(len(data.data), data.pad, self.args.data_seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        weights = inputs.pop("loss_weights", None)
        # refuse loudly any packed batch the model's attention would let samples see across
        check_packed_batch(inputs, self.model.config._attn_implementation)
        inputs["use_cache"] = False  # a cache would disable the packed-sample mask
        outputs = model(**inputs)
        loss = weighted_lm_loss(outputs.logits, labels, weights, num_items=num_items_in_batch)
        return (loss, outputs) if return_outputs else loss


class TailPaddedSampler(torch.utils.data.Sampler):
    """One epoch's order under data parallelism: the `rows` real rows shuffled exactly as accelerate's
    seeded sampler shuffles them in a one-process run, then `pad` rows that train nothing (all labels
    -100), so that every process gets full batches and the last step holds the same real rows as the
    one-process step with gradient accumulation. Without it accelerate completes the last batches
    with repeats of the first rows (`even_batches`): a row trained twice, a loss that differs. Not a
    `RandomSampler`, so accelerate keeps it as it is.

    >>> list(TailPaddedSampler(5, 3, seed=0))[5:]
    [5, 6, 7]
    """

    def __init__(self, rows: int, pad: int, seed: int | None):
        from accelerate.data_loader import SeedableRandomSampler

        self.shuffled = SeedableRandomSampler(range(rows), data_seed=seed)
        self.rows, self.pad = rows, pad

    def __len__(self) -> int:
        return self.rows + self.pad

    def __iter__(self):
        yield from self.shuffled
        yield from range(self.rows, self.rows + self.pad)

    def set_epoch(self, epoch: int) -> None:
        self.shuffled.set_epoch(epoch)


class WithPadRows(torch.utils.data.Dataset):
    """`data` followed by `pad` copies of its first row with nothing trained (labels -100, loss weights
    0): shapes and keys every collator knows, no loss, no target token counted."""

    def __init__(self, data, pad: int):
        self.data, self.pad = data, pad
        first = dict(data[0])
        self.blank = {**first, "labels": [IGNORE] * len(first["labels"])}
        if "loss_weights" in first:
            self.blank["loss_weights"] = [0.0] * len(first["loss_weights"])

    def __len__(self) -> int:
        return len(self.data) + self.pad

    def __getitem__(self, i: int) -> dict:
        return self.data[i] if i < len(self.data) else self.blank


def pad_rows_needed(rows: int, batch_size: int, processes: int) -> int:
    """Rows to append so that `rows` fill whole batches on every one of `processes` processes.

    >>> pad_rows_needed(19, 3, 2), pad_rows_needed(18, 3, 2), pad_rows_needed(19, 3, 1)
    (5, 0, 0)
    """
    return (-rows) % (batch_size * processes) if processes > 1 else 0


class EvalLossCallback(TrainerCallback):
    """Logs `eval_loss(model, eval)` (token-weighted, on exactly `eval`'s labels) every `every` steps
    (or, with `every="epoch"`, at every epoch's end) and at step 0 and the last step, into the
    trainer's `log_history`. With `patience`, stops training
    once the loss has not improved for `patience` evaluations and puts back the trainable weights of
    the best one (early stopping). The best weights (`best_weights`) are kept on the CPU: for full
    fine-tuning a copy on the GPU would be 4 more bytes per parameter there, which
    `estimate_memory` does not count; host memory holds them instead."""

    def __init__(self, tokenizer, examples: list[dict], every: int | str, patience: int | None = None):
        self.tokenizer, self.examples, self.every, self.patience = tokenizer, examples, every, patience
        self.best, self.best_weights, self.bad = float("inf"), None, 0

    def _log(self, state, control, model):
        if not any(h.get("step") == state.global_step and "eval_loss" in h for h in state.log_history):
            loss = eval_loss(model, self.tokenizer, self.examples)
            state.log_history.append({"eval_loss": loss, "step": state.global_step})
            if self.patience:
                if loss < self.best - 1e-4:
                    self.best, self.bad = loss, 0
                    self.best_weights = {n: p.detach().to("cpu", copy=True)
                                         for n, p in model.named_parameters() if p.requires_grad}
                else:
                    self.bad += 1
                    control.should_training_stop = self.bad >= self.patience
        model.train()
        return control

    def on_train_begin(self, args, state, control, model=None, **kw):
        return self._log(state, control, model)

    def on_step_end(self, args, state, control, model=None, **kw):
        if is_due(self.every, state):
            return self._log(state, control, model)

    def on_epoch_end(self, args, state, control, model=None, **kw):
        if self.every == "epoch":
            return self._log(state, control, model)

    def on_train_end(self, args, state, control, model=None, **kw):
        if self.patience and self.best_weights is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self.best_weights:
                        p.copy_(self.best_weights[n])  # back to the parameter's device and dtype


def is_due(every: int | str, state) -> bool:
    """Whether a step-end evaluation is due: every `every` steps, and at the last step (with
    `every="epoch"` only the last; the epochs' ends come from `on_epoch_end`)."""
    periodic = every != "epoch" and state.global_step % every == 0
    return periodic or state.global_step == state.max_steps


def train_sft(model, tokenizer, train: list[dict], eval: list[dict] | None = None, *,
              resume_from_checkpoint: str | bool | None = None, **settings) -> list[dict]:
    """Fine-tune `model` in place on labelled examples (from `build_labels`); returns `log_history`.

    `settings` are `make_trainer`'s keywords (its signature has the defaults): `lr`, `epochs`,
    `max_steps`, `batch_size`, `grad_accum`, `warmup`, `weight_decay`, `seed`, `eval_steps` (or
    "epoch"),
    `logging_steps`, `group_by_length`, `output_dir`, `collator`, `save_steps`,
    `early_stopping_patience`, `precision`, `pure_bf16`, `callbacks`, `schedule`, `embedding_lr`
    (the input embeddings and output head at their own peak rate); any other keyword goes to
    `TrainingArguments`.

    Effective batch = `batch_size * grad_accum`. Warmup is a fraction of the steps (or a step count when ≥
    1), then `schedule` (transformers' `lr_scheduler_type`: "cosine", "linear", "constant_with_warmup",
    ...). With `eval`, the token-weighted loss on `eval`'s labels is logged at the start, every `eval_steps`
    and at the end. `group_by_length` batches examples of similar length together: less padding, but batches
    of one kind of example (all profiles, all one-word answers); on the course data it trained markedly
    worse per step than random batches (response loss 1.29 vs 0.79 after 300 steps), so it is off by
    default. Packing (lesson 02) removes the padding without that cost. `collator` defaults to
    `PaddedCollator`; pass `PackedCollator` with rows from `pack_examples` (then `batch_size` counts rows)
    or `PaddingFreeCollator`. With `save_steps`, a checkpoint (weights or adapters, optimizer, scheduler,
    RNG states) goes to `output_dir/checkpoint-N` every `save_steps` steps; `resume_from_checkpoint` (a
    checkpoint folder, or True for the latest in `output_dir`) continues a run on the same curve. With
    `eval` and `early_stopping_patience`, training stops after that many evaluations without a lower eval
    loss and the model keeps the weights of the best one; `callbacks` are extra `TrainerCallback`s. The
    model may be a peft model (LoRA / QLoRA): only its adapters train. Other keyword arguments go to
    `TrainingArguments`.

    Precision (`sft_helpers.precision`): `precision` is the lane ("fp32", "fp16", "bf16"; by default
    the half precision the model's weights are in, else the device's, `device_settings`). Whatever
    trains is cast to fp32 first (full weights, adapters, trained embedding copies) and computes under
    bf16/fp16 autocast, with a loss scaler on the fp16 lane; `pure_bf16=True` (bf16 lane only) keeps
    bf16 weights and optimizer states instead (half the memory; small updates round away). On a CPU
    the fp16 lane runs as on a T4: fp16 autocast and a `torch.amp.GradScaler("cpu")`.

    >>> from sft_helpers import load_model
    >>> from sft_helpers.course.data import load_split
    >>> from sft_helpers.masking import build_labels
    >>> model, tok = load_model("tiny")
    >>> train, _ = build_labels(load_split("train")[:32], tok, "completion_only")
    >>> history = train_sft(model, tok, train, max_steps=2, batch_size=16)
    >>> history[-1]["step"]
    2
    """
    trainer = make_trainer(model, tokenizer, train, eval, **settings)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    model.eval()
    return trainer.state.log_history


def make_trainer(model, tokenizer, train: list[dict], eval: list[dict] | None = None, *, lr: float = 1e-3,
                 epochs: float = 1.0, max_steps: int = -1, batch_size: int = 16, grad_accum: int = 1,
                 warmup: float = 0.05, weight_decay: float = 0.01, seed: int = 0, eval_steps: int | str | None = None,
                 logging_steps: int = 10, group_by_length: bool = False, output_dir: str | None = None,
                 collator=None, save_steps: int | None = None, early_stopping_patience: int | None = None,
                 precision: str | None = None, pure_bf16: bool = False, callbacks: list | None = None,
                 schedule: str = "cosine", embedding_lr: float | None = None, **args) -> WeightedLossTrainer:
    """The `WeightedLossTrainer` that `train_sft` builds and trains, not yet trained: to look inside
    a step (`trainer.compute_loss`) or to call `.train()` yourself. The settings are `train_sft`'s
    (described there; defaults: LR 1e-3, batch 16, warmup 5% then cosine, weight decay 0.01).

    >>> from sft_helpers import load_model
    >>> model, tok = load_model("tiny")
    >>> type(make_trainer(model, tok, [], max_steps=1)).__name__
    'WeightedLossTrainer'
    """
    from .models import device_settings
    from .progress import progress_disabled

    s = device_settings(str(model.device))
    precision = training_precision(model, precision, pure_bf16)
    targs = TrainingArguments(
        output_dir=output_dir or tempfile.mkdtemp(prefix="sft-"), per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size, gradient_accumulation_steps=grad_accum, learning_rate=lr,
        num_train_epochs=epochs, max_steps=max_steps, lr_scheduler_type=schedule, warmup_steps=warmup,
        weight_decay=weight_decay, logging_steps=logging_steps, seed=seed, data_seed=seed,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, report_to="none",
        remove_unused_columns=False, disable_tqdm=progress_disabled(),
        bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=s["device"] == "cpu",
        dataloader_num_workers=0, train_sampling_strategy="group_by_length" if group_by_length else "random",
        **args)
    callbacks = list(callbacks or []) + (
        [EvalLossCallback(tokenizer, eval, eval_steps or logging_steps, early_stopping_patience)] if eval else [])
    pad = pad_rows_needed(len(train), batch_size, targs.world_size) if not group_by_length and len(train) else 0
    trainer = WeightedLossTrainer(model=model, args=targs, train_dataset=WithPadRows(train, pad) if pad else train,
                                  callbacks=callbacks, data_collator=collator or PaddedCollator(tokenizer.pad_token_id))
    trainer.remove_callback(PrinterCallback)  # without a progress bar Trainer prints raw log dicts instead
    if precision == "fp16" and s["device"] == "cpu":
        # accelerate skips fp16 autocast and the loss scaler on a CPU; run them as on a T4
        trainer.accelerator.native_amp = True
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu")
    trainer.embedding_lr = embedding_lr
    return trainer


def training_precision(model, precision: str | None = None, pure_bf16: bool = False) -> str:
    """Apply the precision policy to `model` before training and return its lane.

    The lane is `precision`, else the half precision the model's weights are in, else the device's
    (`device_settings`). Mixed precision (default): every trainable weight is cast to fp32 (frozen
    weights stay as loaded). `pure_bf16`: the bf16 lane only, every trainable weight bf16. Raises
    when the model does not reach that state (`check_precision_policy`).

    >>> from sft_helpers import load_model
    >>> model = load_model("tiny", precision="bf16")[0]
    >>> training_precision(model), model.lm_head.weight.dtype
    ('bf16', torch.float32)
    """
    from .models import device_settings
    from .precision import (
        PRECISIONS,
        cast_trainable_to_fp32,
        check_precision_policy,
        model_precision,
        precision_name,
    )

    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, not {precision!r}")
    held = model_precision(model)
    precision = precision or (held if held != "fp32" else precision_name(device_settings(str(model.device))["dtype"]))
    if pure_bf16:
        if precision != "bf16":
            raise ValueError(f"pure_bf16 needs the bf16 lane, not {precision!r} (fp16 without fp32 master "
                             "weights overflows and cannot be loss-scaled)")
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point():
                p.data = p.data.to(torch.bfloat16)
    else:
        cast_trainable_to_fp32(model)
    check_precision_policy(model, pure_bf16)
    return precision


def _length_batches(model, tokenizer, examples: list[dict], batch_size: int):
    """`(indices, labels, logits)` for batches of `examples` taken in length order, so they carry
    little padding."""
    collate = PaddedCollator(tokenizer.pad_token_id)
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = {k: v.to(model.device) for k, v in collate([examples[i] for i in index]).items()}
        yield index, batch["labels"], model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def gradient_noise(model, tokenizer, examples: list[dict], batch_size: int, n_batches: int = 8,
                   seed: int = 0, micro_batch: int = 8) -> list[float]:
    """How far mini-batch gradients of `batch_size` examples scatter around their mean, at the
    model's current weights: `n_batches` disjoint batches drawn from `examples` (labelled), and for
    each, the squared distance of its gradient (all trainable parameters, the course's loss) from
    the batches' mean gradient, times n/(n-1). Each entry is an unbiased estimate of the total
    variance of a mini-batch gradient, which falls as 1/batch_size for independent examples: the
    per-batch scores `stats.compare(..., paired=False)` puts an interval on. Each batch's gradient
    is accumulated over `micro_batch` examples at a time (normalised by the whole batch's target
    tokens), so memory does not grow with `batch_size`.

    >>> noise = gradient_noise(model, tokenizer, labelled, batch_size=8)  # doctest: +SKIP
    >>> len(noise)  # doctest: +SKIP
    8
    """
    import random

    if n_batches < 2 or batch_size * n_batches > len(examples):
        raise ValueError(f"gradient_noise needs n_batches >= 2 and {batch_size} x {n_batches} examples, "
                         f"got n_batches={n_batches} and {len(examples)} examples")
    order = random.Random(seed).sample(range(len(examples)), batch_size * n_batches)
    collate = PaddedCollator(tokenizer.pad_token_id)
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()  # the same function for every batch: no dropout
    grads = []
    for k in range(n_batches):
        batch = [examples[i] for i in order[k * batch_size:(k + 1) * batch_size]]
        targets = sum(sum(label != IGNORE for label in e["labels"][1:]) for e in batch)
        model.zero_grad(set_to_none=True)
        for start in range(0, batch_size, micro_batch):
            part = {key: v.to(model.device) for key, v in collate(batch[start:start + micro_batch]).items()}
            logits = model(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
            weighted_lm_loss(logits, part["labels"], num_items=targets).backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]).float())
    model.zero_grad(set_to_none=True)
    g = torch.stack(grads)
    return ((g - g.mean(0)).pow(2).sum(1) * n_batches / (n_batches - 1)).tolist()


@torch.no_grad()
def eval_loss(model, tokenizer, examples: list[dict], batch_size: int = 8) -> float:
    """Mean token loss over `examples`' labels (e.g. completion-only labels of a held-out split, so
    runs trained with different masks are compared on the same response tokens). Batches are taken in
    length order, so they carry little padding (the sum over tokens does not depend on the order)."""
    total, count = 0.0, 0
    for _, labels, logits in _length_batches(model, tokenizer, examples, batch_size):
        n = (labels[:, 1:] != IGNORE).sum().item()
        total += weighted_lm_loss(logits, labels).item() * n
        count += n
    return total / count


@torch.no_grad()
def example_losses(model, tokenizer, examples: list[dict], batch_size: int = 8) -> list[float]:
    """Each example's mean token loss over its labels, in the order given: the per-item scores that
    `sft_helpers.stats.compare` needs to put an interval on a loss difference between two models
    (`eval_loss` is the token-weighted mean of the same losses).

    >>> losses = example_losses(model, tokenizer, labelled[:3])  # doctest: +SKIP
    >>> len(losses)  # doctest: +SKIP
    3
    """
    out = [float("nan")] * len(examples)
    for index, labels, logits in _length_batches(model, tokenizer, examples, batch_size):
        for row, i in enumerate(index):
            out[i] = weighted_lm_loss(logits[row:row + 1], labels[row:row + 1]).item()
    return out
