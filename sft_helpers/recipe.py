"""`sft-train CONFIG.yaml [--key value ...]`: the course's recipe as a config-driven trainer.

One flat YAML file of the keys in `FIELDS` (model, data, labels, batching, method, hyperparameters,
evaluation, checkpoints, output); `--key value` on the command line overrides a key. The config is
checked before anything loads (`check_config`: an unknown key names the closest valid one, a wrong type
or value names the key and why; every problem at once). Then the data are read and labelled (as
Arrow columns by `labelling.label_dataset`: `num_proc` workers, cached next to the data, memory-mapped,
so a million conversations fit), and `preflight`'s findings (on a random sample of at most
`PREFLIGHT_SAMPLE` records) and the memory estimate for this device are printed; `--dry-run` stops there
(exit 1 when there are errors, and a real run refuses to start on them). Training is `train_sft`; the
run folder (`output_dir`) receives `config.yaml` (the resolved config), `log_history.jsonl`,
`loss.png`, the adapter and/or model, and `chat_eval.json` when a `test` file is given.

Under `torchrun` or `accelerate launch` every process runs this same command (the loss stays the
one-process token-weighted loss, `WeightedLossTrainer`); only the main process prints and writes.
Example configs ship in `sft_helpers/configs/` (`python -m sft_helpers.recipe --list`).

>>> check_config({"train": "x.jsonl", "batch_sise": 4})
Traceback (most recent call last):
...
sft_helpers.recipe.ConfigError: bad config:
  unknown key 'batch_sise' (did you mean 'batch_size'?)
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .records import FORMATS

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset

CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Field:
    """One config key: its type(s), default, allowed values (or a check returning why a value is
    wrong) and a one-line description."""

    kind: tuple
    default: object
    doc: str
    choices: tuple | None = None
    check: object = None


def _positive(v):
    return None if v > 0 else "must be > 0"


def _at_least_one(v):
    return None if v >= 1 else "must be >= 1"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _fraction(v):
    return None if 0 < v < 1 else "must be between 0 and 1 (exclusive)"


def _unit(v):
    return None if 0 <= v <= 1 else "must be between 0 and 1"


STR, INT, NUM, BOOL, NONE, LIST = (str,), (int,), (int, float), (bool,), (type(None),), (list,)
FIELDS: dict[str, Field] = {
    # model
    "model": Field(STR, "tiny", "'tiny', 'smollm2-135m', a hub id or a local folder"),
    "device": Field(STR, "auto", "'auto' (a GPU when there is one), 'cpu' or 'cuda'",
                    ("auto", "cpu", "cuda")),
    "precision": Field(STR + NONE, None, "'fp32', 'fp16', 'bf16'; null: the device's",
                       ("fp32", "fp16", "bf16", None)),
    "gradient_checkpointing": Field(BOOL, False, "recompute activations in the backward pass (less memory)"),
    # data
    "train": Field(STR + LIST, None,
                   "data file(s): JSONL, JSON, CSV or Parquet (see format), or a saved datasets folder"),
    "validation": Field(STR + LIST + NONE, None, "validation JSONL file(s) or datasets folder"),
    "validation_fraction": Field(NUM + NONE, None, "hold out this share of `train` (when no `validation`)",
                                 check=_fraction),
    "test": Field(STR + LIST + NONE, None, "conversations answered greedily after training (chat_eval)"),
    "max_train_examples": Field(INT + NONE, None, "use at most this many training records",
                                check=_at_least_one),
    "max_eval_examples": Field(INT + NONE, 64, "use at most this many validation and test records (null: all)",
                               check=_at_least_one),
    "validation_labels": Field(STR, "completion_only", "validation loss on the completion-only labels, or "
                               "on the reply and its end-of-turn only ('reply', as lesson 01 compares masks)",
                               ("completion_only", "reply")),
    "format": Field(STR, "auto", "the records' format: 'auto' (detected per record) or one of "
                    + ", ".join(FORMATS), ("auto", *FORMATS)),
    "max_skipped": Field(NUM, 0.01, "stop before training when more than this share of the records is "
                         "skipped (malformed) or dropped (nothing left to train)", check=_unit),
    "bad_records": Field(STR, "error", "malformed records: 'error' (stop) or 'skip' (drop, with a warning)",
                         ("error", "skip")),
    "num_proc": Field(INT + NONE, None, "processes that label the training data (datasets.map); null: one",
                      check=_at_least_one),
    "template": Field(STR + NONE, None,
                      "chat template: a Jinja file, or the template itself; null: the tokenizer's"),
    # labels
    "mask": Field(STR, "completion_only", "which tokens are trained",
                  ("full", "completion_only", "assistant_only")),
    "prompt_weight": Field(NUM + NONE, None, "train the prompt with this weight instead (0..1)", check=_unit),
    "max_length": Field(INT, 1024, "longest example in tokens", check=_at_least_one),
    "truncation": Field(STR, "keep_start", "over-long examples", ("keep_start", "keep_end", "drop")),
    # batching
    "batching": Field(STR, "packed", "padded / packed rows / padding-free",
                      ("padded", "packed", "padding_free")),
    "batch_size": Field(INT, 2, "examples (packed: rows) per device per micro-batch", check=_at_least_one),
    "grad_accum": Field(INT, 1, "micro-batches per optimizer step", check=_at_least_one),
    "samples_per_step": Field(INT + NONE, None, "packed: size rows so each step holds about this many "
                              "examples "
                              "(null: rows of max_length)", check=_at_least_one),
    # method
    "method": Field(STR, "qlora", "full fine-tuning, LoRA or QLoRA (4-bit base)", ("full", "lora", "qlora")),
    "lora_r": Field(INT, 16, "LoRA rank", check=_at_least_one),
    "lora_alpha": Field(NUM, 32, "LoRA scale numerator (scale = alpha / r)", check=_positive),
    "lora_dropout": Field(NUM, 0.05, "dropout on the adapters' input", check=_unit),
    "lora_targets": Field(STR + LIST, "all-linear", "modules that get adapters"),
    "train_embeddings": Field(BOOL, False, "LoRA/QLoRA: also train the embeddings and output head"),
    "attention_dropout": Field(NUM + NONE, None, "the model's attention dropout while training "
                               "(null: the model config's, 0 for most)", check=_unit),
    # hyperparameters
    "lr": Field(NUM, 2e-4, "peak learning rate (above 0.1 only with force: true)", check=_positive),
    "embedding_lr": Field(NUM + NONE, None, "peak learning rate of the input embeddings and output head "
                          "(null: lr)", check=_positive),
    "force": Field(BOOL, False, "train despite an implausible learning rate (above 0.1)"),
    "schedule": Field(STR, "cosine", "after warmup: cosine decay or constant", ("cosine", "constant")),
    "warmup": Field(NUM, 0.05, "warmup: a fraction of the steps, or a step count when >= 1",
                    check=_non_negative),
    "epochs": Field(NUM, 1.0, "passes over the data (ignored when max_steps is set)", check=_positive),
    "max_steps": Field(INT, -1, "optimizer steps; -1: by epochs"),
    "weight_decay": Field(NUM, 0.01, "AdamW weight decay", check=_non_negative),
    "max_grad_norm": Field(NUM, 1.0, "gradient clipping norm (0: off)", check=_non_negative),
    "seed": Field(INT, 0, "seed of the adapters' initialisation, the data order and the split"),
    "logging_steps": Field(INT, 10, "log the training loss every N steps", check=_at_least_one),
    # eval, checkpoints, output
    "eval_steps": Field(INT + STR + NONE, None, "validation loss every N steps, or 'epoch': at every "
                        "epoch's end (null: logging_steps)", check=_at_least_one),
    "early_stopping_patience": Field(INT + NONE, None, "stop after N evaluations without improvement",
                                     check=_at_least_one),
    "save_steps": Field(INT + NONE, None, "checkpoint every N steps into output_dir/checkpoints",
                        check=_at_least_one),
    "resume": Field(BOOL + STR + NONE, None, "resume from a checkpoint folder, or true: the latest one"),
    "output_dir": Field(STR, "runs/sft", "the run folder"),
    "save": Field(STR, "adapter", "what to keep: the adapter, the merged model, both; 'model' for full",
                  ("adapter", "merged", "both", "model")),
    "max_new_tokens": Field(INT, 48, "chat_eval: longest generated reply", check=_at_least_one),
}
# other trainers' names for our keys (TRL / transformers / axolotl), for the error message
ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
           "micro_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
           "model_name_or_path": "model", "base_model": "model", "max_seq_length": "max_length",
           "sequence_len": "max_length", "lr_scheduler_type": "schedule", "warmup_ratio": "warmup",
           "warmup_steps": "warmup", "lora_target_modules": "lora_targets", "num_epochs": "epochs",
           "packing": "batching", "dataset": "train", "datasets": "train",
           "val_set_size": "validation_fraction",
           "resume_from_checkpoint": "resume", "completion_only_loss": "mask", "assistant_only_loss": "mask"}


MAX_PLAUSIBLE_LR = 0.1


class ConfigError(ValueError):
    """A config that must not train: one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("bad config:\n" + "\n".join(f"  {p}" for p in problems))


