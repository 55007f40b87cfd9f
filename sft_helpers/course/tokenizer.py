"""The course tokenizer: byte-level BPE trained on the generated corpus, with ChatML special tokens.

Special tokens: `<|endoftext|>` separates pre-training documents, `<|im_start|>` / `<|im_end|>` frame
chat turns (`<|im_end|>` is the EOS a chat model must learn to emit), `<|pad|>` pads and is *not* EOS,
so masking padding can never hide the real end of a turn. The chat template renders ChatML and wraps
every assistant reply, including its `<|im_end|>`, in `{% generation %}` markers so that
`apply_chat_template(..., return_assistant_tokens_mask=True)` works. For tool use it lists the `tools`
schemas in a system turn and writes an assistant turn's `tool_calls` as
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` inside the reply (so they are trained);
`tool` turns are rendered like any other role (and not trained).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

CHATML_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n# Tools\\nCall a function as <tool_call>{\\\"name\\\": ..., "
    "\\\"arguments\\\": {...}}</tool_call>.\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] }}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- set call = call.function if call.function is defined else call %}"
    "{%- if message['content'] or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>{\\\"name\\\": \\\"' + call.name + '\\\", \\\"arguments\\\": ' }}"
    "{{- call.arguments | tojson }}{{- '}</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it as a transformers tokenizer with the
    ChatML special tokens and chat template.

    >>> tok = train_tokenizer(["The capital of Norland is Velmora."] * 10, vocab_size=300)
    >>> tok.eos_token, tok.pad_token
    ('<|im_end|>', '<|pad|>')
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|pad|>",
                                  unk_token=None, bos_token=None,
                                  additional_special_tokens=["<|endoftext|>", "<|im_start|>"])
    tok.chat_template = CHATML_TEMPLATE
    tok.model_max_length = 1024
    return tok


def save_tokenizer(tok: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Save so that `AutoTokenizer.from_pretrained(path)` loads it offline."""
    tok.save_pretrained(str(path))
