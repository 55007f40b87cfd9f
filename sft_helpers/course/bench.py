"""Benchmarks whose figures go to `docs/benchmarks.md` (commands, never timed tests).

    python -m sft_helpers.course.bench packing [--examples 2520] [--sizes 100000,1000000] [--speed-only]
    python -m sft_helpers.course.bench qlora [--arch tiny|Llama-1B|Llama-2-7B] [--seq-len 256] [--batch 2]
    python -m sft_helpers.course.bench gpu [--model tiny|smollm2-135m|Llama-0.2B|<hub id or folder>] [--steps 5]
    python -m sft_helpers.course.bench gpu --device cpu --smoke
    python -m sft_helpers.course.bench dedup [--n 100000] [--threshold 0.7]
    python -m sft_helpers.course.bench labelling [--n 100000] [--list-n 20000] [--num-proc 2]

`packing` measures (lesson 02): packing efficiency of sequential / FFD / BFD at max_length 2048 on
10k long-tailed lengths; the same packing job (labelled examples to packed rows) by our
`pack_dataset_columnar` and TRL's `pack_dataset(strategy="bfd")` on 100k and 1M examples, from a
dataset on disk (memory-mapped) and from one in memory, each in its own process (time, peak memory,
efficiency; `--speed-only` reruns just this part of the section);
and training throughput (real tokens per second, peak memory, final loss) of padded, packed and
padding-free batches on the tiny base. `training_throughput` is also what notebook 02 calls at small
scale.

`qlora` (lesson 03) trains a random-initialised model of a given shape a few steps by full
fine-tuning, LoRA and QLoRA and compares the memory with `memory.estimate_memory`: on a GPU the
peak allocated memory, on a CPU each part of the estimate.

`gpu` (issue 10; sized for under 8 minutes on one GPU, capped by `--budget-s`) trains every lane a
few steps: fp32 / fp16 / bf16 (where the card has bf16), sdpa and flash-attn when installed, full /
LoRA / LoRA + embeddings / QLoRA, on packed rows (several per batch), and records the device, the
dtypes of what trains and of AdamW's states, the loss scaler, the peak memory against the estimate,
packed against padded logits and the merged model's forward. A random ~0.22B Llama is built offline
(no hub). `--device cpu --smoke` runs the same code on the tiny base, the half-precision lanes
emulated on the CPU (slowly: about 5 s of CPU per half-precision run).

`labelling` (issue 14) times the labelling path of `sft-train` on `--n` course conversations (json
loader, `labelling.label_dataset` with `--num-proc` workers, again from its cache, columnar packing) and
the list path (`read_records`, `build_labels`, `pack_examples`) on `--list-n`, in a fresh process
with an empty datasets cache: wall and CPU seconds (workers included) and peak memory.

`dedup` (issue 15) times `dedup.exact_duplicates` and `dedup.near_duplicates` (MinHash + LSH) on
100k synthetic conversations with planted exact and near duplicates (`dedup.synthetic_conversations`,
seed 0): wall and CPU seconds, peak resident memory, and precision / recall against the planted pairs.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

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
    """Wraps a collator and counts real tokens (labels' sample tokens) and tensor slots per batch, and
    keeps each batch's trained (label) tokens in `label_tokens`."""

    def __init__(self, collate):
        self.collate, self.real, self.slots, self.label_tokens = collate, 0, 0, []

    def __call__(self, features):
        from ..masking import IGNORE

        batch = self.collate(features)
        self.real += sum(len(f["input_ids"]) for f in features)
        self.slots += batch["input_ids"].numel()
        self.label_tokens.append(int((batch["labels"][..., 1:] != IGNORE).sum()))
        return batch


def training_throughput(method: str, model_id: str = "tiny", n_examples: int = 600, lr: float = 1e-3,
                        seed: int = 0) -> dict:
    """Train one epoch over the first `n_examples` training conversations (completion-only labels)
    with `method` in `METHODS` and measure it: real (non-pad) tokens per second, the share of tensor
    slots that were real tokens, steps, peak memory above the start (GPU: allocated; CPU: the peak
    resident set since a reset just before training) and the validation loss after the epoch (on the
    lane's evaluation items, `sft_helpers.course.lanes`: the whole split on the tiny lane), and
    per validation conversation (`val_losses`, for `sft_helpers.stats.compare`).

    * `padded`: `PaddedCollator`, `BATCH_SAMPLES` random samples per step;
    * `padding_free`: `PaddingFreeCollator`, the same batches flattened (so the same loss);
    * `packed`: `ROWS_PER_STEP` rows per step, packed by BFD in shuffled order (`shuffle_seed`);
      rows are sized to hold as many tokens as a padded step's samples on average (so about as many
      steps), and never shorter than the longest sample;
    * `packed_sorted`: the same rows sizes, BFD longest first (rows of similar lengths).
    """
    from ..collators import PackedCollator, PaddedCollator, PaddingFreeCollator
    from .data import load_split
    from .lanes import lane
    from ..masking import build_labels
    from ..models import load_model
    from ..packing import pack_for_steps
    from ..training import eval_loss, example_losses, train_sft

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    model, tok = load_model(model_id)
    train, _ = build_labels(load_split("train")[:n_examples], tok, "completion_only")
    val, _ = build_labels(lane(model_id).items(load_split("validation")), tok, "completion_only")
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
            "val_loss": eval_loss(model, tok, val), "val_losses": example_losses(model, tok, val),
            "row_length": row_length if "packed" in method else None}