def _type_name(kind: tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false", type(None): "null",
             list: "a list"}
    return " or ".join(dict.fromkeys(names[k] for k in kind if not (k is int and float in kind)))


def _coerce(key: str, value, field: Field):
    """`value` as `field`'s type, or raise ValueError saying why. A number written as a string
    becomes a number (PyYAML reads `1e-4` as a string); true/false is never a number; a
    comma-separated string becomes a list where a list is allowed (`--train a.jsonl,b.jsonl`)."""
    number = float in field.kind or int in field.kind
    if isinstance(value, str) and number and str not in field.kind:
        try:
            as_float = float(value)
            value = as_float if float in field.kind or not as_float.is_integer() else int(as_float)
        except ValueError:
            pass
    if isinstance(value, str) and list in field.kind and "," in value:
        value = [v.strip() for v in value.split(",") if v.strip()]
    wrong_bool = isinstance(value, bool) and bool not in field.kind
    if wrong_bool or not isinstance(value, field.kind):
        raise ValueError(f"{key}: expected {_type_name(field.kind)}, got {value!r} ({type(value).__name__})")
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}: expected a list of strings, got {value!r}")
    if field.choices is not None and value not in field.choices:
        allowed = ", ".join(repr(c) if c is not None else "null" for c in field.choices)
        close = difflib.get_close_matches(str(value), [str(c) for c in field.choices if c is not None], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{key}: must be one of {allowed}, not {value!r}{hint}")
    if field.check is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        why = field.check(value)
        if why:
            raise ValueError(f"{key}: {why}, not {value!r}")
    return value


def check_config(raw: dict) -> dict:
    """The full config (defaults filled in) from `raw`, or a `ConfigError` listing every problem:
    unknown keys (with the closest valid key), wrong types or values (the key and why), and keys
    that contradict each other.

    >>> cfg = check_config({"train": "data/sft_train.jsonl", "lr": "1e-3", "method": "lora"})
    >>> cfg["lr"], cfg["batching"]
    (0.001, 'packed')
    >>> check_config({"train": "x.jsonl", "batching": "pack"})
    Traceback (most recent call last):
    ...
    sft_helpers.recipe.ConfigError: bad config:
      batching: must be one of 'padded', 'packed', 'padding_free', not 'pack' (did you mean 'packed'?)
    """
    if not isinstance(raw, dict):
        raise ConfigError([f"the config must be a mapping of keys to values, not {type(raw).__name__}"])
    problems, cfg = [], {}
    for key, value in raw.items():
        if key not in FIELDS:
            close = ALIASES.get(key) or next(iter(difflib.get_close_matches(str(key), FIELDS, n=1)), None)
            problems.append(f"unknown key {key!r}" + (f" (did you mean {close!r}?)" if close else
                                                      f"; valid keys: {', '.join(FIELDS)}"))
            continue
        try:
            cfg[key] = _coerce(key, value, FIELDS[key])
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError(problems)
    cfg = {k: cfg.get(k, f.default) for k, f in FIELDS.items()}
    if not cfg["train"]:
        problems.append("train: required (a JSONL file, a list of them, or a saved datasets folder)")
    if cfg["validation"] and cfg["validation_fraction"]:
        problems.append("validation_fraction: set either `validation` or `validation_fraction`, not both")
    if cfg["early_stopping_patience"] and not (cfg["validation"] or cfg["validation_fraction"]):
        problems.append("early_stopping_patience: needs a `validation` set or `validation_fraction`")
    if cfg["method"] == "full" and cfg["save"] != "model":
        problems.append(f"save: full fine-tuning has no adapter, use save: model (not {cfg['save']!r})")
    if cfg["method"] != "full" and cfg["save"] == "model":
        problems.append(f"save: {cfg['method']} trains an adapter: 'adapter', 'merged' or 'both', "
                        "not 'model'")
    if cfg["method"] == "full" and cfg["train_embeddings"]:
        problems.append("train_embeddings: only for lora/qlora (full fine-tuning trains them already)")
    if cfg["prompt_weight"] is not None and cfg["mask"] != "completion_only":
        problems.append("prompt_weight: weights the prompt of completion-only labels; "
                        f"mask is {cfg['mask']!r}")
    if cfg["samples_per_step"] and cfg["batching"] != "packed":
        problems.append(f"samples_per_step: only for batching: packed (not {cfg['batching']!r})")
    if cfg["lr"] > MAX_PLAUSIBLE_LR and not cfg["force"]:
        problems.append(f"lr: {cfg['lr']:g} is implausible for fine-tuning (AdamW rates above {MAX_PLAUSIBLE_LR:g} "
                        "diverge; typical: 1e-5 to 3e-4); set force: true to train anyway")
    if isinstance(cfg["eval_steps"], str) and cfg["eval_steps"] != "epoch":
        problems.append(f"eval_steps: a step count or 'epoch', not {cfg['eval_steps']!r}")
    if cfg["max_steps"] == 0 or cfg["max_steps"] < -1:
        problems.append(f"max_steps: must be >= 1, or -1 to train by epochs, not {cfg['max_steps']}")
    if problems:
        raise ConfigError(problems)
    return cfg


class DuplicateKeyError(ValueError):
    def __init__(self, key: str, line: int):
        self.key, self.line = key, line
        super().__init__(f"line {line}: duplicate key {key!r}")


def _unique_key_loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """PyYAML's safe loader, refusing a mapping that repeats a key (PyYAML keeps the last)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise DuplicateKeyError(key, key_node.start_mark.line + 1)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return Loader


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    """Read a YAML config (a path, or the name of a shipped one in `sft_helpers/configs/`), apply
    `--key value` overrides (values read as YAML) and `check_config` the result.

    >>> load_config("qlora-tiny", ["--lr", "1e-3"])["lr"]
    0.001
    """
    import yaml

    raw = {}
    if path is not None:
        p = Path(path)
        if not p.exists() and (CONFIGS / f"{path}.yaml").exists():
            p = CONFIGS / f"{path}.yaml"
        if not p.exists():
            shipped = ", ".join(sorted(f.stem for f in CONFIGS.glob("*.yaml")))
            raise ConfigError([f"config file {str(path)!r} not found (shipped configs: {shipped})"])
        try:
            raw = yaml.load(p.read_text(encoding="utf-8"), Loader=_unique_key_loader()) or {}
        except DuplicateKeyError as e:
            raise ConfigError([f"{p}:{e.line}: key {e.key!r} appears twice (the last would silently win)"]) from None
        except yaml.YAMLError as e:
            raise ConfigError([f"{p}: not valid YAML: {e}"]) from None
        if isinstance(raw, dict):
            raw = _relative_paths(raw, p)
    overrides = list(overrides or [])
    problems = []
    while overrides:
        flag = overrides.pop(0)
        if not flag.startswith("--") or not overrides or overrides[0].startswith("--"):
            problems.append(f"override {flag!r}: expected --key value")
            continue
        value = overrides.pop(0)
        try:
            raw[flag[2:].replace("-", "_")] = yaml.safe_load(value)
        except yaml.YAMLError:
            raw[flag[2:].replace("-", "_")] = value
    if problems:
        raise ConfigError(problems)
    return check_config(raw)


def _relative_paths(raw: dict, config_path: Path) -> dict:
    """Data paths written relative to a shipped config mean the course data: `data/x.jsonl` in a
    shipped config resolves to the package's data folder when it is not in the working directory."""
    from .paths import data_path

    out = dict(raw)
    for key in ("train", "validation", "test"):
        value = out.get(key)
        paths = value if isinstance(value, list) else [value]
        if config_path.resolve().parent == CONFIGS and all(isinstance(v, str) for v in paths):
            fixed = [str(data_path(v[5:])) if v.startswith("data/") and not Path(v).exists() else v
                     for v in paths]
            out[key] = fixed if isinstance(value, list) else fixed[0]
    return out


# --- data ---------------------------------------------------------------------------------------

SMALL_FILE_BYTES = 64 * 2**20  # JSONL files up to this size are read and checked line by line
PREFLIGHT_SAMPLE = 5000  # records (and labelled examples) the preflight checks, drawn at random


def read_dataset(source, num_proc: int | None = None, format: str = "auto",
                 notes: list[str] | None = None) -> tuple[Dataset, list[str]]:
    """Records from JSONL file(s) or a saved `datasets` folder (its `train` split, or the only one) as
    one `datasets.Dataset` of the valid records; returns `(dataset, bad)` where `bad` names each
    malformed record. A JSONL file up to `SMALL_FILE_BYTES` is read by `load_conversations`
    (`file:line: reason`, any encoding it reads); a larger one by `datasets`' json loader (cached
    Arrow, memory-mapped) and, like a folder, checked by a batched map (`path[index]: reason`).
    Small files may be JSONL, JSON, CSV or Parquet, their records in any of `records.FORMATS`
    (`format`, or "auto": detected per record) and converted to messages; a line per file that was
    converted goes to `notes`.

    >>> from sft_helpers.paths import data_path
    >>> ds, bad = read_dataset(str(data_path("sft_test.jsonl")))
    >>> len(ds) > 0, bad
    (True, [])
    """
    from datasets import Dataset, concatenate_datasets

    from .records import load_conversations

    small, parts, bad = [], [], []
    for path in source if isinstance(source, list) else [source]:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"data file or folder {str(path)!r} does not exist")
        if p.is_file() and (p.stat().st_size <= SMALL_FILE_BYTES or p.suffix.lower() in (".json", ".csv")):
            good, report = load_conversations(p, on_error="skip", format=format)
            small += good
            bad += report.skipped
            converted = {f: n for f, n in report.formats.items() if f != "messages"}
            if converted and notes is not None:
                notes.append(f"{p}: " + ", ".join(f"{n:,} records read as {FORMATS[f]}" for f, n in converted.items()))
            continue
        ds, unreadable = _load_large(p)
        ds, ds_bad = _checked(ds, p, num_proc)
        ds_bad = unreadable + ds_bad
        parts.append(ds)
        bad += ds_bad
    if small or not parts:
        parts.insert(0, Dataset.from_list(small))
    return (parts[0] if len(parts) == 1 else concatenate_datasets(parts)), bad


