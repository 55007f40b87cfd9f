"""sft_helpers: supervised fine-tuning helpers, and the SFT course built on them.

Two layers. **The library** (this folder's modules) is what an engineer's script imports; it never
imports the course (an import-linter contract in `pyproject.toml`, checked by the suite):

- data in: `records` (the chat-record schema, validation, reading files as `file:line: reason`),
  `paths` (the package's data folder);
- labels: `templates` / `trl_templates` (chat-template families, TRL's training twins), `masking`
  (loss labels and their self-checks), `labelling` (the same, columnar, for large sets);
- batches: `packing`, `collators`, `attention` (packed rows that cannot leak);
- models and memory: `models` (tiny / smollm2-135m / hub id; device, dtype, attention), `precision`,
  `lora`, `memory`;
- training and checks: `training` (`train_sft`), `recipe` (`run_sft`: the one pipeline behind
  `sft-train` and every lesson's runs, driven by a config),
  `diagnostics` (pre-flight checks, symptom detectors), `dedup`, `evaluate`, `stats` (a claim's
  difference with its confidence interval), `reference` (TRL's own
  masks, packing and adapters: the oracle), `progress`.

**The course** (`sft_helpers.course`) is the machinery of the lessons: the fictional world and its
data, tokenizer and base-model pre-training, the notebook runner (`sft-course`), lanes, the Colab cell,
exercises, plots, reports, the lesson experiments (05, 06) and the benchmarks.

>>> from sft_helpers import build_labels, train_sft, PackedCollator, pack_examples
"""

import logging

# bitsandbytes warns, only on CPUs with AVX512-BF16, that an optional kernel package is missing, then
# uses its own CPU code: noise that would make notebook outputs depend on the CPU model.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .attention import check_packed_batch
from .collators import PackedCollator, PaddedCollator, PaddingFreeCollator
from .dedup import exact_duplicates, near_duplicates
from .diagnostics import check_history, check_labels, preflight
from .evaluate import chat_eval, cloze_recall, generate
from .labelling import label_dataset
from .lora import add_lora
from .masking import build_labels, mask_report
from .memory import estimate_memory
from .models import device_settings, ensure_pad_token, load_model, load_tokenizer
from .packing import pack_dataset_columnar, pack_examples
from .paths import data_path
from .recipe import SFTRun, load_config, run_sft
from .records import ConversationFormatError, SkipReport, conversation_problems, load_conversations
from .stats import compare, compare_seeds
from .training import train_sft

__all__ = [
    "ConversationFormatError", "PackedCollator", "PaddedCollator", "PaddingFreeCollator", "SFTRun",
    "SkipReport", "add_lora", "build_labels", "chat_eval", "check_history", "check_labels",
    "check_packed_batch", "cloze_recall", "compare", "compare_seeds", "conversation_problems", "data_path", "device_settings",
    "ensure_pad_token", "estimate_memory", "exact_duplicates", "generate", "label_dataset",
    "load_config", "load_conversations", "load_model", "load_tokenizer", "mask_report",
    "near_duplicates", "pack_dataset_columnar", "pack_examples", "preflight", "run_sft",
    "train_sft",
]
__version__ = "0.1.0"
