"""TRL's own loss masks, the reference the course's label builders are checked against (TRL is a
dev dependency: `pip install trl`; Colab's install cell adds it).

TRL 1.16's `SFTTrainer` tokenises the dataset when it is constructed (`_prepare_dataset`): a
`messages` dataset with `assistant_only_loss=True` gets an `assistant_masks` column (from the
template's `{% generation %}` markers), a prompt/completion dataset a `completion_mask` column (the
completion starts where the tokenised prompt, rendered with the generation prompt, stops being a prefix
of the tokenised whole). Both are then folded into a `labels` column (-100 where the mask is 0) and
dropped, so `trainer.train_dataset` holds `input_ids` and `labels`; the mask is `labels != -100`.

Constructing the trainer is the least heavy way to get exactly what TRL trains on (no training step
runs; a tiny random Llama stands in for the model, ~0.2 s for 320 conversations). With a template that
has no `{% generation %}` markers and that TRL does not know (SmolLM2's), `assistant_only_loss=True`
raises ValueError in the constructor (`get_training_chat_template`): TRL does not patch it. For a
template it knows (`trl/chat_templates/*.jinja`) it swaps in the `_training` twin; `trl_training_masks`
replays just that step (TRL's own functions, no trainer), fast enough to check every family.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings

from .masking import IGNORE, LABELLERS, has_generation_markers


def trl_sft_config(**kwargs):
    """`trl.SFTConfig` for CPU: fp32 (TRL turns bf16 on by default, ~17x slower on CPUs without AMX),
    no reporting. Keyword arguments override, e.g. `completion_only_loss=True`."""
    from trl import SFTConfig

    kwargs = {"output_dir": tempfile.gettempdir(), "bf16": False, "fp16": False, "report_to": "none",
              "use_cpu": True, **kwargs}
    with warnings.catch_warnings():
        # SFTConfig sets the deprecated `gradient_checkpointing`: transformers' FutureWarning, not ours
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        return SFTConfig(**kwargs)


def _quiet() -> None:
    """Silence datasets' progress bars and transformers' / TRL's info logs while TRL prepares data."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)


def _tiny_model(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, intermediate_size=64))


def trl_prepared(tokenizer, rows: list[dict], **config) -> list[dict]:
    """`trainer.train_dataset` rows (`input_ids`, `labels`) for `rows`, prepared by `SFTTrainer`.

    The tokenizer is copied (the trainer sets its pad token); no truncation (`max_length=None`), no
    shuffling, no packing, so row i answers `rows[i]`.
    """
    import datasets
    from trl import SFTTrainer

    _quiet()
    tok = copy.deepcopy(tokenizer)
    with tempfile.TemporaryDirectory() as out:
        args = trl_sft_config(output_dir=out, max_length=None, packing=False, shuffle_dataset=False,
                              dataset_num_proc=None, **config)
        trainer = SFTTrainer(model=_tiny_model(len(tok)), args=args, processing_class=tok,
                             train_dataset=datasets.Dataset.from_list(rows))
        ds = trainer.train_dataset
        return [{"input_ids": list(r["input_ids"]), "labels": list(r["labels"])}
                for r in ds.select_columns(["input_ids", "labels"])]


def _masks(prepared: list[dict]) -> list[tuple[list[int], list[int]]]:
    return [(r["input_ids"], [int(lab != IGNORE) for lab in r["labels"]]) for r in prepared]