def throughput_table(methods=METHODS, isolate: bool = True, **kwargs) -> list[dict]:
    """`training_throughput` for each method in order, each in a fresh Python process (so the CPU
    peak memory of one method is not hidden by memory another one left behind); a progress bar
    counts methods. Keyword arguments go to `training_throughput`.

    >>> rows = throughput_table(["padded", "packed"], n_examples=24)  # doctest: +SKIP
    """
    import json
    import subprocess
    import sys

    from ..progress import progress_bar

    rows = []
    for method in progress_bar(list(methods), desc="methods"):
        args = {"method": method, **kwargs}
        if not isolate:
            rows.append(training_throughput(**args))
            continue
        env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "TRANSFORMERS_VERBOSITY": "error"}
        done = subprocess.run([sys.executable, "-m", "sft_helpers.course.bench", "throughput-one", json.dumps(args)],
                              capture_output=True, text=True, env=env)
        if done.returncode:
            raise RuntimeError(f"throughput run for {method!r} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


PACKER_RUNS = {"ours": "sft_helpers `pack_dataset_columnar` (BFD, whole dataset)",
               "trl": "TRL `pack_dataset` bfd (default: 1,000-example map batches)",
               "trl_whole": "TRL `pack_dataset` bfd (`batch_size=None`: whole dataset)",
               "lists": "sft_helpers `pack_examples` (Python lists; rows not a Dataset)"}


def labelled_dataset(n: int, max_length: int = 2048, seed: int = 1):
    """`n` labelled examples as a `datasets.Dataset`, built column-wise: `input_ids` (int32, random
    ids) of `packing.long_tailed_lengths` and `labels` (int64, the ids with the first of each
    example masked), the column types `Dataset.from_list` gives `build_labels`' output.

    >>> labelled_dataset(3, seed=0).features["labels"]
    List(Value('int64'))
    """
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset

    from ..packing import long_tailed_lengths

    offsets = np.concatenate([[0], np.cumsum(long_tailed_lengths(n, max_length, seed=seed))])
    ids = np.random.default_rng(seed).integers(0, 50_000, int(offsets[-1]), dtype=np.int32)
    labels = ids.astype(np.int64)
    labels[offsets[:-1]] = -100
    return Dataset(pa.table({"input_ids": pa.ListArray.from_arrays(offsets.astype(np.int32), ids),
                             "labels": pa.ListArray.from_arrays(offsets.astype(np.int32), labels)}))


CASES = {"disk": "a dataset on disk (`load_from_disk`: memory-mapped Arrow, cache files; packed to a file)",
         "memory": "an in-memory dataset (`load_from_disk(keep_in_memory=True)`: no cache files; packed in memory)"}


def packer_run(packer: str, path: str, max_length: int = 2048, case: str = "disk") -> dict:
    """One packing job of `packer_speed`, in this process: the labelled dataset saved at `path`, read
    as `case` says (`CASES`: memory-mapped, or into memory), to packed rows (`input_ids`, `labels`,
    `seq_lengths`; a Dataset, caching off: on disk written to a temporary arrow file, in memory kept
    there). Returns wall and CPU seconds, rows, efficiency, the peak resident memory (VmHWM, reset
    after loading) and its rise above the resident memory before."""
    from datasets import disable_caching, load_from_disk
    from datasets.utils.logging import disable_progress_bar
    from trl import pack_dataset

    from ..packing import pack_dataset_columnar, pack_examples

    disable_caching()
    disable_progress_bar()
    data = load_from_disk(path, keep_in_memory=case == "memory")
    start = _status_mb("VmRSS")
    _reset_peak_rss()
    if packer == "lists":
        data = data.to_list()  # the list path's input; its memory counts, its time does not
    t0, c0 = time.perf_counter(), time.process_time()
    if packer == "ours":
        packed = pack_dataset_columnar(data, max_length, overflow="truncate")[0]
    elif packer == "lists":
        packed = pack_examples(data, max_length, overflow="truncate")[0]
    else:
        whole = {"batch_size": None} if packer == "trl_whole" else None
        packed = pack_dataset(data, max_length, "bfd", map_kwargs=whole)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _status_mb("VmHWM")
    tokens = sum(sum(r["seq_lengths"]) for r in packed) if packer == "lists" else sum(
        c.values.to_numpy().sum() for c in packed.data["seq_lengths"].chunks)
    return {"packer": packer, "case": case, "seconds": seconds, "cpu_s": cpu, "rows": len(packed),
            "tokens": int(tokens), "efficiency": int(tokens) / (len(packed) * max_length), "peak_mb": peak,
            "rise_mb": peak - start}


def packer_speed(sizes=(100_000, 1_000_000), max_length: int = 2048, seed: int = 1,
                 packers=("ours", "trl", "trl_whole"), lists_up_to: int = 100_000, cases=tuple(CASES)) -> list[dict]:
    """The same job for every packer in `PACKER_RUNS`: labelled examples (`labelled_dataset`, saved
    to disk) to packed rows of `max_length`, at each size in `sizes`, for each of `cases` (`CASES`:
    on disk, in memory), each run in a fresh process (`packer_run`) so its peak memory is its own; the
    list path (its own in-memory input) only on disk and up to `lists_up_to` examples."""
    import json
    import subprocess
    import tempfile

    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
            labelled_dataset(n, max_length, seed).save_to_disk(tmp)
            os.sync()  # the first run should not share the disk with the write-back of the data
            for case in cases:
                for packer in [*packers, *(["lists"] if case == "disk" and n <= lists_up_to else [])]:
                    args = json.dumps({"packer": packer, "path": tmp, "max_length": max_length, "case": case})
                    load = os.getloadavg()[0]
                    done = subprocess.run([sys.executable, "-m", "sft_helpers.course.bench", "packer-one", args],
                                          capture_output=True, text=True)
                    if done.returncode:
                        raise RuntimeError(f"packer run {packer!r} ({case}) failed:\n{done.stderr[-3000:]}")
                    rows.append({"examples": n, "load": load, **json.loads(done.stdout.strip().splitlines()[-1])})
                    print(rows[-1], flush=True)
    return rows


def packer_speed_section(rows: list[dict], command: str) -> str:
    """The `packing-speed` part of the packing section: a table per size and case (`CASES`), each
    packer's time against ours in the same run, and a summary line per table (ours / TRL).

    >>> rows = [{"examples": 10, "case": "memory", "packer": p, "seconds": s, "cpu_s": s, "rows": 1, "tokens": 9,
    ...          "efficiency": 0.9, "peak_mb": 1, "rise_mb": 0, "load": 0} for p, s in [("ours", 1), ("trl", 2)]]
    >>> print(*[line for line in packer_speed_section(rows, "cmd").splitlines() if line.startswith("* ")])
    * 10 examples, in memory: **0.50** (0.50 CPU) against TRL's default; memory rise 0 MB against 0 MB
    """
    columns = {"packer": ("name", "{}"), "wall s": ("seconds", "{:.1f}"), "CPU s": ("cpu_s", "{:.1f}"),
               "ours / this (wall)": ("ratio", "{:.2f}"), "ours / this (CPU)": ("cpu_ratio", "{:.2f}"),
               "rows": ("rows", "{:,}"), "efficiency": ("efficiency", "{:.2%}"),
               "peak RSS (MB)": ("peak_mb", "{:,.0f}"), "rise (MB)": ("rise_mb", "{:,.0f}"),
               "load avg": ("load", "{:.1f}")}
    tables, summary = [], []
    for n, case in dict.fromkeys((r["examples"], r["case"]) for r in rows):
        size = {r["packer"]: r for r in rows if (r["examples"], r["case"]) == (n, case)}
        for r in size.values():
            r |= {"name": PACKER_RUNS[r["packer"]], "ratio": size["ours"]["seconds"] / r["seconds"],
                  "cpu_ratio": size["ours"]["cpu_s"] / r["cpu_s"]}
        where = {"disk": "on disk", "memory": "in memory"}[case]
        tables.append(f"{n:,} examples ({size['ours']['tokens']:,} tokens), {CASES[case]}:\n\n"
                      f"{_md_table(list(size.values()), columns)}")
        against = [f"**{r['ratio']:.2f}** ({r['cpu_ratio']:.2f} CPU) against {label}"
                   for key, label in [("trl_whole", "TRL at equal efficiency"), ("trl", "TRL's default")]
                   if (r := size.get(key))]
        rises = " and ".join(f"{size[k]['rise_mb']:,.0f}" for k in ("trl_whole", "trl") if k in size)
        summary.append(f"* {n:,} examples, {where}: {', '.join(against)}; memory rise "
                       f"{size['ours']['rise_mb']:,.0f} MB against {rises} MB")
    tables = "\n\n".join(tables)
    return f"""**Packer speed: the same job** (`{command}`, {datetime.date.today()}; {machine()}).
From labelled examples (a `datasets.Dataset` saved to disk: `input_ids` int32 and `labels` int64 of
`packing.long_tailed_lengths`, median 200, clipped at 2048) to packed rows of 2048 (`input_ids`,
`labels`, `seq_lengths`, what `PackedCollator` reads) as a Dataset (caching off), in two cases: the
dataset on disk, memory-mapped (packed into a temporary Arrow file), and the same dataset read into
memory (no cache files; packed in memory). Each run in a fresh process: wall and CPU seconds, the peak
resident set (VmHWM; a memory-mapped input counts once touched, an in-memory one is resident before
the job) and its rise above the process before the job, and the load average of the shared machine
as the run started. TRL's default bins each 1,000-example `map` batch apart (fewer tokens per row);
with `batch_size=None` it bins the whole dataset, as ours does. Ours: the same bins as `pack_examples`
(BFD, bitset best fit), each 1,000 rows' tokens copied at once from the input's Arrow buffers (here
in 1,000-example chunks: numpy views concatenated), on disk written block by block. Target: ours at
least as fast as TRL, in both cases.

{tables}

Wall time ours / TRL (below 1: ours faster) and peak memory:

{chr(10).join(summary)}

On a shared machine the CPU seconds are the steadier figure: the wall time also counts the time
other work held the cores.
"""


def efficiency_table(lengths: list[int], max_length: int) -> list[dict]:
    """Efficiency of padded batches of `BATCH_SAMPLES` (random, length-grouped) and of rows of
    `max_length` from each packer, longest first, and BFD in a shuffled order (what training uses)."""
    import random

    from ..packing import PACKERS, pack_bfd, packing_stats, padding_stats

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


def _version(dist: str) -> str:
    """`dist version` of an installed distribution, or `no dist` (read from its metadata: never imported)."""
    import importlib.metadata

    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"no {dist}"


def gpu_driver() -> str:
    """The NVIDIA driver's version as `nvidia-smi` reports it, or "driver unknown"."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    return f"driver {out[0]}" if out else "driver unknown"


def machine() -> str:
    """One line naming the machine and the versions that produced a figure (versions from the packages'
    metadata: the GPU image has no trl, and a figure must not be lost to an import)."""
    device = (f"{torch.cuda.get_device_name()}, {gpu_driver()}, CUDA {torch.version.cuda}"
              if torch.cuda.is_available() else "no GPU")
    return (f"{platform.machine()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {device}; "
            f"torch {torch.__version__}, {_version('transformers')}, {_version('trl')}")


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


def bench_packing(n_examples: int, sizes: list[int], command: str) -> str:
    from .data import load_split
    from ..masking import build_labels
    from ..models import load_tokenizer
    from ..packing import long_tailed_lengths

    tok = load_tokenizer("tiny")
    course, _ = build_labels(load_split("train"), tok, "completion_only")
    course_lengths = [len(e["input_ids"]) for e in course]
    eff_cols = {"method": ("method", "{}"), "efficiency": ("efficiency", "{:.1%}"), "rows": ("rows", "{:,}")}
    print("efficiency ...", flush=True)
    tail_lengths = long_tailed_lengths(10_000, 2048)
    long_tail = efficiency_table(tail_lengths, 2048)
    on_course = efficiency_table(course_lengths, 512)
    print("packer speed ...", flush=True)
    speed = packer_speed_section(packer_speed(sizes), command)
    print("training throughput ...", flush=True)
    train = throughput_table(n_examples=n_examples)
    by = {r["method"]: r for r in train}
    ratio = by["packed"]["tokens_per_s"] / by["padded"]["tokens_per_s"]
    ratio_free = by["padding_free"]["tokens_per_s"] / by["padded"]["tokens_per_s"]
    return f"""## Packing (`python -m sft_helpers.course.bench packing`, {datetime.date.today()})

Machine: {machine()}.

**Efficiency at max_length 2048 on 10,000 long-tailed lengths** (log-normal, median 200, mean
{sum(tail_lengths) / len(tail_lengths):.0f}, clipped at 2048; `packing.long_tailed_lengths`). Target: BFD ≥ 99%.

{_md_table(long_tail, eff_cols)}

On the course's own training split ({len(course_lengths):,} conversations, completion-only labels, rows of 512):

{_md_table(on_course, eff_cols)}

<!-- bench:packing-speed -->
{speed.strip()}
<!-- /bench:packing-speed -->

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
                                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
               # ~0.22B parameters, the `gpu` bench's random model (SmolLM2-360M-like widths, 32k vocab)
               "Llama-0.2B": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                                  num_attention_heads=16, num_key_value_heads=8, vocab_size=32000,
                                  tie_word_embeddings=True)}


