"""Benchmarks whose figures go to `docs/benchmarks.md` (commands, never timed tests).

    python -m sft_helpers.bench packing [--examples 2520] [--lengths 1000000]
    python -m sft_helpers.bench qlora [--arch tiny|Llama-1B|Llama-2-7B] [--seq-len 256] [--batch 2]

`packing` measures (lesson 02): packing efficiency of sequential / FFD / BFD at max_length 2048 on
10k long-tailed lengths; BFD speed on 1M lengths next to TRL's `pack_dataset(strategy="bfd")` in
the same run; and training throughput (real tokens per second, peak memory, final loss) of padded,
packed and padding-free batches on the tiny base. `training_throughput` is also what notebook 02
calls at small scale.

`qlora` (lesson 03) trains a random-initialised model of a given shape a few steps by full
fine-tuning, LoRA and QLoRA and compares the memory with `memory.estimate_memory`: on a GPU the
peak allocated memory, on a CPU each part of the estimate.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import time
from pathlib import Path

import torch

BATCH_SAMPLES = 16  # samples per padded / padding-free step
ROWS_PER_STEP = 2  # packed rows per step, each long enough to hold BATCH_SAMPLES / 2 average samples
METHODS = ("padded", "packed", "packed_sorted", "padding_free")


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (Linux), in MB: VmRSS now, VmHWM the peak since the reset."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _reset_peak_rss() -> None:
    """Start a new resident-memory peak (VmHWM) for this process (Linux ≥ 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class _CountingCollator:
    """Wraps a collator and counts real tokens (labels' sample tokens) and tensor slots per batch."""

    def __init__(self, collate):
        self.collate, self.real, self.slots = collate, 0, 0

    def __call__(self, features):
        batch = self.collate(features)
        self.real += sum(len(f["input_ids"]) for f in features)
        self.slots += batch["input_ids"].numel()
        return batch


def training_throughput(method: str, model_id: str = "tiny", n_examples: int = 600, lr: float = 1e-3,
                        seed: int = 0) -> dict:
    """Train one epoch over the first `n_examples` training conversations (completion-only labels)
    with `method` in `METHODS` and measure it: real (non-pad) tokens per second, the share of tensor
    slots that were real tokens, steps, peak memory above the start (GPU: allocated; CPU: the peak
    resident set since a reset just before training) and the validation loss after the epoch.

    * `padded`: `PaddedCollator`, `BATCH_SAMPLES` random samples per step;
    * `padding_free`: `PaddingFreeCollator`, the same batches flattened (so the same loss);
    * `packed`: `ROWS_PER_STEP` rows per step, packed by BFD in shuffled order (`shuffle_seed`);
      rows are sized to hold as many tokens as a padded step's samples on average (so about as many
      steps), and never shorter than the longest sample;
    * `packed_sorted`: the same rows sizes, BFD longest first (rows of similar lengths).
    """
    from .collators import PackedCollator, PaddedCollator, PaddingFreeCollator
    from .data import load_split
    from .masking import build_labels
    from .models import load_model
    from .packing import pack_for_steps
    from .training import eval_loss, train_sft

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    model, tok = load_model(model_id)
    train, _ = build_labels(load_split("train")[:n_examples], tok, "completion_only")
    val, _ = build_labels(load_split("validation"), tok, "completion_only")
    data, batch_size, row_length = train, BATCH_SAMPLES, None
    if method == "padded":
        collate = PaddedCollator(tok.pad_token_id)
    elif method == "padding_free":
        collate = PaddingFreeCollator()
    else:
        data, row_length = pack_for_steps(train, BATCH_SAMPLES, ROWS_PER_STEP,
                                          shuffle_seed=seed if method == "packed" else None)
        batch_size, collate = ROWS_PER_STEP, PackedCollator(tok.pad_token_id, row_length)
    counting = _CountingCollator(collate)
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        start_mem = torch.cuda.memory_allocated() / 2**20
    else:
        start_mem = _status_mb("VmRSS")
        _reset_peak_rss()
    t0 = time.perf_counter()
    history = train_sft(model, tok, data, lr=lr, batch_size=batch_size, seed=seed, collator=counting,
                        logging_steps=5)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _status_mb("VmHWM")
    return {"method": method, "steps": history[-1]["step"], "real_tokens": counting.real,
            "utilisation": counting.real / counting.slots, "seconds": seconds,
            "tokens_per_s": counting.real / seconds, "peak_mem_mb": peak - start_mem,
            "val_loss": eval_loss(model, tok, val), "row_length": row_length if "packed" in method else None}


def throughput_table(methods=METHODS, isolate: bool = True, **kwargs) -> list[dict]:
    """`training_throughput` for each method in order, each in a fresh Python process (so the CPU
    peak memory of one method is not hidden by memory another one left behind); a progress bar
    counts methods. Keyword arguments go to `training_throughput`.

    >>> rows = throughput_table(["padded", "packed"], n_examples=24)  # doctest: +SKIP
    """
    import json
    import subprocess
    import sys

    from .progress import progress_bar

    rows = []
    for method in progress_bar(list(methods), desc="methods"):
        args = {"method": method, **kwargs}
        if not isolate:
            rows.append(training_throughput(**args))
            continue
        env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "TRANSFORMERS_VERBOSITY": "error"}
        done = subprocess.run([sys.executable, "-m", "sft_helpers.bench", "throughput-one", json.dumps(args)],
                              capture_output=True, text=True, env=env)
        if done.returncode:
            raise RuntimeError(f"throughput run for {method!r} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def packer_speed(n: int = 1_000_000, max_length: int = 2048, seed: int = 1) -> list[dict]:
    """Our `pack_bfd` on `n` long-tailed lengths and TRL's `pack_dataset(strategy="bfd")` on a dataset
    of sequences with the same lengths, in this run: seconds, rows and efficiency. TRL bins within
    each `map` batch (1,000 examples by default) and also gathers the token ids into the rows."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from trl import pack_dataset

    from .packing import long_tailed_lengths, pack_bfd, packing_stats

    disable_progress_bar()
    lengths = long_tailed_lengths(n, max_length, seed=seed)
    tokens = sum(lengths)
    t0 = time.perf_counter()
    ours = packing_stats(pack_bfd(lengths, max_length))
    rows = [{"packer": "sft_helpers.pack_bfd (lengths → bins)", "seconds": time.perf_counter() - t0,
             "rows": ours["rows"], "efficiency": ours["efficiency"]}]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    column = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.zeros(tokens, dtype=np.int32)))
    dataset = Dataset(pa.table({"input_ids": column}))
    for label, kwargs in (("TRL pack_dataset bfd (1,000-example map batches)", None),
                          ("TRL pack_dataset bfd (one batch: whole dataset)", {"batch_size": None})):
        t0 = time.perf_counter()
        packed = pack_dataset(dataset, max_length, strategy="bfd", map_kwargs=kwargs)
        rows.append({"packer": label, "seconds": time.perf_counter() - t0, "rows": len(packed),
                     "efficiency": tokens / (len(packed) * max_length)})
    return rows


def efficiency_table(lengths: list[int], max_length: int) -> list[dict]:
    """Efficiency of padded batches of `BATCH_SAMPLES` (random, length-grouped) and of rows of
    `max_length` from each packer, longest first, and BFD in a shuffled order (what training uses)."""
    import random

    from .packing import PACKERS, pack_bfd, packing_stats, padding_stats

    rows = [{"method": f"padded, batches of {BATCH_SAMPLES} (random)",
             "efficiency": padding_stats(lengths, BATCH_SAMPLES)["efficiency"]},
            {"method": f"padded, batches of {BATCH_SAMPLES} (length-grouped)",
             "efficiency": padding_stats(lengths, BATCH_SAMPLES, group_by_length=True)["efficiency"]}]
    for name, pack in PACKERS.items():
        s = packing_stats(pack(lengths, max_length, overflow="truncate"))
        rows.append({"method": f"packed rows of {max_length}, {name}", "efficiency": s["efficiency"],
                     "rows": s["rows"]})
    shuffled = lengths[:]
    random.Random(0).shuffle(shuffled)
    s = packing_stats(pack_bfd(shuffled, max_length, overflow="truncate", decreasing=False))
    rows.append({"method": f"packed rows of {max_length}, bfd in shuffled order", "efficiency": s["efficiency"],
                 "rows": s["rows"]})
    return rows


def _md_table(rows: list[dict], columns: dict) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[key]) if key in r else "" for key, fmt in columns.values()) + " |")
    return "\n".join(lines)


def machine() -> str:
    """One line naming the machine and the versions that produced a figure."""
    import transformers
    import trl

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {device}; "
            f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")


def write_section(name: str, body: str, path: Path = Path("docs/benchmarks.md")) -> None:
    """Replace (or append) the section between `<!-- bench:name -->` markers in `path`."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def bench_packing(n_examples: int, n_lengths: int) -> str:
    from .data import load_split
    from .masking import build_labels
    from .models import load_tokenizer
    from .packing import long_tailed_lengths

    tok = load_tokenizer("tiny")
    course, _ = build_labels(load_split("train"), tok, "completion_only")
    course_lengths = [len(e["input_ids"]) for e in course]
    eff_cols = {"method": ("method", "{}"), "efficiency": ("efficiency", "{:.1%}"), "rows": ("rows", "{:,}")}
    print("efficiency ...", flush=True)
    tail_lengths = long_tailed_lengths(10_000, 2048)
    long_tail = efficiency_table(tail_lengths, 2048)
    on_course = efficiency_table(course_lengths, 512)
    print("packer speed ...", flush=True)
    speed = packer_speed(n_lengths)
    print("training throughput ...", flush=True)
    train = throughput_table(n_examples=n_examples)
    by = {r["method"]: r for r in train}
    ratio = by["packed"]["tokens_per_s"] / by["padded"]["tokens_per_s"]
    ratio_free = by["padding_free"]["tokens_per_s"] / by["padded"]["tokens_per_s"]
    return f"""## Packing (`python -m sft_helpers.bench packing`, {datetime.date.today()})

Machine: {machine()}.

**Efficiency at max_length 2048 on 10,000 long-tailed lengths** (log-normal, median 200, mean
{sum(tail_lengths) / len(tail_lengths):.0f}, clipped at 2048; `packing.long_tailed_lengths`). Target: BFD ≥ 99%.

{_md_table(long_tail, eff_cols)}

On the course's own training split ({len(course_lengths):,} conversations, completion-only labels, rows of 512):

{_md_table(on_course, eff_cols)}

**Packer speed on {n_lengths:,} long-tailed lengths at 2048** (same lengths, same run). Target: ours at least as fast as TRL.
TRL's figure includes gathering the token ids into rows (ours only computes the bins), and TRL bins
within each 1,000-example `map` batch, which costs efficiency.

{_md_table(speed, {"packer": ("packer", "{}"), "seconds": ("seconds", "{:.1f}"), "rows": ("rows", "{:,}"), "efficiency": ("efficiency", "{:.2%}")})}

**Training throughput on the tiny base** ({n_examples:,} training conversations, one epoch, completion-only labels,
LR 1e-3, seed 0, each method in a fresh process; padded and padding-free steps hold {BATCH_SAMPLES} random samples,
packed steps {ROWS_PER_STEP} rows of {by["packed"]["row_length"]} tokens, about as many tokens and steps; `packed` is BFD on
shuffled samples, `packed_sorted` BFD longest first). Real tokens/s counts only non-pad tokens. Peak memory
is the rise of the process's peak resident set during training above its size when training started (CPU).
Target: packed / padded ≥ 2.0× with equal loss.

{_md_table(train, {"method": ("method", "{}"), "steps": ("steps", "{}"), "real tokens": ("real_tokens", "{:,}"), "real / slots": ("utilisation", "{:.0%}"), "seconds": ("seconds", "{:.1f}"), "real tokens/s": ("tokens_per_s", "{:,.0f}"), "peak memory (MB)": ("peak_mem_mb", "{:.0f}"), "val loss": ("val_loss", "{:.3f}")})}

Packed / padded throughput: **{ratio:.2f}×**; padding-free / padded: **{ratio_free:.2f}×**.
Validation loss after the epoch: padded {by["padded"]["val_loss"]:.3f}, padding-free {by["padding_free"]["val_loss"]:.3f}
(the same batches, flattened: the same loss), packed {by["packed"]["val_loss"]:.3f} (other batches, same data and
steps), packed longest-first {by["packed_sorted"]["val_loss"]:.3f}: BFD's sorted order puts samples of similar length,
here mostly of the same task family, in the same rows, and the less varied steps train worse; shuffling
before packing costs {(on_course[-2]["efficiency"] - on_course[-1]["efficiency"]) * 100:.1f} points of efficiency (rows of 512) and trains as well as random batches.
"""


QLORA_ARCHS = {"Llama-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True)}


def _random_model_folder(arch: str) -> str:
    """A folder holding a randomly initialised Llama/Qwen-shaped model named `arch` ("tiny" = the
    course's base config, a `memory.ARCHITECTURES` name, or one of `QLORA_ARCHS`) in the device's
    dtype, plus the tiny tokenizer, so `load_model(folder, quantization=...)` can load it."""
    import tempfile

    from transformers import AutoModelForCausalLM, LlamaConfig

    from .memory import architecture
    from .models import device_settings, load_tokenizer, model_folder

    if arch == "tiny":
        config = LlamaConfig.from_pretrained(model_folder("tiny"))
    elif arch in QLORA_ARCHS:
        config = LlamaConfig(**QLORA_ARCHS[arch])
    else:
        config = architecture(arch)
    folder = tempfile.mkdtemp(prefix=f"bench-{arch}-")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=device_settings()["dtype"])
    model.save_pretrained(folder)
    load_tokenizer("tiny").save_pretrained(folder)
    return folder


def qlora_memory(arch: str = "tiny", methods=("full", "lora", "qlora"), seq_len: int = 256, batch: int = 2,
                 steps: int = 3, grad_ckpt: bool | None = None) -> list[dict]:
    """For each method, train a random-initialised `arch` for `steps` AdamW steps on random tokens and
    compare the memory with `memory.estimate_memory`: on a GPU the peak allocated memory (the
    estimate without the CUDA-context overhead), on a CPU each part as `measure_training_memory`
    sees it. Also real tokens per second over the steps after the first."""
    from .lora import add_lora
    from .memory import estimate_memory, measure_training_memory
    from .models import device_settings, load_model

    s = device_settings()
    cuda = s["device"].startswith("cuda")
    grad_ckpt = cuda if grad_ckpt is None else grad_ckpt
    folder = _random_model_folder(arch)
    rows = []
    for method in methods:
        model, _ = load_model(folder, quantization="4bit" if method == "qlora" else None, gradient_checkpointing=grad_ckpt)
        if method != "full":
            model = add_lora(model, verbose=False)
        config = model.config
        est = estimate_memory(config, method, seq_len, batch, grad_ckpt, dtype_bytes=2 if cuda else 4, overhead_gb=0)
        ids = torch.randint(0, config.vocab_size, (batch, seq_len), device=s["device"])
        row = {"arch": arch, "method": method, "estimate_gib": est["total"]}
        if not cuda:
            m = measure_training_memory(model, {"input_ids": ids, "labels": ids})
            for part in ("weights", "gradients", "optimizer", "activations", "logits"):
                row[f"{part}_measured"] = m[part]
                row[f"{part}_estimate"] = est[part] + (est["adapters"] if part == "weights" else 0)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for step in range(steps + 1):
            if step == 1:
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 1024**3
            row["ratio"] = row["peak_gib"] / est["total"]
        row["tokens_per_s"] = steps * batch * seq_len / (time.perf_counter() - t0)
        rows.append(row)
        del model, opt
        if cuda:
            torch.cuda.empty_cache()
    return rows


def bench_qlora(arch: str, seq_len: int, batch: int, steps: int) -> str:
    rows = qlora_memory(arch, seq_len=seq_len, batch=batch, steps=steps)
    head = f"## QLoRA memory (`python -m sft_helpers.bench qlora --arch {arch}`, {datetime.date.today()})\n\n"
    head += f"Machine: {machine()}. Random-initialised {arch}, batch {batch} × {seq_len} tokens, {steps} AdamW steps.\n\n"
    if "peak_gib" in rows[0]:
        table = _md_table(rows, {"method": ("method", "{}"), "estimate (GiB)": ("estimate_gib", "{:.2f}"),
                                 "peak allocated (GiB)": ("peak_gib", "{:.2f}"), "measured / estimate": ("ratio", "{:.2f}"),
                                 "tokens/s": ("tokens_per_s", "{:,.0f}")})
        return head + "Target: the estimate within 15% of the measured peak.\n\n" + table + "\n"
    mib = {f"{p} {k} (MiB)": (f"{p}_{k}", "{:.2f}") for p in ("weights", "gradients", "optimizer", "activations", "logits")
           for k in ("measured", "estimate")}
    mib_rows = [{k: v * 1024 if isinstance(v, float) and k.endswith(("measured", "estimate")) else v for k, v in r.items()}
                for r in rows]
    table = _md_table(mib_rows, {"method": ("method", "{}"), **mib, "tokens/s": ("tokens_per_s", "{:,.0f}")})
    return head + ("No GPU: each part of the estimate (fp32, no CUDA overhead) next to what the CPU run holds "
                   "(`memory.measure_training_memory`: parameter and buffer bytes, gradient and AdamW-state bytes, "
                   "tensors saved for backward).\n\n") + table + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sft_helpers.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("packing", help="packing efficiency, packer speed and training throughput")
    p.add_argument("--examples", type=int, default=2520, help="training conversations per throughput run")
    p.add_argument("--lengths", type=int, default=1_000_000, help="lengths for the packer-speed run")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    q = sub.add_parser("qlora", help="training memory of full / LoRA / QLoRA vs the estimator")
    q.add_argument("--arch", default="tiny", help="tiny, a memory.ARCHITECTURES name, or Llama-1B")
    q.add_argument("--seq-len", type=int, default=256)
    q.add_argument("--batch", type=int, default=2)
    q.add_argument("--steps", type=int, default=3)
    q.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    one = sub.add_parser("throughput-one", help="(internal) one training_throughput run, JSON in and out")
    one.add_argument("kwargs")
    args = parser.parse_args(argv)
    if args.command == "throughput-one":
        import json

        torch.set_num_threads(torch.get_num_threads())
        print(json.dumps(training_throughput(**json.loads(args.kwargs))))
        return
    if args.command == "qlora":
        body = bench_qlora(args.arch, args.seq_len, args.batch, args.steps)
        write_section(f"qlora-{args.arch}", body, args.out)
        print(body)
        return
    body = bench_packing(args.examples, args.lengths)
    write_section(args.command, body, args.out)
    print(body)


if __name__ == "__main__":
    main()