def trl_assistant_masks(tokenizer, conversations: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
    """`(input_ids, assistant_mask)` per conversation: TRL's `assistant_only_loss=True` on a `messages`
    dataset. The tokenizer's template must carry `{% generation %}` markers (or be one TRL can patch)."""
    return _masks(trl_prepared(tokenizer, [{"messages": m} for m in conversations], assistant_only_loss=True))


def trl_training_template(tokenizer) -> str | None:
    """The chat template `SFTTrainer(assistant_only_loss=True)` tokenises with: None (the tokenizer's
    own, which has `{% generation %}` markers) or TRL's `_training` twin from
    `get_training_chat_template`; TRL's ValueError when it cannot patch the template."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    return None if has_generation_markers(tokenizer.chat_template) else get_training_chat_template(tokenizer)


def trl_training_masks(tokenizer, conversations: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
    """`(input_ids, assistant_mask)` per conversation, tokenised exactly as `SFTTrainer` does with
    `assistant_only_loss=True` (`trl_training_template`, then TRL's own `_tokenize`), without building
    a trainer: ~1 ms a conversation, so every family of `trl/chat_templates` can be checked in a test.
    `trl_assistant_masks` (a real trainer) is the slower, end-to-end version; tests check they agree."""
    from trl.data_utils import _tokenize

    template = trl_training_template(tokenizer)
    out = []
    for msgs in conversations:
        enc = _tokenize(tokenizer, msgs, chat_template=template, tools=None,
                        return_assistant_tokens_mask=True)
        out.append((list(enc["input_ids"]), list(enc["assistant_masks"])))
    return out


def trl_completion_masks(tokenizer, conversations: list[list[dict]]) -> list[tuple[list[int], list[int]]]:
    """`(input_ids, completion_mask)` per conversation: TRL's prompt/completion format with
    `{"prompt": messages[:-1], "completion": [messages[-1]]}` (completion-only loss is TRL's default for it)."""
    rows = [{"prompt": m[:-1], "completion": m[-1:]} for m in conversations]
    return _masks(trl_prepared(tokenizer, rows, completion_only_loss=True))


def agreement_with_trl(tokenizer, conversations: list[list[dict]], mode: str) -> tuple[int, int]:
    """How many conversations get exactly TRL's tokens and loss mask from our builders, out of how
    many. `mode`: "completion_only" or "assistant_only". For a template without `{% generation %}`
    markers, TRL's assistant masks come from the same template with markers (`generation_template`:
    TRL's own twin or the ChatML patch, proven to render byte-identically); it raises where none is.

    >>> from sft_helpers.models import load_tokenizer
    >>> agreement_with_trl(load_tokenizer("tiny"), [[{"role": "user", "content": "Hi"},
    ...                                              {"role": "assistant", "content": "Hello."}]], "assistant_only")
    (1, 1)
    """
    reference = {"completion_only": trl_completion_masks, "assistant_only": trl_assistant_masks}[mode]
    reference_tokenizer = tokenizer
    if mode == "assistant_only" and not has_generation_markers(tokenizer.chat_template):
        # TRL refuses a template without markers (SmolLM2's): give it the byte-identical template with
        # markers (TRL's own twin, or the ChatML patch) while ours reads the shipped one
        from .masking import generation_template
        from .trl_templates import with_template

        reference_tokenizer = with_template(tokenizer, generation_template(tokenizer.chat_template)[0])
    theirs = reference(reference_tokenizer, conversations)
    same = 0
    for msgs, (ids, mask) in zip(conversations, theirs):
        ours = LABELLERS[mode](tokenizer, msgs)
        same += ours["input_ids"] == ids and [int(lab != IGNORE) for lab in ours["labels"]] == mask
    return same, len(conversations)


def trl_packed(tokenizer, conversations: list[list[dict]], max_length: int, **config) -> tuple[list[dict], object]:
    """TRL's packed training rows and its collator: `SFTTrainer` with `packing=True` (strategy "bfd",
    which switches TRL to padding-free batches) on prompt/completion rows built from `conversations`.

    Returns `(rows, collator)`: rows with `input_ids`, `labels` (completion-only) and `seq_lengths`,
    in TRL's order; `collator(rows[:k])` is the flattened batch TRL trains on.
    """
    import datasets
    from trl import SFTTrainer

    _quiet()
    tok = copy.deepcopy(tokenizer)
    rows = [{"prompt": m[:-1], "completion": m[-1:]} for m in conversations]
    with tempfile.TemporaryDirectory() as out:
        args = trl_sft_config(output_dir=out, max_length=max_length, packing=True, packing_strategy="bfd",
                              shuffle_dataset=False, dataset_num_proc=None, completion_only_loss=True, **config)
        trainer = SFTTrainer(model=_tiny_model(len(tok)), args=args, processing_class=tok,
                             train_dataset=datasets.Dataset.from_list(rows))
        ds = trainer.train_dataset.select_columns(["input_ids", "labels", "seq_lengths"])
        packed = [{k: list(r[k]) for k in ("input_ids", "labels", "seq_lengths")} for r in ds]
        return packed, trainer.data_collator


def trl_peft_model(model, tokenizer, peft_config):
    """The model TRL's `SFTTrainer` trains when given `peft_config` (a `peft.LoraConfig`): it wraps
    `model` (4-bit or not) itself. Two one-message conversations stand in for the dataset."""
    import datasets
    from trl import SFTTrainer

    _quiet()
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}] * 2
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        trainer = SFTTrainer(model=model, args=trl_sft_config(output_dir=out, gradient_checkpointing=False),
                             processing_class=copy.deepcopy(tokenizer), train_dataset=datasets.Dataset.from_list(rows),
                             peft_config=peft_config)
        return trainer.model