def _random_model_folder(arch: str, dtype: torch.dtype | None = None) -> str:
    """A folder holding a randomly initialised Llama/Qwen-shaped model named `arch` ("tiny" = the
    course's base config, a `memory.ARCHITECTURES` name, or one of `QLORA_ARCHS`) in `dtype` (by
    default the device's), plus the tiny tokenizer, so `load_model(folder, quantization=...)` can load it."""
    import tempfile

    from transformers import AutoModelForCausalLM, LlamaConfig

    from ..memory import architecture
    from ..models import device_settings, load_tokenizer, model_folder

    if arch == "tiny":
        config = LlamaConfig.from_pretrained(model_folder("tiny"))
    elif arch in QLORA_ARCHS:
        config = LlamaConfig(**QLORA_ARCHS[arch])
    else:
        config = architecture(arch)
    folder = tempfile.mkdtemp(prefix=f"bench-{arch}-")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype or device_settings()["dtype"])
    model.save_pretrained(folder)
    load_tokenizer("tiny").save_pretrained(folder)
    return folder


def qlora_memory(arch: str = "tiny", methods=("full", "lora", "qlora"), seq_len: int = 256, batch: int = 2,
                 steps: int = 3, grad_ckpt: bool | None = None) -> list[dict]:
    """For each method, train a random-initialised `arch` for `steps` AdamW steps on random tokens and
    compare the memory with `memory.estimate_memory`: on a GPU the peak allocated memory (the
    estimate without the CUDA-context overhead), on a CPU each part as `measure_training_memory`
    sees it. Also real tokens per second over the steps after the first. Each method trains as
    `train_sft` does (`training.training_precision`): full fine-tuning on a GPU keeps fp32 master
    weights and AdamW states under bf16/fp16 autocast (16 bytes per parameter, what the estimate
    counts), not pure bf16 (8)."""
    from ..lora import add_lora
    from ..memory import estimate_memory, measure_training_memory
    from ..models import device_settings, load_model
    from ..training import training_precision

    s = device_settings()
    cuda = s["device"].startswith("cuda")
    grad_ckpt = cuda if grad_ckpt is None else grad_ckpt
    folder = _random_model_folder(arch)
    rows = []
    for method in methods:
        model, _ = load_model(folder, quantization="4bit" if method == "qlora" else None, gradient_checkpointing=grad_ckpt)
        if method != "full":
            model = add_lora(model, verbose=False)
        lane = training_precision(model)  # train_sft's policy: what trains fp32, half-precision autocast
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
            with _autocast(model, lane):
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
    head = f"## QLoRA memory (`python -m sft_helpers.course.bench qlora --arch {arch}`, {datetime.date.today()})\n\n"
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


GPU_METHODS = ("full", "lora", "lora_emb", "qlora")  # lora_emb: LoRA + trained embedding and head copies
GPU_MODELS = ("Llama-0.2B", "tiny")  # a random ~0.22B Llama built offline, and the course's tiny base
# A packed forward keeps its samples apart when it is this much closer to the padded forward than a
# deliberately leaky one is (half-precision rounding sits orders of magnitude below a leak).
LEAK_SHARE = 0.1


def _ampere(device: str) -> bool:
    return device.startswith("cuda") and torch.cuda.get_device_capability(torch.device(device))[0] >= 8


def gpu_lanes(device: str) -> list[str]:
    """The precision lanes the `gpu` bench trains on `device`: fp32 and fp16 everywhere (a CPU runs
    fp16 as `train_sft` does on a T4: autocast and a GradScaler), bf16 on CPUs and on CUDA GPUs of
    compute capability 8 or more (Ampere and newer; older cards emulate bf16, `device_settings`
    never picks it there).

    >>> gpu_lanes("cpu")
    ['fp32', 'fp16', 'bf16']
    """
    if device.startswith("cuda") and not _ampere(device):
        return ["fp32", "fp16"]
    return ["fp32", "fp16", "bf16"]


def gpu_attentions(device: str) -> list[str]:
    """sdpa, plus one flash variant on a CUDA GPU of compute capability 8 or more when installed:
    `flash_attention_2` with the `flash_attn` package, else the `kernels` package's
    `kernels-community/flash-attn2` (offline it must already be in the hub cache, else its runs
    record the error).

    >>> gpu_attentions("cpu")
    ['sdpa']
    """
    import importlib.util

    if not _ampere(device):
        return ["sdpa"]
    from ..models import flash_attn_problem

    if flash_attn_problem() is None:  # installed, imports, accepted by transformers
        return ["sdpa", "flash_attention_2"]
    if importlib.util.find_spec("kernels") is not None:
        return ["sdpa", "kernels-community/flash-attn2"]
    return ["sdpa"]