def _load_large(p: Path) -> tuple[Dataset, list[str]]:
    """`(dataset, unreadable)`: a saved datasets folder (its train split, or the only one), or a large
    JSONL file by the json loader (cached under the datasets cache, keyed by the file's path and
    modification time). When the loader fails on the file (a truncated line, bytes that are not
    UTF-8), the file is read line by line instead (`_readable_lines`): the lines that cannot be read
    are named `file:line: reason`, and the others are loaded from a copy in the cache."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if p.is_dir():
        ds = load_from_disk(str(p))
        if isinstance(ds, DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        return ds, []
    import logging

    loader_log = logging.getLogger("datasets.packaged_modules.json.json")
    level = loader_log.level
    loader_log.setLevel(logging.CRITICAL)  # its error is reworded below, line by line
    try:
        return load_dataset("json", data_files=str(p), split="train"), []
    except Exception:  # noqa: BLE001  (DatasetGenerationError, ArrowInvalid, UnicodeDecodeError, ...)
        clean, unreadable = _readable_lines(p)
        return load_dataset("json", data_files=clean, split="train"), unreadable
    finally:
        loader_log.setLevel(level)


def _readable_lines(p: Path) -> tuple[str, list[str]]:
    """`(copy, unreadable)`: the lines of JSONL file `p` that decode as UTF-8 and parse as JSON
    objects, written to a copy in `cache_dir()`, and `file:line: reason` for every other non-blank
    line (1-based), read one line at a time."""
    import hashlib

    stat = p.stat()
    key = hashlib.sha1(f"{p.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    copy, unreadable = os.path.join(cache_dir(), f"readable-{key}.jsonl"), []
    hint = " (is it Latin-1 or cp1252? re-save it as UTF-8)"
    with open(p, "rb") as src, open(copy + ".tmp", "wb") as out:
        for lineno, raw in enumerate(src, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                unreadable.append(f"{p}:{lineno}: cannot decode as UTF-8 at byte {e.start + 1} ({e.reason}){hint}")
                continue
            except json.JSONDecodeError as e:
                unreadable.append(f"{p}:{lineno}: invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(record, dict):
                unreadable.append(f"{p}:{lineno}: record is a {type(record).__name__}, not an object")
                continue
            out.write(raw.rstrip(b"\r\n") + b"\n")
    os.replace(copy + ".tmp", copy)
    return copy, unreadable


def cache_dir() -> str:
    """Where `sft-train` keeps the Arrow files it derives from the data (checks, labels, packed rows):
    a folder of the datasets cache, never the user's data folder."""
    import datasets

    folder = Path(datasets.config.HF_DATASETS_CACHE) / "sft_helpers"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def _problems_batch(batch: dict) -> dict:
    from .records import conversation_problems
    from .labelling import plain_record

    rows = [plain_record({k: v[n] for k, v in batch.items()}) for n in range(len(next(iter(batch.values()))))]
    return {"problems": ["; ".join(conversation_problems(r)) or None for r in rows]}


