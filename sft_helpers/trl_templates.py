"""TRL's own table of chat templates: the families it ships in `trl/chat_templates/` (`qwen3.jinja`,
`llama3.jinja`, `gptoss.jinja`, ...) and their `*_training.jinja` twins with `{% generation %}`
markers, which `SFTTrainer(assistant_only_loss=True)` swaps in when the tokenizer's template is
byte-identical to an original. Read from the installed TRL, never copied here; empty without TRL.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
from pathlib import Path

# Conversations every family is checked on: a system prompt, several assistant turns, replies that start
# with whitespace or end with a newline, unicode, and replies whose text also occurs in templates
# (role names, "think", "model", "Assistant:").
PROBE_CONVERSATIONS = [
    [{"role": "system", "content": "You are terse. Answer in a few words."},
     {"role": "user", "content": "Greet me."},
     {"role": "assistant", "content": "  Hello there!"},
     {"role": "user", "content": "Which word opens a reasoning block?"},
     {"role": "assistant", "content": "think"},
     {"role": "user", "content": "Who speaks now?"},
     {"role": "assistant", "content": "assistant"},
     {"role": "user", "content": "Some unicode, please."},
     {"role": "assistant", "content": "Ünïcødé ✓ 日本語 — done.\n"}],
    [{"role": "user", "content": "Which role does Gemma give you?"},
     {"role": "assistant", "content": "model"},
     {"role": "user", "content": "And in Idefics?"},
     {"role": "assistant", "content": "\nAssistant: user"}],
]


@functools.lru_cache(maxsize=1)
def trl_families() -> dict[str, tuple[str, str | None]]:
    """`{family: (original template, training twin or None)}` read from the installed TRL's
    `chat_templates` folder; empty when TRL is not installed.

    >>> fams = trl_families()
    >>> not fams or fams["llama3"][1] is not None
    True
    """
    spec = importlib.util.find_spec("trl")  # located, not imported: importing TRL takes seconds
    if spec is None or spec.origin is None:
        return {}
    folder = Path(spec.origin).parent / "chat_templates"
    out = {}
    for f in sorted(folder.glob("*.jinja")):
        if f.stem.endswith("_training"):
            continue
        twin = f.with_name(f.stem + "_training.jinja")
        out[f.stem] = (f.read_text(encoding="utf-8"),
                       twin.read_text(encoding="utf-8") if twin.exists() else None)
    return out


def trl_family(template: str | None) -> str | None:
    """The TRL family whose original template is byte-identical to `template` (TRL's own recognition
    rule, `get_training_chat_template`), or None."""
    return next((name for name, (orig, _) in trl_families().items() if orig == template), None)


def trl_twin(template: str | None) -> tuple[str, str] | None:
    """`(family, twin)`: TRL's `_training` twin of `template` (what `SFTTrainer` trains with when
    `assistant_only_loss=True`), or None when TRL is missing, does not recognise the template, or
    ships no twin for it.

    >>> trl_twin("{{ messages }}") is None
    True
    """
    name = trl_family(template)
    twin = trl_families()[name][1] if name else None
    return (name, twin) if twin else None


def with_template(tokenizer, template: str):
    """A copy of `tokenizer` that uses `template` (the course tokenizer works with any family's
    template: that family's special markers are then plain text, which changes nothing for masks)."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    if tok.bos_token is None:  # Llama 3's template renders `bos_token`
        tok.bos_token = "<|begin_of_text|>"
    return tok