def bench_rows(tokenizer, n_rows: int, row_length: int) -> list[dict]:
    """`n_rows` packed rows of at most `row_length` tokens for the `gpu` bench: the course's training
    conversations with completion-only labels (truncated to `row_length`), packed by BFD in shuffled
    order (`pack_examples`).

    >>> from sft_helpers.models import load_tokenizer
    >>> rows = bench_rows(load_tokenizer("tiny"), 2, 256)
    >>> len(rows), all(len(r["input_ids"]) <= 256 and len(r["seq_lengths"]) > 1 for r in rows)
    (2, True)
    """
    from .data import load_split
    from ..masking import build_labels
    from ..packing import pack_examples

    records, examples, tokens = load_split("train"), [], 0
    for start in range(0, len(records), 200):  # label only as many conversations as the rows need
        chunk, _ = build_labels(records[start:start + 200], tokenizer, "completion_only",
                                max_length=row_length)
        examples += chunk
        tokens += sum(len(e["input_ids"]) for e in chunk)
        if tokens >= 1.2 * n_rows * row_length:
            break
    rows, _ = pack_examples(examples, row_length, shuffle_seed=0)
    if len(rows) < n_rows:
        raise ValueError(f"the training split fills {len(rows)} rows of {row_length} tokens, not {n_rows}")
    return rows[:n_rows]


def _samples_of(rows: list[dict]) -> list[tuple[int, int, list, list]]:
    """`(row, offset, input_ids, labels)` of every sample in packed rows, in order."""
    out = []
    for r, row in enumerate(rows):
        offset = 0
        for n in row["seq_lengths"]:
            out.append((r, offset, row["input_ids"][offset:offset + n], row["labels"][offset:offset + n]))
            offset += n
    return out


def _autocast(model, lane: str):
    """The lane's autocast on the model's device (none for fp32): how `train_sft` computes."""
    from ..precision import PRECISIONS

    return torch.autocast(model.device.type, dtype=PRECISIONS[lane], enabled=lane != "fp32")


@torch.no_grad()
def packed_vs_padded(model, tokenizer, rows: list[dict], lane: str = "fp32") -> dict:
    """The samples of packed `rows` run as one padded batch (`PaddedCollator`) and as the packed rows
    (`PackedCollator`: restarting `position_ids` and flash-attn's `cu_seq_lens`), in eval mode under
    the lane's autocast, compared sample by sample: `logit_diff` (largest absolute logit difference),
    `loss_diff` (packed minus padded token-weighted loss), and `leak_diff`, the logit difference of a
    deliberately leaky forward of the same rows (an all-ones `attention_mask`: plain causal attention
    along each row), the size a leak shows at. Also returns the padded `batch` and its `logits` at the
    real (unpadded) tokens, `[tokens, vocab]`.

    >>> from sft_helpers.models import load_model
    >>> model, tok = load_model("tiny")
    >>> r = packed_vs_padded(model, tok, bench_rows(tok, 2, 64))
    >>> r["logit_diff"] < 1e-3 < r["leak_diff"]
    True
    """
    import torch.nn.functional as F

    from ..attention import check_packed_batch
    from ..collators import PackedCollator, PaddedCollator
    from ..masking import IGNORE

    model.eval()
    device, samples = model.device, _samples_of(rows)
    padded = PaddedCollator(tokenizer.pad_token_id)([{"input_ids": i, "labels": y} for _, _, i, y in samples])
    packed = PackedCollator(tokenizer.pad_token_id)(rows)
    check_packed_batch(packed, model.config._attn_implementation)
    packed = {k: v.to(device) if torch.is_tensor(v) else v for k, v in packed.items() if k != "labels"}
    mask = padded["attention_mask"].to(device)
    with _autocast(model, lane):
        a = model(input_ids=padded["input_ids"].to(device), attention_mask=mask, use_cache=False).logits
        a = a.float()
        b = model(**packed).logits.float()  # the batch says use_cache=False
        c = model(**leaky_batch(packed, model.config._attn_implementation), use_cache=False).logits.float()
    diff = leak = 0.0
    sums, count = [0.0, 0.0], 0
    for i, (r, offset, sample, labels) in enumerate(samples):
        n = len(sample)
        mine, theirs, leaky = a[i, :n], b[r, offset:offset + n], c[r, offset:offset + n]
        diff = max(diff, (theirs - mine).abs().max().item())
        leak = max(leak, (leaky - mine).abs().max().item())
        target = torch.tensor(labels[1:], device=device)
        for j, logits in enumerate((mine, theirs)):
            sums[j] += F.cross_entropy(logits[:-1], target, ignore_index=IGNORE, reduction="sum").item()
        count += int((target != IGNORE).sum())
    return {"logit_diff": diff, "loss_diff": (sums[1] - sums[0]) / max(count, 1), "leak_diff": leak,
            "batch": padded, "logits": a[mask.bool()]}


def leaky_batch(packed: dict, attn_implementation: str) -> dict:
    """The packed rows as a forward that lets their samples attend to each other: an all-ones
    `attention_mask` with the rows' restarting positions (sdpa / eager read positions only without a
    mask); under flash attention, which drops an all-ones mask and splits one row by its restarts,
    positions 0..T-1 along each row as well. Each row is then one causal sequence (`attention_blocks`).

    >>> pos = torch.tensor([[0, 1, 0, 1]])
    >>> leaky_batch({"input_ids": pos, "position_ids": pos}, "flash_attention_2")["position_ids"].tolist()
    [[0, 1, 2, 3]]
    """
    from ..attention import is_flash

    ids, pos = packed["input_ids"], packed["position_ids"]
    if is_flash(attn_implementation):
        pos = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    return {"input_ids": ids, "position_ids": pos, "attention_mask": torch.ones_like(ids)}


def _dtype_names(tensors) -> list[str]:
    from ..precision import PRECISIONS, precision_name

    return sorted({precision_name(t.dtype) if t.dtype in PRECISIONS.values() else str(t.dtype)[6:]
                   for t in tensors})


@torch.no_grad()
def merged_forward(model, model_id: str, method: str, lane: str, batch: dict, logits: torch.Tensor) -> dict:
    """Save the adapters of the trained peft `model`, merge them with `lora.merge_adapter` in the lane's
    dtype (dequantising the 4-bit base for QLoRA) and run the merged model on the padded `batch`:
    `merged_dtypes` (of its parameters), `merged_finite` (its logits at the real tokens) and
    `merged_diff`, their largest difference from `logits`, the adapter model's at the same tokens
    (from `packed_vs_padded`)."""
    import tempfile

    from ..lora import merge_adapter, save_adapter

    with tempfile.TemporaryDirectory(prefix="bench-adapter-") as folder:
        save_adapter(model, folder)
        merged, _ = merge_adapter(model_id, folder, dequantize=method == "qlora", precision=lane)
    ids, mask = batch["input_ids"].to(merged.device), batch["attention_mask"].to(merged.device)
    out = merged(input_ids=ids, attention_mask=mask).logits[mask.bool()].float()
    return {"merged_dtypes": _dtype_names(merged.parameters()), "merged_finite": bool(out.isfinite().all()),
            "merged_diff": (out - logits.to(out.device)).abs().max().item()}


class _TrainingState(TrainerCallback):
    """Keeps, after every optimizer step, `precision_report` of the model and its (accelerate-wrapped)
    optimizer and scaler, the scaler's scale, and how many steps the scaler skipped (its scale went
    down: an inf or nan gradient; accelerate's `step_was_skipped` misses it with fused AdamW, which
    always runs and skips inside its kernel); and the time each step ends (`step_ends`, after a CUDA
    synchronisation: the GPU's work done, not just queued)."""

    def __init__(self):
        self.report, self.scale, self.skipped, self.step_ends = None, None, 0, []

    def on_step_end(self, args, state, control, model=None, **kw):
        if torch.cuda.is_available() and model is not None and model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        self.step_ends.append(time.perf_counter())

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kw):
        scaler = getattr(optimizer, "scaler", None)
        self.scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else None

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
        from ..precision import precision_report

        scaler = getattr(optimizer, "scaler", None)
        self.report = precision_report(model, optimizer, scaler)
        if self.report["scaler"]:
            before, self.scale = self.scale, scaler.get_scale()
            self.skipped += before is not None and self.scale < before