def _checked(ds: Dataset, p: Path, num_proc: int | None) -> tuple[Dataset, list[str]]:
    """`(valid rows, bad)`: every row checked by `conversation_problems` in a batched (cached) map."""
    import numpy as np
    import pyarrow.compute as pc

    cached = os.path.join(cache_dir(), f"checks-{ds._fingerprint}.arrow") if ds.cache_files else None
    problems = ds.map(_problems_batch, batched=True, remove_columns=ds.column_names, desc="checking records",
                      num_proc=num_proc if num_proc and num_proc > 1 else None,
                      cache_file_name=cached).data.column("problems")
    bad = np.flatnonzero(pc.is_valid(problems).to_numpy(zero_copy_only=False))
    if not len(bad):
        return ds, []
    good = np.flatnonzero(pc.is_null(problems).to_numpy(zero_copy_only=False))
    lines = _line_numbers(p, bad) if p.is_file() else {}
    where = {int(i): f"{p}:{lines[int(i)]}" if int(i) in lines else f"{p}: row {i + 1}" for i in bad}
    return ds.select(good), [f"{where[int(i)]}: {problems[int(i)].as_py()}" for i in bad]


def _line_numbers(p: Path, rows) -> dict[int, int]:
    """The 1-based line of JSONL file `p` that holds each of `rows` (0-based record numbers, blank
    and unreadable lines not counted), by one pass over the file."""
    wanted, found, row = set(int(r) for r in rows), {}, -1
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                if not isinstance(json.loads(raw), dict):
                    continue
            except ValueError:  # undecodable or invalid: not a row of the loaded dataset
                continue
            row += 1
            if row in wanted:
                found[row] = lineno
                if len(found) == len(wanted):
                    break
    return found


def records_of(ds: Dataset, indices=None) -> list[dict]:
    """Rows of `ds` (all, or `indices`) as the records they were read from (`labelling.plain_record`)."""
    from .labelling import plain_record

    return [plain_record(r) for r in (ds if indices is None else ds.select(indices))]


def read_records(source) -> tuple[list[dict], list[str]]:
    """`read_dataset` as `(records, bad)`: a list of record dicts.

    >>> from sft_helpers.paths import data_path
    >>> records, bad = read_records(str(data_path("sft_test.jsonl")))
    >>> len(records) > 0, bad
    (True, [])
    """
    ds, bad = read_dataset(source)
    return records_of(ds), bad


def split_validation(records: list[dict] | Dataset, fraction: float, seed: int = 0) -> tuple:
    """`(train, validation)`: a seeded random `fraction` of `records` (a list, or a Dataset: then two
    Datasets) held out (at least one).

    >>> train, val = split_validation([{"id": i} for i in range(10)], 0.2)
    >>> len(train), len(val)
    (8, 2)
    """
    import random

    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n = max(1, round(fraction * len(records)))
    held = set(order[:n])
    keep = [i for i in range(len(records)) if i not in held]
    if isinstance(records, list):
        return [records[i] for i in keep], [records[i] for i in sorted(held)]
    return records.select(keep), records.select(sorted(held))


def _sample(n_rows: int, size: int, seed: int) -> list[int]:
    """`size` row numbers of `n_rows` drawn at random (all of them when there are no more), in order."""
    import random

    return list(range(n_rows)) if n_rows <= size else sorted(random.Random(seed).sample(range(n_rows), size))


def prepare(cfg: dict, tokenizer, train: list[dict] | None = None, validation: list[dict] | None = None,
            test: list[dict] | None = None) -> dict:
    """Read, split and label the data of `cfg`: `{"records", "n_records", "train", "validation",
    "test", "bad", "label_report"}`. The data are `cfg`'s files, or the lists given: `train` and
    `validation` as records (labelled here) or as labelled examples (dicts with `input_ids` and
    `labels`, used as they are), `test` as records; `[]` means none. Files are labelled into a
    memory-mapped `datasets.Dataset` by `labelling.label_dataset` (`num_proc` processes, cached next
    to the data), lists by `build_labels`. `records` are at most `PREFLIGHT_SAMPLE` of the
    `n_records` training records (drawn at random, as dicts: what the preflight checks);
    `validation` (labelled: completion-only, or with `validation_labels: reply` the reply and its
    end-of-turn) and `test` hold at most `max_eval_examples`; `bad` the malformed records' reasons.

    >>> from sft_helpers.models import load_tokenizer
    >>> cfg = check_config({"train": "unused.jsonl", "max_eval_examples": 1})
    >>> records = [{"messages": [{"role": "user", "content": "Hi"},
    ...                          {"role": "assistant", "content": "Hello."}]}] * 3
    >>> data = prepare(cfg, load_tokenizer("tiny"), records, records, [])
    >>> len(data["train"]), len(data["validation"]), data["test"]
    (3, 1, [])
    """
    from .labelling import label_dataset
    from .masking import LabelReport, build_labels, stop_at_end_of_turn

    bad, n, notes, val_report = [], cfg["max_eval_examples"], [], LabelReport()
    data = train
    if data is None:
        data, bad = read_dataset(cfg["train"], cfg["num_proc"], cfg["format"], notes)
    if cfg["max_train_examples"]:
        cap = min(cfg["max_train_examples"], len(data))
        data = data[:cap] if isinstance(data, list) else data.select(range(cap))
    def first(ds):  # the first `max_eval_examples` rows of a Dataset, as records
        return records_of(ds, range(min(n or len(ds), len(ds))))

    if validation is None and cfg["validation"]:
        val, val_bad = read_dataset(cfg["validation"], format=cfg["format"], notes=notes)
        validation, bad = first(val), bad + val_bad
    elif validation is None and cfg["validation_fraction"]:
        data, val = split_validation(data, cfg["validation_fraction"], cfg["seed"])
        validation = val if isinstance(val, list) else first(val)
    if test is None and cfg["test"]:
        test_ds, test_bad = read_dataset(cfg["test"], format=cfg["format"], notes=notes)
        test, bad = first(test_ds), bad + test_bad
    validation, test = (list(items or [])[:n] for items in (validation, test))
    labelled = isinstance(data, list) and data and "input_ids" in data[0]
    if labelled:
        train, report = data, LabelReport(kept=len(data))
    elif isinstance(data, list):
        train, report = build_labels(data, tokenizer, cfg["mask"], max_length=cfg["max_length"],
                                     truncation=cfg["truncation"], prompt_weight=cfg["prompt_weight"])
    else:
        train, report = label_dataset(data, tokenizer, cfg["mask"], max_length=cfg["max_length"],
                                      truncation=cfg["truncation"], prompt_weight=cfg["prompt_weight"],
                                      num_proc=cfg["num_proc"], checked=True,  # read_dataset checked them
                                      cache_dir=cache_dir())
    if validation and "input_ids" not in validation[0]:
        # the validation loss is on the responses (completion-only), comparable across masks
        validation, val_report = build_labels(validation, tokenizer, "completion_only",
                                              max_length=cfg["max_length"], truncation=cfg["truncation"],
                                              on_error="skip")
        if cfg["validation_labels"] == "reply":
            validation = stop_at_end_of_turn(validation, tokenizer, tokenizer.eos_token)
    records = [] if labelled else data
    if not isinstance(records, list):
        records = records_of(data, _sample(len(data), PREFLIGHT_SAMPLE, cfg["seed"]))
    elif len(records) > PREFLIGHT_SAMPLE:
        records = [records[i] for i in _sample(len(records), PREFLIGHT_SAMPLE, cfg["seed"])]
    return {"records": records, "n_records": len(data), "train": train, "validation": validation,
            "test": test, "bad": bad, "label_report": report, "notes": notes, "validation_report": val_report}


