"""sft_helpers: the code behind the SFT course notebooks.

Modules mirror the lessons: `world`/`conversations`/`data` (the synthetic world and its corpora,
validated loading), `tokenizer` (ChatML BPE), `models` (lanes: tiny / smollm2-135m / hub id),
`evaluate` (recall, exact match, format, stopping, echo), `pretrain` (the embedded base model),
`masking` (loss labels and their checks, lesson 01), `packing`, `collators` and `attention`
(lesson 02), `training` (`train_sft`), `lora` and `memory` (QLoRA and what fits where, lesson 03),
`diagnostics` (pre-flight checks and symptom detectors, lesson 04), `hyperparameters` (lesson 05's
sweeps, `length_coverage`, `recommend_max_length`), `dedup` (exact, MinHash and
semantic de-duplication of chat data, with precision / recall against planted duplicates),
`data_strategy` (lesson 06: quality filter, task mixes, phrasing, repetition, the data card),
`precision` (the dtype of every weight, gradient and optimizer state per lane), `lanes` (per-lane
budgets and assertions),
`templates` (chat-template families, TRL's training twins; `python -m sft_helpers.templates`),
`reference` (TRL's own masks,
packing and adapters, the oracle), `experiments` (seeded lesson runs), `bench` (benchmark commands
writing `docs/benchmarks.md`), `course` (running every notebook headless), `train` (`sft-train
CONFIG.yaml`: the helpers as a config-driven trainer, exact under data parallelism).
"""

import logging

# bitsandbytes warns, only on CPUs with AVX512-BF16, that an optional kernel package is missing, then
# uses its own CPU code: noise that would make notebook outputs depend on the CPU model.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .data import ConversationFormatError, data_path, load_conversations, load_split, load_world
from .evaluate import chat_eval, cloze_recall, generate
from .models import device_settings, load_model

__all__ = ["ConversationFormatError", "chat_eval", "cloze_recall", "data_path", "device_settings",
           "generate", "load_conversations", "load_model", "load_split", "load_world"]
__version__ = "0.1.0"