def lane_run(model_id: str, lane: str, attention: str, method: str, rows: list[dict], steps: int = 5,
             rows_per_step: int = 4, device: str | None = None, merge: bool = True) -> dict:
    """Train `model_id` on one lane for `steps` steps of `rows_per_step` packed `rows` (`train_sft`,
    LR 1e-4, no warmup) and record what the lane must hold: `losses` and `finite`; `trainable`,
    `frozen`, `grads` and `optimizer_states` dtypes (`precision_report`, elements per dtype, after
    the last optimizer step); `scaler` (a loss scaler active), `scale`, `skipped_steps`; `updated`
    (share of the small trained tensors that changed); `label_tokens_per_s`, trained (label) tokens
    per second over steps 2..N (the first holds warm-up; loading, evaluation and the merge are
    outside); on CUDA `peak_gib` (peak allocated during
    loading and training, `torch.cuda.max_memory_allocated`) next to `estimate_gib`
    (`memory.estimate_memory` for the same rows, no checkpointing, no CUDA overhead); then
    `packed_vs_padded` in eval mode, and for adapters, with `merge`, `merged_forward`.
    `method`: "full", "lora", "lora_emb" (LoRA + trained embedding and head copies) or "qlora"."""
    from ..collators import PackedCollator
    from ..lora import add_lora
    from ..memory import estimate_memory
    from ..models import load_model
    from ..training import train_sft

    if method not in GPU_METHODS:
        raise ValueError(f"method must be one of {GPU_METHODS}, not {method!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    model, tok = load_model(model_id, device=device, quantization="4bit" if method == "qlora" else None,
                            precision=lane, attn_implementation=attention)
    config = model.config
    if method != "full":
        model = add_lora(model, train_embeddings=method == "lora_emb", verbose=False)
    before = {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()
              if p.requires_grad and p.numel() <= 2**16}  # norms, LoRA matrices, the tiny model's layers
    state, row_length = _TrainingState(), max(len(r["input_ids"]) for r in rows)
    counted = _CountingCollator(PackedCollator(tok.pad_token_id, row_length))
    history = train_sft(model, tok, rows[:steps * rows_per_step], lr=1e-4, max_steps=steps,
                        batch_size=rows_per_step, warmup=0, logging_steps=1, precision=lane,
                        collator=counted, callbacks=[state])
    out = {"losses": [h["loss"] for h in history if "loss" in h]}
    ends = state.step_ends
    if len(ends) >= 2 and len(counted.label_tokens) >= len(ends):  # steps 2..N: no warm-up, no loading
        out["label_tokens_per_s"] = sum(counted.label_tokens[1:len(ends)]) / (ends[-1] - ends[0])
    if cuda:
        torch.cuda.synchronize(device)
        out["peak_gib"] = (torch.cuda.max_memory_allocated(device) - start) / 2**30
    out["finite"] = bool(out["losses"]) and all(map(math.isfinite, out["losses"]))
    out.update({k: state.report[k] for k in ("trainable", "frozen", "grads", "optimizer_states", "scaler")})
    out.update(scale=state.scale, skipped_steps=state.skipped)
    changed = [not torch.equal(p.detach().float().cpu(), before[n]) for n, p in model.named_parameters()
               if n in before]
    out["updated"] = sum(changed) / max(len(changed), 1)
    out["estimate_gib"] = estimate_memory(
        config, method if method in ("full", "qlora") else "lora", seq_len=row_length, batch=rows_per_step,
        grad_ckpt=False, dtype_bytes=4 if lane == "fp32" else 2, overhead_gb=0,
        train_embeddings=method == "lora_emb")["total"]
    compared = packed_vs_padded(model, tok, rows[:rows_per_step], lane)
    out.update({f"packed_{k}": compared[k] for k in ("logit_diff", "loss_diff", "leak_diff")})
    if merge and method != "full":
        out.update(merged_forward(model, model_id, method, lane, compared["batch"], compared["logits"]))
    return out


def lane_problems(row: dict) -> list[str]:
    """What a `lane_run` row breaks of the precision policy and packing (empty: every check holds):
    losses finite, trainable weights and optimizer states fp32, a scaler on the fp16 lane only, some
    trained weight updated, packed rows within `LEAK_SHARE` of a leak's difference from the padded
    batch, a merged model finite and in one dtype. A failed run's problem is its error line.

    >>> lane_problems({"lane": "fp16", "finite": True, "trainable": {"fp32": 8}, "scaler": True,
    ...                "optimizer_states": {"fp16": 16}, "updated": 1.0, "packed_logit_diff": 0.5,
    ...                "packed_leak_diff": 2.0})
    ['optimizer states fp16', 'packed rows differ from the padded batch (0.5 vs leak 2)']
    """
    if row.get("error"):
        return [row["error"]]
    problems = [] if row["finite"] else ["loss not finite"]
    for key, what in (("trainable", "trainable weights"), ("optimizer_states", "optimizer states")):
        if set(row[key]) - {"fp32"}:
            problems.append(f"{what} {', '.join(sorted(set(row[key]) - {'fp32'}))}")
    if row["scaler"] != (row["lane"] == "fp16"):
        problems.append("a loss scaler outside the fp16 lane" if row["scaler"] else "no loss scaler on fp16")
    if not row["updated"]:
        problems.append("no trained weight changed")
    if not row["packed_logit_diff"] < LEAK_SHARE * row["packed_leak_diff"]:
        problems.append(f"packed rows differ from the padded batch ({row['packed_logit_diff']:.3g} vs leak "
                        f"{row['packed_leak_diff']:.3g})")
    if "merged_dtypes" in row and (not row["merged_finite"] or len(row["merged_dtypes"]) != 1):
        problems.append(f"merged model: finite {row['merged_finite']}, dtypes {row['merged_dtypes']}")
    return problems


def _model_source(name: str) -> tuple[str, str | None]:
    """What `load_model` loads for a bench model name, and the folder to remove afterwards: a random
    model built offline in fp32 for a `QLORA_ARCHS` / `memory.ARCHITECTURES` name, else the name."""
    from ..memory import ARCHITECTURES

    if name in QLORA_ARCHS or name in ARCHITECTURES:
        folder = _random_model_folder(name, torch.float32)
        return folder, folder
    return name, None


def gpu_bench(models=GPU_MODELS, device: str | None = None, lanes=None, attentions=None, methods=GPU_METHODS,
              steps: int = 5, rows_per_step: int = 4, row_length: int = 1024, budget_s: float = 420.0,
              log=print, on_row=None) -> list[dict]:
    """`lane_run` for every model × lane × attention × method (flash variants skip fp32), each in its
    own try/except: a failure is a row with its `error` line, never the end of the bench; runs due
    after `budget_s` seconds are recorded as skipped. Every row also holds `device` (the GPU's name),
    `seconds` and `problems` (`lane_problems`); `log` gets one line per run, and `on_row` (when given)
    the rows so far after each run (to write them: a crash later keeps what ran). Lanes and attentions
    default to what the device runs (`gpu_lanes`, `gpu_attentions`); merged forwards run with the
    first attention only. Models: "tiny", "smollm2-135m", a `QLORA_ARCHS` or `memory.ARCHITECTURES`
    name (random, built offline), a hub id or a folder."""
    import gc
    import shutil

    from ..attention import is_flash
    from ..models import load_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    name = torch.cuda.get_device_name(torch.device(device)) if cuda else f"CPU ({platform.machine()}, no GPU)"
    lanes, attentions = list(lanes or gpu_lanes(device)), list(attentions or gpu_attentions(device))
    plan = [(m, lane, attn, method) for m in models for lane in lanes for attn in attentions
            if not (lane == "fp32" and is_flash(attn)) for method in methods]
    sources, results, t0 = {}, [], time.perf_counter()
    for i, (m, lane, attn, method) in enumerate(plan, 1):
        row = {"device": name, "model": m, "lane": lane, "attention": attn, "method": method}
        t = time.perf_counter()
        try:
            if t - t0 > budget_s:
                raise TimeoutError(f"skipped: the {budget_s:.0f} s budget was spent")
            if m not in sources:  # build (random models) and pack once per model; a failure fails its runs
                try:
                    source, folder = _model_source(m)
                    tok = load_tokenizer(source, verbose=False)
                    sources[m] = (source, folder, bench_rows(tok, steps * rows_per_step, row_length))
                except Exception as e:
                    sources[m] = e
            if isinstance(sources[m], Exception):
                raise sources[m]
            source, _, rows = sources[m]
            row.update(lane_run(source, lane, attn, method, rows, steps, rows_per_step, device,
                                merge=attn == attentions[0]))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
        finally:
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        row["seconds"] = time.perf_counter() - t
        row["problems"] = lane_problems(row)
        results.append(row)
        if on_row is not None:
            on_row(results)
        losses = row.get("losses") or [math.nan]
        log(f"[{i}/{len(plan)}] {m} {lane} {attn} {method}: {'; '.join(row['problems']) or 'ok'} "
            f"(loss {losses[0]:.3f} → {losses[-1]:.3f}, {row['seconds']:.1f} s)")
    for entry in sources.values():
        if not isinstance(entry, Exception) and entry[1]:
            shutil.rmtree(entry[1], ignore_errors=True)
    return results