# --- preflight -----------------------------------------------------------------------------------

def device_of(cfg: dict) -> str:
    """The device this process trains on: `cfg["device"]`, with 'auto' a GPU when there is one; under
    torchrun / accelerate each process takes the GPU of its `LOCAL_RANK`."""
    import torch

    device = cfg["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    return device


def memory_estimate(cfg: dict, model_config, device: str, row_length: int) -> tuple[dict, float | None]:
    """`(estimate_memory(...), capacity in GiB)` for this run's model, method and micro-batch on
    `device` (the GPU's memory, or the machine's RAM on a CPU)."""
    import torch

    from .memory import estimate_memory

    cpu = not device.startswith("cuda")
    bytes_ = 4 if cpu or cfg["precision"] == "fp32" else 2
    est = estimate_memory(model_config, cfg["method"], seq_len=row_length, batch=cfg["batch_size"],
                          grad_ckpt=cfg["gradient_checkpointing"], r=cfg["lora_r"], dtype_bytes=bytes_,
                          overhead_gb=0.0 if cpu else 1.0,
                          train_embeddings=cfg["train_embeddings"] and cfg["method"] != "full")
    if cpu:
        capacity = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    else:
        capacity = torch.cuda.get_device_properties(torch.device(device)).total_memory / 1024**3
    return est, capacity


SKIPPED_FILE = "skipped.txt"


def write_skipped(cfg: dict, data: dict) -> Path | None:
    """Every record left out of the run, one per line with where it was and why, in
    `output_dir/skipped.txt`: malformed records (`file:line: reason`) and the examples dropped after
    labelling (train and validation). Returns the file, or None when nothing was left out."""
    lines = [f"malformed: {b}" for b in data["bad"]]
    lines += [f"dropped (train): {d}" for d in data["label_report"].dropped]
    lines += [f"dropped (validation): {d}" for d in data["validation_report"].dropped]
    if not lines:
        return None
    path = Path(cfg["output_dir"]) / SKIPPED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_preflight(cfg: dict, tokenizer, data: dict, model_config, device: str, verbose: bool = True) -> list:
    """`preflight`'s findings for this run, plus malformed records (errors unless `bad_records: skip`),
    an empty training set, and the memory estimate against the device (an error when it does not fit
    a GPU); prints the report and the estimate."""
    from .diagnostics import Finding, preflight

    extra = []
    if data["bad"]:
        shown = "".join(f"\n      {b}" for b in data["bad"][:5]) + (
            f"\n      ... and {len(data['bad']) - 5} more" if len(data["bad"]) > 5 else "")
        severity = "warning" if cfg["bad_records"] == "skip" else "error"
        skipped = " (skipped)" if severity == "warning" else ""
        extra.append(Finding(severity, "malformed records",
                             f"{len(data['bad'])} record(s) are not valid chat "
                             f"conversations{skipped}:{shown}",
                             "fix them, or set bad_records: skip to train without them"))
    if not len(data["train"]):
        extra.append(Finding("error", "no training examples", "no example is left after labelling "
                             f"({len(data['label_report'].dropped)} dropped)",
                             "check the data, mask and max_length"))
    elif data["label_report"].dropped:
        extra.append(Finding("warning", "dropped examples", str(data["label_report"]).replace("\n", "\n    "),
                             "check the mask mode and max_length"))
    dropped = data["label_report"].dropped
    share = (len(data["bad"]) + len(dropped)) / max(1, data["n_records"] + len(data["bad"]))
    if share > cfg["max_skipped"] and (cfg["bad_records"] == "skip" or dropped):
        extra.append(Finding("error", "records lost", f"{len(data['bad']) + len(dropped)} records skipped or "
                             f"dropped ({share:.1%}), more than max_skipped ({cfg['max_skipped']:.1%}); every "
                             f"one is listed in {Path(cfg['output_dir']) / SKIPPED_FILE}",
                             "fix the data, or raise max_skipped"))
    val_dropped = data["validation_report"].dropped
    if (cfg["validation"] or cfg["validation_fraction"]) and not data["validation"]:
        extra.append(Finding("error", "no validation examples", f"every validation record was dropped "
                             f"({len(val_dropped)} after labelling)", "check the validation data and max_length"))
    elif val_dropped:
        extra.append(Finding("warning", "dropped validation examples",
                             f"{len(val_dropped)} validation records dropped after labelling (listed in "
                             f"{Path(cfg['output_dir']) / SKIPPED_FILE})", "check the validation data and max_length"))
    from .diagnostics import check_multi_turn

    extra += check_multi_turn(data["records"], cfg["mask"])
    params = _params(model_config)
    train = data["train"]
    examples = records_of(train, _sample(len(train), PREFLIGHT_SAMPLE, cfg["seed"])) if len(train) else None
    findings = preflight(data["records"], tokenizer, examples, lr=cfg["lr"],
                         method=cfg["method"], warmup=cfg["warmup"], epochs=cfg["epochs"],
                         max_length=cfg["max_length"],
                         model_params=params, verbose=False)
    try:
        est, capacity = memory_estimate(cfg, model_config, device, row_length(cfg, data["train"]))
    except (AttributeError, KeyError, ValueError) as e:  # an architecture the estimator does not know
        est, capacity = None, None
        extra.append(Finding("info", "memory", f"no estimate for model_type "
                             f"{getattr(model_config, 'model_type', '?')!r} ({e})"))
    if est is not None and est["total"] > capacity:
        extra.append(Finding("error" if device.startswith("cuda") else "warning", "memory",
                             f"the estimate ({est['total']:.2f} GiB) exceeds {device}'s {capacity:.1f} GiB",
                             "lower batch_size or max_length, use qlora, or gradient_checkpointing: true"))
    findings = sorted(extra + findings, key=lambda f: ("error", "warning", "info").index(f.severity))
    if verbose:
        counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
        print(f"preflight: checked {len(data['records'])} of {data['n_records']} records, "
              f"{len(data['bad'])} skipped (malformed), {len(data['label_report'].dropped)} dropped after labelling, "
              f"{len(data['train'])} training examples, "
              f"{len(data['validation'])} validation, {len(data['test'])} test; {counts['error']} errors, "
              f"{counts['warning']} warnings, {counts['info']} notes")
        for f in findings:
            print(f)
    if verbose and est is not None:
        parts = ", ".join(f"{k} {est[k]:.3f}" for k in ("weights", "adapters", "gradients", "optimizer",
                                                          "activations", "logits", "overhead") if est[k])
        print(f"memory: ~{est['total']:.2f} GiB estimated on {device} (capacity {capacity:.1f} GiB) for "
              f"{cfg['method']}, {cfg['batch_size']} x {row_length(cfg, data['train'])} tokens: {parts}")
    return findings


def _params(model_config) -> int | None:
    from .memory import parameter_counts

    try:
        return parameter_counts(model_config)["total"]
    except AttributeError:
        return None


def example_lengths(examples: list[dict] | Dataset) -> np.ndarray:
    """Tokens of every labelled example: read from the Arrow column of a Dataset (no rows decoded)."""
    import numpy as np
    import pyarrow.compute as pc

    if isinstance(examples, list):
        return np.array([len(e["input_ids"]) for e in examples], dtype=np.int64)
    column = examples.with_format("arrow")["input_ids"]
    return pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


def row_length(cfg: dict, train: list[dict] | Dataset) -> int:
    """Tokens per row of a micro-batch: the packed row length, else the longest example."""
    from .packing import row_length_for_steps

    lengths = example_lengths(train)
    longest = int(lengths.max()) if len(lengths) else cfg["max_length"]
    if cfg["batching"] == "packed" and cfg["samples_per_step"] and len(lengths):
        return row_length_for_steps(lengths, cfg["samples_per_step"], cfg["batch_size"])
    return cfg["max_length"] if cfg["batching"] == "packed" else longest  # padded, padding-free: at most


# --- training ------------------------------------------------------------------------------------

def build_model(cfg: dict, device: str, verbose: bool = True):
    """`(model, tokenizer)`: the base (4-bit for QLoRA) with LoRA adapters when the method has them,
    and the config's chat template; `verbose` prints the adapters' trainable share."""
    from .lora import add_lora
    from .models import load_model

    model, tok = load_model(cfg["model"], device=device,
                            quantization="4bit" if cfg["method"] == "qlora" else None,
                            gradient_checkpointing=cfg["gradient_checkpointing"], precision=cfg["precision"],
                            **({} if cfg["attention_dropout"] is None else
                               {"attention_dropout": cfg["attention_dropout"]}))
    apply_template(cfg, tok)
    if cfg["method"] != "full":
        model = add_lora(model, r=cfg["lora_r"], alpha=cfg["lora_alpha"], dropout=cfg["lora_dropout"],
                         target_modules=cfg["lora_targets"], seed=cfg["seed"],
                         train_embeddings=cfg["train_embeddings"], verbose=verbose and is_main_process())
    return model, tok


def apply_template(cfg: dict, tokenizer) -> None:
    """Set the tokenizer's chat template from `cfg["template"]` (a file, or the template text)."""
    t = cfg["template"]
    if t is None:
        return
    if Path(t).is_file():
        t = Path(t).read_text(encoding="utf-8")
    elif "{%" not in t and "{{" not in t:
        raise ConfigError([f"template: {t!r} is neither a file nor a Jinja template"])
    tokenizer.chat_template = t


def batches(cfg: dict, tokenizer, train: list[dict] | Dataset) -> tuple[object, object]:
    """`(rows, collator)` for the config's batching: the labelled examples (padded, padding-free), or
    packed rows from `pack_dataset_columnar` (the rows of `pack_examples`, gathered columnar from the
    memory-mapped labels and cached next to them), each `row_length` tokens (what the preflight's
    memory estimate assumed)."""
    from .collators import PackedCollator, PaddedCollator, PaddingFreeCollator
    from .packing import pack_dataset_columnar

    if cfg["batching"] == "padded":
        return train, PaddedCollator(tokenizer.pad_token_id)
    if cfg["batching"] == "padding_free":
        return train, PaddingFreeCollator()
    from .packing import pack_examples

    length = row_length(cfg, train)
    if isinstance(train, list):
        rows, _ = pack_examples(train, length, shuffle_seed=cfg["seed"])
    else:  # the same rows, gathered columnar
        rows, _ = pack_dataset_columnar(train, length, shuffle_seed=cfg["seed"], cache_dir=cache_dir())
    return rows, PackedCollator(tokenizer.pad_token_id, length)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def close_process_group() -> None:
    """Leave the data-parallel process group if this process is in one (under torchrun the Trainer's
    accelerate state starts it): every rank waits for the others, then tears its group down. A
    process that exits with a gloo group alive can abort at interpreter shutdown ("terminate called
    without an active exception", pytorch/pytorch#179291). Call it once training is over on every
    rank, not after an error (a rank still in a collective would wait for ever).

    >>> close_process_group()  # outside torchrun: no group, nothing to do
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def write_run(run: Path, cfg: dict, history: list[dict], model, tokenizer, scores: dict | None) -> list[str]:
    """Write the run folder; returns what was written."""
    import yaml

    from .lora import merge_adapter, merge_loaded, save_adapter
    from .models import device_settings
    from .diagnostics import plot_loss_curves

    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    with open(run / "log_history.jsonl", "w", encoding="utf-8") as f:
        for h in history:
            f.write(json.dumps(h) + "\n")
    curves = {"train": [h for h in history if "loss" in h]}
    curves["validation"] = [{"step": h["step"], "loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    plot_loss_curves({k: v for k, v in curves.items() if v}, key="loss", title=str(run)).savefig(
        run / "loss.png", dpi=100)
    written = ["config.yaml", "log_history.jsonl", "loss.png"]
    if cfg["method"] == "full":
        model.save_pretrained(run / "model")
        tokenizer.save_pretrained(run / "model")
        written.append("model/")
    else:
        if cfg["save"] in ("adapter", "both", "merged"):
            save_adapter(model, run / "adapter")
            written.append("adapter/")
        if cfg["save"] in ("merged", "both"):
            if cfg["method"] == "qlora":  # into the dequantised 4-bit base the adapter was trained on
                merged, _ = merge_adapter(cfg["model"], run / "adapter", precision=cfg["precision"])
            else:  # in place, every weight in the lane's dtype (the trained embeddings are fp32)
                merged = merge_loaded(model, device_settings(str(model.device), cfg["precision"])["dtype"])
            merged.save_pretrained(run / "model")
            tokenizer.save_pretrained(run / "model")
            written.append("model/")
            if cfg["save"] == "merged":
                import shutil

                shutil.rmtree(run / "adapter")
                written.remove("adapter/")
    if scores is not None:
        rows = scores.pop("rows")
        (run / "chat_eval.json").write_text(json.dumps(scores, indent=1), encoding="utf-8")
        with open(run / "chat_eval_rows.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        written += ["chat_eval.json", "chat_eval_rows.jsonl"]
    return written


@dataclass
class SFTRun:
    """What `run_sft` returns: the trainer's `history` (its `log_history`), `scores` (`chat_eval` on
    the test records; None without), the trained `model` and its `tokenizer`, the `data` it trained
    and was evaluated on (`prepare`'s dict), the `rows` the trainer saw (labelled examples, or packed
    rows of `row_length` tokens), the training time in `seconds` and, on a GPU, `peak_gpu_gib`."""

    history: list[dict]
    scores: dict | None
    model: object
    tokenizer: object
    data: dict
    rows: object
    row_length: int | None
    seconds: float
    peak_gpu_gib: float | None = None

    @property
    def val_loss(self) -> float | None:
        """The last logged validation loss (None without validation)."""
        return next((h["eval_loss"] for h in reversed(self.history) if "eval_loss" in h), None)


def training_settings(cfg: dict) -> dict:
    """`train_sft`'s keywords for `cfg` (the collator and data aside).

    >>> training_settings(check_config({"train": "x.jsonl", "schedule": "constant"}))["schedule"]
    'constant_with_warmup'
    """
    checkpoints = cfg["save_steps"] or cfg["resume"]
    return dict(lr=cfg["lr"], epochs=cfg["epochs"], max_steps=cfg["max_steps"], batch_size=cfg["batch_size"],
                grad_accum=cfg["grad_accum"], warmup=cfg["warmup"], weight_decay=cfg["weight_decay"],
                seed=cfg["seed"], eval_steps=cfg["eval_steps"], logging_steps=cfg["logging_steps"],
                output_dir=str(Path(cfg["output_dir"]) / "checkpoints") if checkpoints else None,
                save_steps=cfg["save_steps"], resume_from_checkpoint=cfg["resume"] or None,
                early_stopping_patience=cfg["early_stopping_patience"], precision=cfg["precision"],
                max_grad_norm=cfg["max_grad_norm"], embedding_lr=cfg["embedding_lr"],
                schedule="cosine" if cfg["schedule"] == "cosine" else "constant_with_warmup")


def run_sft(cfg: dict, train: list[dict] | None = None, validation: list[dict] | None = None,
            test: list[dict] | None = None, *, data: dict | None = None, model: tuple | None = None,
            callbacks: list | None = None, verbose: bool = False) -> SFTRun:
    """Run one fine-tuning config: the pipeline behind `sft-train` and every lesson's runs.

    `cfg` is a checked config (`check_config` / `load_config`: the keys of `FIELDS`). The model is
    built from it (`build_model`; or pass `model=(model, tokenizer)`), the data read and labelled
    (`prepare`: `cfg`'s files, or the `train` / `validation` / `test` lists given, or `data` already
    prepared), batched (`batches`: padded, packed rows or padding-free), trained (`train_sft`, with
    extra `callbacks`) and the test records answered greedily (`chat_eval`). Returns an `SFTRun`.

    >>> from sft_helpers.paths import data_path
    >>> cfg = check_config({"train": str(data_path("sft_train.jsonl")), "method": "full", "save": "model",
    ...                     "max_train_examples": 8, "max_steps": 2, "test": None, "validation": None})
    >>> run = run_sft(cfg)
    >>> run.history[-1]["step"], run.scores
    (2, None)
    """
    import torch

    from .training import train_sft

    main = is_main_process()
    if model is None:
        model, tokenizer = build_model(cfg, device_of(cfg), verbose=verbose)
    else:
        model, tokenizer = model
    if data is None:
        data = prepare(cfg, tokenizer, train, validation, test)
    started = time.perf_counter()
    rows, collator = batches(cfg, tokenizer, data["train"])
    if verbose and main:
        print(f"batches: {len(rows):,} {cfg['batching']} rows in {time.perf_counter() - started:.1f} s")
    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    history = train_sft(model, tokenizer, rows, data["validation"] or None, collator=collator,
                        callbacks=callbacks, **training_settings(cfg))
    seconds = time.perf_counter() - started
    scores = None
    if data["test"] and main:
        from .evaluate import chat_eval

        scores = chat_eval(model, tokenizer, data["test"], max_new_tokens=cfg["max_new_tokens"])
    return SFTRun(history, scores, model, tokenizer, data, rows,
                  getattr(collator, "max_length", None) if cfg["batching"] == "packed" else None, seconds,
                  torch.cuda.max_memory_allocated() / 1024**3 if cuda else None)


def trl_arguments(cfg: dict) -> dict[str, dict]:
    """What `cfg` says, in TRL's words: `{"SFTConfig": {...}, "LoraConfig": {...}}` (peft's, empty
    for full fine-tuning), each value the one `cfg` trains with; `"no TRL field"` names our keys
    TRL has no field for. `SFTConfig(**out["SFTConfig"])` builds (`reference.trl_sft_config`).

    >>> args = trl_arguments(check_config({"train": "x.jsonl", "lr": 1e-3, "method": "full", "save": "model"}))
    >>> args["SFTConfig"]["learning_rate"], args["SFTConfig"]["packing"], args["LoraConfig"]
    (0.001, True, {})
    """
    sft = {"learning_rate": cfg["lr"], "num_train_epochs": cfg["epochs"], "max_steps": cfg["max_steps"],
           "per_device_train_batch_size": cfg["batch_size"], "gradient_accumulation_steps": cfg["grad_accum"],
           "lr_scheduler_type": "cosine" if cfg["schedule"] == "cosine" else "constant_with_warmup",
           "warmup_steps": cfg["warmup"], "weight_decay": cfg["weight_decay"],
           "max_grad_norm": cfg["max_grad_norm"], "seed": cfg["seed"], "max_length": cfg["max_length"],
           "eval_strategy": {"epoch": "epoch", None: "no"}.get(cfg["eval_steps"], "steps"),
           "eval_steps": cfg["eval_steps"] if isinstance(cfg["eval_steps"], int) else None,
           "logging_steps": cfg["logging_steps"],
           # TRL packs by BFD, then trains the packed rows padding-free
           "packing": cfg["batching"] == "packed", "padding_free": cfg["batching"] != "padded",
           "completion_only_loss": cfg["mask"] == "completion_only",
           "assistant_only_loss": cfg["mask"] == "assistant_only"}
    if cfg["attention_dropout"] is not None:  # a model config key: TRL passes it to from_pretrained
        sft["model_init_kwargs"] = {"attention_dropout": cfg["attention_dropout"]}
    lora = {} if cfg["method"] == "full" else {
        "r": cfg["lora_r"], "lora_alpha": cfg["lora_alpha"], "lora_dropout": cfg["lora_dropout"],
        "target_modules": cfg["lora_targets"],
        # the embeddings and output head trained whole next to the adapters
        "modules_to_save": ["embed_tokens", "lm_head"] if cfg["train_embeddings"] else None}
    ours = {"samples_per_step": cfg["samples_per_step"], "prompt_weight": cfg["prompt_weight"],
            "embedding_lr": cfg["embedding_lr"],  # per-group rates: an optimizer of your own in TRL
            # a 4-bit base is the model's loading (`model_init_kwargs`' quantization_config), not a field
            "method": "qlora" if cfg["method"] == "qlora" else None}
    return {"SFTConfig": sft, "LoraConfig": lora, "no TRL field": {k: v for k, v in ours.items() if v is not None}}


def trl_configs(cfg: dict):
    """`(SFTConfig, LoraConfig or None)` that train what the `sft-train` config `cfg` trains
    (`trl_arguments`), built by TRL and peft themselves, so a field they rename or reject
    fails here rather than in a learner's script.

    >>> from sft_helpers.recipe import check_config
    >>> sft, lora = trl_configs(check_config({"train": "x.jsonl", "method": "lora", "lr": 3e-3}))
    >>> sft.learning_rate, sft.packing, lora.r
    (0.003, True, 16)
    """
    from peft import LoraConfig

    from .reference import trl_sft_config

    args = trl_arguments(cfg)
    return trl_sft_config(**args["SFTConfig"]), LoraConfig(**args["LoraConfig"]) if args["LoraConfig"] else None


def config_command(cfg: dict, base: dict | None = None) -> str:
    """The `sft-train` command line that runs `cfg`: the keys whose value differs from `base` (default:
    the defaults of `FIELDS`), as `--key value` overrides.

    >>> config_command(check_config({"train": "data/sft_train.jsonl", "lr": 1e-3, "validation": None}))
    'sft-train --train data/sft_train.jsonl --lr 0.001'
    """
    import yaml

    base = base or {k: f.default for k, f in FIELDS.items()}
    parts = []
    for key, value in cfg.items():
        if value != base.get(key):
            text = ",".join(value) if isinstance(value, list) else yaml.safe_dump(value).strip()
            text = text.removesuffix("\n...").strip()
            parts.append(f"--{key} {text}")
    return " ".join(["sft-train"] + parts)


def check_resume(cfg: dict) -> None:
    """Raise a `ConfigError` when `resume` names no checkpoint: true with no `checkpoint-N` folder in
    `output_dir/checkpoints`, or a folder that does not exist (before any data or model loads)."""
    resume = cfg["resume"]
    if resume is True:
        folder = Path(cfg["output_dir"]) / "checkpoints"
        if not any(folder.glob("checkpoint-*")):
            raise ConfigError([f"resume: true, but {folder} holds no checkpoint (a run saves them with save_steps)"])
    elif isinstance(resume, str) and not Path(resume).is_dir():
        raise ConfigError([f"resume: checkpoint folder {resume!r} does not exist"])


def _load_tokenizer(model_id: str):
    """The tokenizer of `model_id`, or a one-line `ConfigError` saying why it cannot load (a folder
    that does not exist, a hub id with the hub offline, no tokenizer files)."""
    from .models import load_tokenizer, model_folder

    folder = model_folder(model_id)
    looks_local = folder.startswith((".", "/", "~")) or Path(folder).exists()
    if looks_local and not Path(folder).expanduser().is_dir():
        raise ConfigError([f"model: folder {folder!r} does not exist"])
    if not looks_local and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(folder, "config.json"), str):
            raise ConfigError([f"model: {folder!r} is not a local folder, and the hub is offline (HF_HUB_OFFLINE=1) "
                               "with no cached copy: download it first, or give a folder"])
    try:
        return load_tokenizer(model_id, verbose=False)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError([f"model: cannot load a tokenizer from {folder!r}: {first}"]) from None


def print_masks(data: dict, tokenizer, n: int) -> None:
    """The first `n` labelled training examples with their trained tokens in `[[...]]` (what
    `axolotl preprocess --debug` shows): what the loss will see."""
    from .masking import show_mask

    train = data["train"]
    for i in range(min(n, len(train))):
        example = train[i]
        print(f"--- training example {i + 1} (trained tokens in [[...]]):\n{show_mask(tokenizer, example)}")


def run(cfg: dict, dry_run: bool = False, show_masks: int = 0) -> int:
    """Preflight, then (unless `dry_run`) `run_sft` and write the run folder. Returns the exit status:
    1 when preflight found errors (nothing trains), else 0. `show_masks` prints that many labelled
    examples with their trained tokens marked."""
    from transformers import AutoConfig

    from .models import model_folder

    main = is_main_process()
    device = device_of(cfg)
    if main:
        print(f"processes: {int(os.environ.get('WORLD_SIZE', '1'))}, each on {device}")
    check_resume(cfg)
    tokenizer = _load_tokenizer(cfg["model"])
    apply_template(cfg, tokenizer)
    if not tokenizer.chat_template:
        raise ConfigError([f"template: the tokenizer of {cfg['model']!r} has no chat template; set template: to a "
                           "Jinja file or the template text (e.g. a ChatML template)"])
    started = time.perf_counter()
    data = prepare(cfg, tokenizer)
    if main:
        print(f"data: {data['n_records']:,} records read, {len(data['train']):,} labelled in "
              f"{time.perf_counter() - started:.1f} s")
        for note in data["notes"]:
            print(f"data: {note}")
        print_masks(data, tokenizer, show_masks)
    model_config = AutoConfig.from_pretrained(model_folder(cfg["model"]))
    findings = run_preflight(cfg, tokenizer, data, model_config, device, verbose=main)
    skipped = write_skipped(cfg, data) if main else None
    if skipped:
        print(f"left out: every skipped or dropped record is listed in {skipped}")
    errors = [f for f in findings if f.severity == "error"]
    if errors or dry_run:
        if main:
            print(f"{len(errors)} error(s): nothing trained" if errors else "dry run: config and data OK")
        return 1 if errors else 0
    result = run_sft(cfg, data=data, verbose=True)
    if not main:
        return 0
    run_dir = Path(cfg["output_dir"])
    scores = result.scores
    written = write_run(run_dir, cfg, result.history, result.model, result.tokenizer, scores)
    last = result.val_loss
    print(f"run folder {run_dir}: {', '.join(written)}"
          + (f"; validation loss {last:.4f}" if last is not None else "")
          + (f"; chat_eval exact match {scores['exact_match']:.1%}, stop rate {scores['stop_rate']:.1%}"
             if scores else ""))
    return 0


def _positional(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """`(the command's own arguments, --key value overrides)` of `argv`: every `--key` but the
    command's flags takes the next word as its value, so `sft-train --train data.jsonl` has no config
    file (argparse alone would take `data.jsonl` for one).

    >>> _positional(["--train", "a.jsonl", "cfg.yaml", "--dry-run", "--lr", "1e-4"])
    (['cfg.yaml', '--dry-run'], ['--train', 'a.jsonl', '--lr', '1e-4'])
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    own, overrides, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--show-masks":  # the command's own option with a value
            own += argv[i:i + 2]
            i += 2
        elif argv[i].startswith("-") and argv[i] not in ("--dry-run", "--debug", "--keys", "--list", "-h", "--help"):
            overrides += argv[i:i + 2]
            i += 2
        else:
            own.append(argv[i])
            i += 1
    return own, overrides