def _versions() -> str:
    return ", ".join(_version(d) for d in ("peft", "accelerate", "bitsandbytes", "flash-attn", "kernels"))


def _cell(row: dict, key: str, fmt: str = "{:.3g}") -> str:
    value = row.get(key)
    if value is None:
        return ""
    if isinstance(value, dict):  # dtypes: elements per dtype
        return ", ".join("uint8 (nf4)" if k == "uint8" else k for k in sorted(value)) or "none"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return fmt.format(value)


GPU_COLUMNS = {"model": "model", "lane": "lane", "attention": "attention", "method": "method",
               "loss first → last": "loss", "trained / frozen": "dtypes", "AdamW states": "states",
               "loss scaler": "scaler", "peak / estimate GiB (ratio)": "memory",
               "label tok/s (steps 2..N)": "speed", "packed vs padded Δlogit": "diff", "Δloss": "loss_diff", "leaky Δlogit": "leak",
               "merged model": "merged", "s": "s", "checks": "checks"}


def _gpu_cells(r: dict) -> dict:
    """One `gpu_bench` row as the table's cells (`GPU_COLUMNS`)."""
    losses, est, peak = r.get("losses") or [], r.get("estimate_gib"), r.get("peak_gib")
    memory = "" if est is None else f"unmeasured / {est:.3f}"
    if peak and est:
        memory = f"{peak:.2f} / {est:.2f} ({peak / est:.2f})"
    scaler = "" if "scaler" not in r else f"yes, {r['skipped_steps']} skipped" if r["scaler"] else "no"
    merged = ""
    if "merged_dtypes" in r:
        merged = (f"{_cell(r, 'merged_dtypes')}, {'finite' if r['merged_finite'] else 'NOT finite'}, "
                  f"Δ {r['merged_diff']:.1e}")
    return {**{k: r[k] for k in ("model", "lane", "attention", "method")},
            "loss": f"{losses[0]:.3f} → {losses[-1]:.3f}" if losses else "",
            "dtypes": f"{_cell(r, 'trainable')} / {_cell(r, 'frozen')}" if "trainable" in r else "",
            "states": _cell(r, "optimizer_states"),
            "scaler": scaler, "memory": memory, "speed": _cell(r, "label_tokens_per_s", "{:,.0f}"),
            "diff": _cell(r, "packed_logit_diff", "{:.1e}"),
            "loss_diff": _cell(r, "packed_loss_diff", "{:+.1e}"),
            "leak": _cell(r, "packed_leak_diff", "{:.2f}"), "merged": merged, "s": f"{r['seconds']:.0f}",
            "checks": "; ".join(r["problems"]).replace("|", "/") or "ok"}


def gpu_section(rows: list[dict], command: str, on_gpu: bool, steps: int, rows_per_step: int,
                row_length: int) -> str:
    """The `docs/benchmarks.md` section for `gpu_bench` rows: machine, versions, date, what is measured,
    one table row per run and a verdict. Run on a CPU (`on_gpu=False`) it says the GPU figures are
    unmeasured."""
    table = _md_table([_gpu_cells(r) for r in rows], {title: (k, "{}") for title, k in GPU_COLUMNS.items()})
    measured = [r for r in rows if "packed_logit_diff" in r]
    worst = ", ".join(f"{lane} {max(r['packed_logit_diff'] for r in measured if r['lane'] == lane):.1e}"
                      for lane in dict.fromkeys(r["lane"] for r in measured))
    leak = min((r["packed_leak_diff"] for r in measured), default=math.nan)
    ok, errors = sum(not r["problems"] for r in rows), sum(bool(r.get("error")) for r in rows)
    head = f"## Every lane on a GPU (`{command}`, {datetime.date.today()})\n\n"
    if not on_gpu:
        head = (f"## Every lane, CPU smoke run (`{command}`, {datetime.date.today()})\n\n"
                "**GPU figures: unmeasured.** No GPU ran this section: the fp16 and bf16 lanes\n"
                "are emulated on the CPU (autocast, and on fp16 a `GradScaler`, as `train_sft` runs\n"
                "them there), flash-attn is not run, and peak GPU memory is not measured (the estimate\n"
                "stands alone). On a GPU, `python -m sft_helpers.course.bench gpu` writes the `gpu` section.\n\n")
    return head + f"""Machine: {machine()}; {_versions()}. Device: {rows[0]['device'] if rows else '-'}.

Each run loads the model on one lane (`load_model(precision=...)`: the frozen base in the lane's dtype,
QLoRA's linear layers in nf4, its norms, embeddings and head fp32), trains {steps} steps of {rows_per_step} packed rows of up to {row_length} tokens
(`PackedCollator`, course conversations, completion-only labels, `train_sft`, LR 1e-4) and records:
the first and last step's loss; trained (label) tokens per second over steps 2..N (synchronised on a
GPU; loading, warm-up, evaluation and merging left out); the dtypes of the trained and frozen weights and of AdamW's states
after the last step (`precision.precision_report`; the policy: whatever trains is fp32); whether a
loss scaler ran (fp16 only) and how many steps it skipped; on a GPU the peak allocated memory from
loading through training (`torch.cuda.max_memory_allocated`) next to `memory.estimate_memory` for
the same rows (no checkpointing, no CUDA overhead). Then, in eval mode under the lane's autocast, the
first step's samples as one padded batch and as the packed rows: the largest logit difference and
the loss difference (packed − padded), next to the logit difference of a deliberately leaky forward
of the same rows (`leaky_batch`: an all-ones attention mask, and under flash attention positions
running on along the row: the size of a leak); and for adapters (first attention
only) the model merged by `lora.merge_adapter` in the lane's dtype: its dtypes, finite logits and
largest difference from the adapter model. "checks" lists what breaks the policy
(`bench.lane_problems`), or the error line of a run that failed.

{table}

**{ok} of {len(rows)} runs pass every check; {errors} failed with an error.** Largest packed-vs-padded
logit difference by lane: {worst or '-'} (a leak shows as ≥ {leak:.1f}).
"""


def dedup_bench(n: int = 100_000, seed: int = 0, threshold: float = 0.7, num_perm: int = 128) -> list[dict]:
    """Exact and MinHash de-duplication of `n` synthetic conversations (5% planted exact copies, 5% near
    copies): for each method the wall and CPU seconds, the process's peak resident memory (VmHWM, reset
    just before) and its rise above the resident memory at the start, what was removed, and precision
    (found pairs that are planted duplicates) and recall of the planted exact and near pairs."""
    import gc

    from ..dedup import exact_duplicates, near_duplicates, precision_recall, synthetic_conversations

    t0 = time.perf_counter()
    records, planted = synthetic_conversations(n, seed)
    rows = [{"method": f"generate {n:,} conversations (not timed below)", "seconds": time.perf_counter() - t0}]
    runs = {"exact (normalised hash)": lambda: exact_duplicates(records),
            f"MinHash + LSH (threshold {threshold:g}, {num_perm} perm, 3-word shingles)":
                lambda: near_duplicates(records, threshold=threshold, num_perm=num_perm)}
    for name, run in runs.items():
        gc.collect()
        start = _status_mb("VmRSS")
        _reset_peak_rss()
        t0, c0 = time.perf_counter(), time.process_time()
        result = run()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        peak = _status_mb("VmHWM")
        found = [p[:2] for p in result.pairs]
        rows.append({"method": name, "seconds": seconds, "cpu_s": cpu, "peak_mb": peak, "rise_mb": peak - start,
                     "removed": len(result.removed), "clusters": len(result.clusters),
                     "precision": precision_recall(found, planted["exact"] + planted["near"])["precision"],
                     "recall_exact": precision_recall(found, planted["exact"])["recall"],
                     "recall_near": precision_recall(found, planted["near"])["recall"]})
        print(rows[-1], flush=True)
        del result
    return rows


def bench_dedup(n: int, seed: int, threshold: float, num_perm: int) -> str:
    load = os.getloadavg()[0]
    rows = dedup_bench(n, seed, threshold, num_perm)
    columns = {"method": ("method", "{}"), "wall s": ("seconds", "{:.1f}"), "CPU s": ("cpu_s", "{:.1f}"),
               "peak RSS (MB)": ("peak_mb", "{:,.0f}"), "rise (MB)": ("rise_mb", "{:,.0f}"),
               "removed": ("removed", "{:,}"), "clusters": ("clusters", "{:,}"), "precision": ("precision", "{:.1%}"),
               "recall, exact copies": ("recall_exact", "{:.1%}"), "recall, near copies": ("recall_near", "{:.1%}")}
    total = sum(r.get("cpu_s", 0) for r in rows)
    command = f"python -m sft_helpers.course.bench dedup --n {n} --threshold {threshold:g}"
    return f"""## De-duplication (`{command}`, {datetime.date.today()})

Machine: {machine()}; datasketch {importlib.metadata.version("datasketch")}; load average {load:.1f} when it started.

{n:,} synthetic conversations (`dedup.synthetic_conversations`, seed {seed}: a user question of 5-25 words, a reply of
30-120 words, a system prompt in a third; Zipf-like words), of which 5% are planted exact copies (case, spacing and
punctuation changed) and 5% near copies (1-3 words of the reply replaced). Exact and MinHash run one after the
other in one process; MinHash also finds the exact copies (Jaccard 1). CPU seconds are the process's own
CPU time: on this shared machine wall seconds also count the time other jobs held the cores. Peak RSS is the
process's peak resident memory during the method (the records and imported libraries included); "rise" is that
peak above the resident memory when the method started. Precision: found pairs that are planted duplicates
(a copy's copies count as its duplicates); recall: planted pairs that end in one found cluster.

{_md_table(rows, columns)}

Exact + MinHash together: **{total:.1f} CPU seconds** for {n:,} conversations. Near copies that MinHash
misses mostly share fewer shingles than the threshold asks (3 replaced words remove up to 9 of a short
conversation's 3-word shingles); `dedup.threshold_curve` shows what a lower threshold gains and costs.
"""


def write_course_jsonl(path: str, n: int) -> None:
    """`n` conversations for the labelling bench: the course's training split repeated, each copy's
    ids suffixed with its pass number (`<id>~3`), written as JSONL."""
    import json

    from .data import load_split

    base = load_split("train")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            r = base[i % len(base)]
            f.write(json.dumps({**r, "id": f"{r['id']}~{i // len(base)}"}) + "\n")


def _timed(name: str, run) -> tuple[object, dict]:
    """`(result, row)`: `run()` timed: wall and CPU seconds (this process and its finished workers),
    this process's peak resident memory (VmHWM, reset before) and the largest worker's."""
    _reset_peak_rss()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, p0 = time.perf_counter(), time.process_time()
    result = run()
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    worker_peak = {"worker_peak_mb": c1.ru_maxrss / 1024} if workers else {}
    return result, {"step": name, "seconds": time.perf_counter() - t0,
                    "cpu_s": time.process_time() - p0 + workers, "peak_mb": _status_mb("VmHWM"),
                    **worker_peak}


def labelling_run(n: int, list_n: int, num_proc: int, mode: str = "completion_only", max_length: int = 512,
                  folder: str = ".") -> list[dict]:
    """The labelling bench, in this process (whose datasets cache should be empty): `n` course
    conversations (`write_course_jsonl`) read by `train.read_dataset` (json loader, checked),
    labelled by `label_dataset` with `num_proc` workers, labelled again (the cache), packed by
    `pack_dataset_columnar` (BFD, shuffled, rows of `max_length`); then the list path on `list_n`:
    `read_records`, `build_labels`, `pack_examples`."""
    from datasets.utils.logging import disable_progress_bar

    from ..labelling import label_dataset
    from ..masking import build_labels
    from ..models import load_tokenizer
    from ..packing import pack_dataset_columnar, pack_examples
    from ..recipe import read_dataset, read_records

    disable_progress_bar()
    tok = load_tokenizer("tiny", verbose=False)
    rows, big, small = [], os.path.join(folder, "big.jsonl"), os.path.join(folder, "small.jsonl")
    write_course_jsonl(big, n)
    write_course_jsonl(small, list_n)
    label = {"mode": mode, "max_length": max_length, "cache_dir": os.path.join(folder, "labels")}
    data, row = _timed(f"read {n:,} (train.read_dataset)", lambda: read_dataset(big, num_proc)[0])
    labelled, row2 = _timed(f"label_dataset, num_proc={num_proc}", lambda: label_dataset(data, tok, **label,
                                                                                       num_proc=num_proc))
    _, row3 = _timed("label_dataset again (cached)",
                     lambda: label_dataset(data, tok, **label, num_proc=num_proc))
    (packed, stats), row4 = _timed(f"pack_dataset_columnar (rows of {max_length})",
                                   lambda: pack_dataset_columnar(labelled[0], max_length, shuffle_seed=0))
    rows += [{"path": "columnar", "examples": n, **r} for r in (row, row2, row3, row4)]
    records, row = _timed(f"read {list_n:,} (read_records)", lambda: read_records(small)[0])
    examples, row2 = _timed("build_labels",
                            lambda: build_labels(records, tok, mode, max_length, on_error="skip")[0])
    _, row3 = _timed(f"pack_examples (rows of {max_length})",
                     lambda: pack_examples(examples, max_length, shuffle_seed=0))
    rows += [{"path": "lists", "examples": list_n, **r} for r in (row, row2, row3)]
    rows.append({"path": "columnar", "examples": n, "step": "result", "kept": labelled[1].kept,
                 "packed_rows": stats["rows"], "tokens": stats["tokens"], "efficiency": stats["efficiency"]})
    return rows