def main(argv: list[str] | None = None) -> int:
    """The `sft-train` command line; returns the exit status (2: bad config, 1: preflight errors)."""
    ap = argparse.ArgumentParser(
        prog="sft-train", description="Fine-tune a chat model from a YAML config (keys: --keys).",
        epilog="Any config key can be overridden: --lr 1e-4 --max_steps 50. Shipped configs: "
               + ", ".join(sorted(f.stem for f in CONFIGS.glob("*.yaml"))))
    ap.add_argument("config", nargs="?", help="a YAML file, or the name of a shipped config")
    ap.add_argument("--dry-run", action="store_true",
                    help="check config and data, print preflight and memory, stop")
    ap.add_argument("--show-masks", type=int, default=0, metavar="N",
                    help="print N labelled training examples with their trained tokens in [[...]]")
    ap.add_argument("--debug", action="store_true",
                    help="with a one-line error, also print the traceback behind it")
    ap.add_argument("--keys", action="store_true", help="list every config key with its default and meaning")
    ap.add_argument("--list", action="store_true", help="list the shipped example configs")
    own, overrides = _positional(argv)
    args = ap.parse_args(own)
    if args.keys:
        for k, f in FIELDS.items():
            print(f"{k:<24} {json.dumps(f.default):<18} {f.doc}")
        return 0
    if args.list:
        for f in sorted(CONFIGS.glob("*.yaml")):
            print(f"{f.stem:<20} {f}")
        return 0
    if args.config is None and not overrides:
        ap.error("a config file is required (or --keys / --list)")
    try:
        cfg = load_config(args.config, overrides)
        status = run(cfg, dry_run=args.dry_run, show_masks=args.show_masks)
        close_process_group()  # every rank got here: leave the group before the interpreter exits
        return status
    except (ConfigError, FileNotFoundError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"sft-train: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