def bench_labelling(n: int, list_n: int, num_proc: int, command: str) -> str:
    """Run `labelling_run` in a fresh process with an empty datasets cache; the section's text."""
    import json
    import subprocess
    import tempfile

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-labelling-") as tmp:
        args = json.dumps({"n": n, "list_n": list_n, "num_proc": num_proc, "folder": tmp})
        env = {**os.environ, "HF_DATASETS_CACHE": os.path.join(tmp, "cache")}
        done = subprocess.run([sys.executable, "-m", "sft_helpers.course.bench", "labelling-one", args], text=True,
                              capture_output=True, env=env)
    if done.returncode:
        raise RuntimeError(f"labelling run failed:\n{done.stderr[-3000:]}")
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    result = rows.pop()
    for r in rows:
        r["per_1k"] = r["cpu_s"] / r["examples"] * 1000
    label = {r["path"]: r for r in rows if r["step"].startswith(("label_dataset,", "build_labels"))}
    columns = {"path": ("path", "{}"), "examples": ("examples", "{:,}"), "step": ("step", "{}"),
               "wall s": ("seconds", "{:.1f}"), "CPU s (with workers)": ("cpu_s", "{:.1f}"),
               "CPU s per 1k": ("per_1k", "{:.2f}"), "peak RSS (MB)": ("peak_mb", "{:,.0f}"),
               "worker peak RSS (MB)": ("worker_peak_mb", "{:,.0f}")}
    return f"""## Labelling at scale (`{command}`, {datetime.date.today()})

Machine: {machine()}; load average {load:.1f} when it started (a shared machine: CPU seconds are the steadier
figure). Data: the course's training split repeated with varied ids (`bench.write_course_jsonl`), tiny
tokenizer, completion-only labels, max_length 512. Columnar: `train.read_dataset` (above 64 MB
datasets' json loader, every record checked), `labelling.label_dataset` ({num_proc} processes, written
to an Arrow file and memory-mapped), the same call again (it reopens the cached file),
`pack_dataset_columnar`. Lists (the
previous `sft-train` path, at a smaller size): `read_records`, `build_labels`, `pack_examples`. Peak RSS is
the main process's peak during the step (VmHWM, reset before it); worker peak the largest worker's.

{_md_table(rows, columns)}

Result: {result["kept"]:,} labelled examples, {result["tokens"]:,} tokens in {result["packed_rows"]:,} packed
rows ({result["efficiency"]:.2%} full). Labelling CPU per 1,000 conversations: columnar
{label["columnar"]["per_1k"]:.2f} s, lists {label["lists"]["per_1k"]:.2f} s (the same per-record work,
`masking.label_record`: the chat template and the tokenizer dominate).
"""


def _csv(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def bench_gpu(args) -> list[dict]:
    """The `gpu` command: `gpu_bench` with the command line's settings; writes the `gpu` section of
    `args.out` (`gpu-cpu` when run on a CPU, whose text says the GPU figures are unmeasured) and
    the rows as JSON next to it (`benchmarks-gpu.json` / `benchmarks-gpu-cpu.json`)."""
    import json

    from transformers.utils import logging as hf_logging

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    steps = args.steps or (3 if args.smoke else 5)
    rows_per_step = args.rows or (2 if args.smoke else 4)
    row_length = args.row_length or (64 if args.smoke else 1024)
    models = args.model or (["tiny"] if args.smoke or not cuda else list(GPU_MODELS))
    os.environ.setdefault("TQDM_DISABLE", "1")  # one progress line per run instead of bars
    hf_logging.disable_progress_bar()
    section = "gpu" if cuda else "gpu-cpu"
    saved = args.out.with_name(f"benchmarks-{section}.json")
    saved.parent.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict]) -> None:  # after every run: a crash keeps what ran
        saved.write_text(json.dumps(rows, indent=1) + "\n")

    rows = gpu_bench(models, device, _csv(args.lanes), _csv(args.attn), _csv(args.methods), steps,
                     rows_per_step, row_length, args.budget_s, on_row=save)
    shown = [a for i, a in enumerate(args.argv)  # the command as run, without --out
             if "--out" not in (a.split("=")[0], args.argv[i - 1] if i else "")]
    body = gpu_section(rows, "python -m sft_helpers.course.bench " + " ".join(shown), cuda, steps, rows_per_step,
                       row_length)
    write_section(section, body, args.out)
    print(body)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sft_helpers.course.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("packing", help="packing efficiency, packer speed and training throughput")
    p.add_argument("--examples", type=int, default=2520, help="training conversations per throughput run")
    p.add_argument("--sizes", default="100000,1000000", help="examples per packer-speed run, comma-separated")
    p.add_argument("--speed-only", action="store_true", help="only the packer speed (its part of the section)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    q = sub.add_parser("qlora", help="training memory of full / LoRA / QLoRA vs the estimator")
    q.add_argument("--arch", default="tiny", help="tiny, a memory.ARCHITECTURES name, or Llama-1B")
    q.add_argument("--seq-len", type=int, default=256)
    q.add_argument("--batch", type=int, default=2)
    q.add_argument("--steps", type=int, default=3)
    q.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    g = sub.add_parser("gpu", help="train every lane a few steps: fp16/bf16, sdpa/flash, full/LoRA/QLoRA")
    g.add_argument("--model", action="append", help="tiny, smollm2-135m, Llama-0.2B or a memory.ARCHITECTURES"
                   " name (random, built offline), a hub id or a folder; repeat for several (default: "
                   f"{' and '.join(GPU_MODELS)} on a GPU, tiny on a CPU)")
    g.add_argument("--steps", type=int, help="training steps per run (default 5; smoke 3: fp16's loss "
                   "scaler may skip the first ones)")
    g.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when available)")
    g.add_argument("--smoke", action="store_true", help="tiny model, 3 steps of 2 rows of 64 tokens")
    g.add_argument("--lanes", help="comma-separated, e.g. fp16,bf16 (default: what the device runs)")
    g.add_argument("--attn", help="comma-separated attentions (default: sdpa, and flash-attn if installed)")
    g.add_argument("--methods", default=",".join(GPU_METHODS), help="comma-separated subset of %(default)s")
    g.add_argument("--rows", type=int, help="packed rows per step (default 4; smoke 2)")
    g.add_argument("--row-length", type=int, help="tokens per packed row (default 1024; smoke 64)")
    g.add_argument("--budget-s", type=float, default=420.0, help="runs due after this many seconds: skipped")
    g.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    d = sub.add_parser("dedup", help="exact and MinHash de-duplication of 100k synthetic conversations")
    d.add_argument("--n", type=int, default=100_000, help="synthetic conversations")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threshold", type=float, default=0.7, help="MinHash Jaccard threshold")
    d.add_argument("--num-perm", type=int, default=128)
    d.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    lab = sub.add_parser("labelling", help="label_dataset (columnar, cached) vs build_labels, course data")
    lab.add_argument("--n", type=int, default=100_000, help="conversations for the columnar path")
    lab.add_argument("--list-n", type=int, default=20_000, help="conversations for the list path")
    lab.add_argument("--num-proc", type=int, default=2)
    lab.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    lone = sub.add_parser("labelling-one", help="(internal) one labelling_run, JSON in and out")
    lone.add_argument("kwargs")
    pone = sub.add_parser("packer-one", help="(internal) one packer_run, JSON in and out")
    pone.add_argument("kwargs")
    one = sub.add_parser("throughput-one", help="(internal) one training_throughput run, JSON in and out")
    one.add_argument("kwargs")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command, for the doc
    if args.command == "throughput-one":
        import json

        torch.set_num_threads(torch.get_num_threads())
        print(json.dumps(training_throughput(**json.loads(args.kwargs))))
        return
    if args.command == "packer-one":
        import json

        print(json.dumps(packer_run(**json.loads(args.kwargs))))
        return
    if args.command == "labelling-one":
        import json

        print(json.dumps(labelling_run(**json.loads(args.kwargs))))
        return
    if args.command == "labelling":
        body = bench_labelling(args.n, args.list_n, args.num_proc,
                               "python -m sft_helpers.course.bench " + " ".join(args.argv))
        write_section("labelling", body, args.out)
        print(body)
        return
    if args.command == "gpu":
        bench_gpu(args)
        return
    if args.command == "dedup":
        body = bench_dedup(args.n, args.seed, args.threshold, args.num_perm)
        write_section("dedup", body, args.out)
        print(body)
        return
    if args.command == "qlora":
        body = bench_qlora(args.arch, args.seq_len, args.batch, args.steps)
        write_section(f"qlora-{args.arch}", body, args.out)
        print(body)
        return
    sizes = [int(n) for n in args.sizes.split(",")]
    command = "python -m sft_helpers.course.bench " + " ".join(args.argv)
    if args.speed_only:
        body = packer_speed_section(packer_speed(sizes), command)
        write_section("packing-speed", body, args.out)
        print(body)
        return
    body = bench_packing(args.examples, sizes, command)
    write_section(args.command, body, args.out)
    print(body)


if __name__ == "__main__":
    main()
