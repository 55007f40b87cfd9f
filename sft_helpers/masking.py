"""Loss masks for SFT: which tokens the model is trained to predict.

Label builders over plain message lists, each returning `{"input_ids", "labels"}` (labels are -100
where no loss is taken), usable from any script or from `datasets.map`:

* `full_labels`: every token (plain causal-LM loss, as in pre-training);
* `completion_only_labels`: only what follows the prompt (the last assistant turn), found the way
  TRL finds it: the prompt rendered with the generation prompt is a token prefix of the whole;
* `assistant_only_labels`: every assistant turn of a multi-turn chat, including its end-of-turn
  token, from the template's `{% generation %}` markers or, for templates without them, from the
  rendered text's character offsets;
* `prompt_weighted_labels`: per-token `loss_weights` (prompt tokens weigh `w`, response tokens 1);
  with `w = 0` the loss equals completion-only exactly.

`build_labels` applies one of them to a dataset with a truncation policy and never lets an all-masked
example through silently. `mask_report` checks a labelled dataset; `show_mask` shows one example.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from .data import conversation_problems

IGNORE = -100
MODES = ("full", "completion_only", "assistant_only")
TRUNCATION = ("keep_start", "keep_end", "drop")


def render_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False, **kw) -> list[int]:
    """Token ids of `messages` rendered with the tokenizer's chat template."""
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                              add_generation_prompt=add_generation_prompt, **kw)["input_ids"])


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Number of leading tokens `a` and `b` share.

    >>> common_prefix_length([1, 2, 3], [1, 2, 4, 5])
    2
    """
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def full_labels(tokenizer, messages: list[dict]) -> dict:
    """Labels on every token: the plain causal-LM objective."""
    ids = render_ids(tokenizer, messages)
    return {"input_ids": ids, "labels": list(ids)}


def completion_only_labels(tokenizer, messages: list[dict]) -> dict:
    """Labels only on the final assistant turn: everything before it is -100.

    The prompt is `messages[:-1]` rendered with the generation prompt; the completion starts where
    its tokens stop being a prefix of the whole conversation's tokens (as TRL does). `prefix_ok` is
    False when they diverge early (BPE merged across the boundary, or the template renders the prompt
    differently alone): the naive `labels[:len(prompt_ids)] = -100` would then be wrong.

    >>> from sft_helpers import load_model
    >>> _, tok = load_model("tiny")
    >>> ex = completion_only_labels(tok, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes."}])
    >>> tok.decode([t for t in ex["labels"] if t != -100])
    'Yes.<|im_end|>\\n'
    """
    if messages[-1]["role"] != "assistant":
        raise ValueError("completion-only labels need a conversation that ends with an assistant turn")
    prompt = render_ids(tokenizer, messages[:-1], add_generation_prompt=True)
    ids = render_ids(tokenizer, messages)
    n = common_prefix_length(prompt, ids)
    return {"input_ids": ids, "labels": [IGNORE] * n + ids[n:], "prefix_ok": n == len(prompt)}


_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def has_generation_markers(template: str | None) -> bool:
    """Whether a chat template marks assistant text with `{% generation %}`."""
    return bool(template) and bool(_GENERATION_TAG.search(template))


def assistant_mask_from_markers(tokenizer, messages: list[dict], chat_template: str | None = None
                                ) -> tuple[list[int], list[int]]:
    """`(input_ids, mask)` from the template's `{% generation %}` markers (transformers'
    `return_assistant_tokens_mask`)."""
    template = chat_template or tokenizer.chat_template
    if not has_generation_markers(template):
        raise ValueError("the chat template has no {% generation %} markers: use assistant_mask_from_offsets "
                         "or add_generation_markers()")
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, chat_template=template,
                                        return_assistant_tokens_mask=True)
    return list(enc["input_ids"]), list(enc["assistant_masks"])


def assistant_char_spans(tokenizer, messages: list[dict], end_of_turn: str | None = None
                         ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and, for each assistant turn, the character span of its content plus the
    end-of-turn string that follows it (default: the tokenizer's EOS)."""
    end_of_turn = end_of_turn or tokenizer.eos_token
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        if not text.startswith(prefix):
            raise ValueError(f"turn {i}: the template renders the conversation so far differently on its own; "
                             "cannot locate the assistant turn by offsets")
        start = text.index(m["content"], len(prefix))
        end = start + len(m["content"])
        if text.startswith(end_of_turn, end):
            end += len(end_of_turn)
        spans.append((start, end))
    return text, spans


def assistant_mask_from_offsets(tokenizer, messages: list[dict], end_of_turn: str | None = None
                                ) -> tuple[list[int], list[int]]:
    """`(input_ids, mask)` for templates without generation markers (e.g. SmolLM2's): a token is an
    assistant token when its characters overlap an assistant span (content + end-of-turn)."""
    text, spans = assistant_char_spans(tokenizer, messages, end_of_turn)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(ts < e and te > s for s, e in spans)) for ts, te in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def assistant_only_labels(tokenizer, messages: list[dict], method: str = "auto") -> dict:
    """Labels on every assistant turn (content and end-of-turn token); system and user turns -100.

    `method`: "markers" (the template's `{% generation %}` markers), "offsets" (character offsets of
    the rendered text; works for any template) or "auto" (markers when the template has them).
    """
    if method == "auto":
        method = "markers" if has_generation_markers(tokenizer.chat_template) else "offsets"
    if method == "markers":
        ids, mask = assistant_mask_from_markers(tokenizer, messages)
    elif method == "offsets":
        ids, mask = assistant_mask_from_offsets(tokenizer, messages)
    else:
        raise ValueError(f"method must be 'auto', 'markers' or 'offsets', not {method!r}")
    return {"input_ids": ids, "labels": [t if m else IGNORE for t, m in zip(ids, mask)]}


def prompt_weighted_labels(tokenizer, messages: list[dict], prompt_weight: float) -> dict:
    """Labels on every token plus `loss_weights`: `prompt_weight` on the prompt, 1 on the completion.

    Use with `weighted_lm_loss`. `prompt_weight=0` gives exactly the completion-only loss, 1 the
    full-sequence loss; small values (0.01-0.1) are what recent papers found can help.
    """
    if not 0.0 <= prompt_weight <= 1.0:
        raise ValueError(f"prompt_weight must be in [0, 1], not {prompt_weight}")
    ex = completion_only_labels(tokenizer, messages)
    weights = [prompt_weight if lab == IGNORE else 1.0 for lab in ex["labels"]]
    return {"input_ids": ex["input_ids"], "labels": list(ex["input_ids"]), "loss_weights": weights}


def weighted_lm_loss(logits, labels, loss_weights=None, num_items: float | None = None):
    """Causal-LM cross-entropy with optional per-token weights (weights belong to the *target*
    tokens, like labels). Sums weighted token losses and divides by the total weight, or by
    `num_items` when given (to normalise over a whole gradient-accumulation step)."""
    import torch.nn.functional as F

    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE,
                         reduction="none").view_as(targets)
    w = (targets != IGNORE).float()
    if loss_weights is not None:
        w = w * loss_weights[:, 1:].float()
    total = (ce * w).sum()
    return total / (num_items if num_items is not None else w.sum().clamp(min=1e-8))


LABELLERS = {"full": full_labels, "completion_only": completion_only_labels,
             "assistant_only": assistant_only_labels}


def drop_end_of_turn(examples: list[dict], tokenizer, end_of_turn: str = "<|im_end|>") -> list[dict]:
    """Copies of labelled examples with the end-of-turn token no longer trained (its labels -100): the
    content-only mask that teaches a model never to stop (lessons 01 and 04 show the damage).

    >>> from sft_helpers.models import load_tokenizer
    >>> tok = load_tokenizer("tiny")
    >>> eot = tok.convert_tokens_to_ids("<|im_end|>")
    >>> drop_end_of_turn([{"input_ids": [5, eot], "labels": [5, eot]}], tok)[0]["labels"]
    [5, -100]
    """
    eot = tokenizer.convert_tokens_to_ids(end_of_turn)
    return [{**e, "labels": [IGNORE if t == eot else lab for t, lab in zip(e["input_ids"], e["labels"])]}
            for e in examples]


def truncate(example: dict, max_length: int, policy: str = "keep_start") -> dict | None:
    """Cut an over-long example to `max_length` tokens: keep the start (cut the end), keep the end
    (cut the start of the prompt, so the response survives), or drop it (returns None).

    >>> truncate({"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}, 3, "keep_end")
    {'input_ids': [2, 3, 4], 'labels': [-100, 3, 4]}
    """
    if policy not in TRUNCATION:
        raise ValueError(f"truncation policy must be one of {TRUNCATION}, not {policy!r}")
    if len(example["input_ids"]) <= max_length:
        return example
    if policy == "drop":
        return None
    cut = slice(None, max_length) if policy == "keep_start" else slice(-max_length, None)
    return {k: (v[cut] if isinstance(v, list) else v) for k, v in example.items()}


@dataclass
class LabelReport:
    """What `build_labels` did: examples kept (`truncated` of them cut to max_length), and each
    example dropped with its reason. `kept + len(dropped)` is the number of input records."""

    kept: int = 0
    truncated: int = 0
    dropped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"kept {self.kept}, truncated {self.truncated}, dropped {len(self.dropped)}"]
        return "\n".join(lines + [f"  {d}" for d in self.dropped[:10]]
                         + ([f"  ... and {len(self.dropped) - 10} more"] if len(self.dropped) > 10 else []))


class AllMaskedError(ValueError):
    """An example has no trained token left (the loss would be NaN or zero, silently)."""


def build_labels(records: list[dict], tokenizer, mode: str = "completion_only", max_length: int | None = None,
                 truncation: str = "keep_start", on_all_masked: str = "drop",
                 prompt_weight: float | None = None) -> tuple[list[dict], LabelReport]:
    """Label every conversation in `records` with `mode` (or prompt weights), truncate over-long ones
    by `truncation`, and drop (counted in the report) or raise (`on_all_masked="raise"`) on examples
    with no trained token, and on malformed conversations (no assistant turn, empty content, not
    ending with an assistant turn: the checks of `load_conversations`).

    Returns `(examples, report)`; each example keeps the record's `id` and `task`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if on_all_masked not in ("drop", "raise"):
        raise ValueError(f"on_all_masked must be 'drop' or 'raise', not {on_all_masked!r}")
    report, out = LabelReport(), []
    for i, rec in enumerate(records):
        rid = rec.get("id", f"#{i}")
        problems = conversation_problems(rec)
        if problems:
            reason = f"{rid}: bad conversation: " + "; ".join(problems)
            if on_all_masked == "raise":
                raise AllMaskedError(reason)
            report.dropped.append(reason)
            continue
        if prompt_weight is not None:
            ex = prompt_weighted_labels(tokenizer, rec["messages"], prompt_weight)
        else:
            ex = LABELLERS[mode](tokenizer, rec["messages"])
        ex = {k: v for k, v in ex.items() if k != "prefix_ok"}
        cut = max_length is not None and len(ex["input_ids"]) > max_length
        if cut:
            ex = truncate(ex, max_length, truncation)
            if ex is None:
                report.dropped.append(f"{rid}: longer than max_length={max_length} (policy 'drop')")
                continue
        weights = ex.get("loss_weights") or [1.0] * len(ex["labels"])
        if not any(lab != IGNORE and w > 0 for lab, w in zip(ex["labels"][1:], weights[1:])):
            reason = f"{rid}: no trained token left" + (f" after truncation to {max_length}" if max_length else "")
            if on_all_masked == "raise":
                raise AllMaskedError(reason)
            report.dropped.append(reason)
            continue
        report.truncated += cut
        out.append({"id": rid, "task": rec.get("task"), **ex})
    report.kept = len(out)
    return out, report


def mask_report(examples: list[dict], tokenizer, end_of_turn: str | None = None) -> dict:
    """Check labelled examples (dicts with `input_ids` and `labels`, or a collated batch of tensors).
    Padding is read from `attention_mask` when there is one, else from the trailing masked pad tokens.

    Returns the share of tokens trained, the examples with nothing trained, the trained spans that do
    not end with the end-of-turn token (the model would not learn to stop), whether any end-of-turn
    token is trained at all, and whether pad == EOS (a collator that masks pads then hides the EOS).
    """
    import torch

    if isinstance(examples, dict):  # a collated batch
        masks = examples.get("attention_mask")
        examples = [{"input_ids": i, "labels": l, **({"attention_mask": masks[n]} if masks is not None else {})}
                    for n, (i, l) in enumerate(zip(examples["input_ids"], examples["labels"]))]
    eot = tokenizer.convert_tokens_to_ids(end_of_turn or tokenizer.eos_token)
    total = trained = eot_trained = 0
    all_masked, no_eot = [], []
    for n, ex in enumerate(examples):
        ids, labels = (x.tolist() if isinstance(x, torch.Tensor) else list(x) for x in (ex["input_ids"], ex["labels"]))
        if "attention_mask" in ex:
            am = ex["attention_mask"]
            real = [j for j, a in enumerate(am.tolist() if isinstance(am, torch.Tensor) else am) if a]
        else:  # right padding only: a masked pad inside the text (pad == EOS) is a real token
            n_real = len(ids)
            while n_real and ids[n_real - 1] == tokenizer.pad_token_id and labels[n_real - 1] == IGNORE:
                n_real -= 1
            real = list(range(n_real))
        total += len(real)
        on = [j for j in real[1:] if labels[j] != IGNORE]  # the first token is never predicted
        trained += len(on)
        eot_trained += sum(ids[j] == eot for j in on)
        if not on:
            all_masked.append(ex.get("id", n))
            continue
        # maximal runs of trained positions; each should end at (or one token after) an end-of-turn
        runs, start = [], on[0]
        for a, b in zip(on, on[1:] + [None]):
            if b != a + 1:
                runs.append((start, a))
                start = b
        if any(eot not in ids[max(s, e - 1):e + 1] for s, e in runs):
            no_eot.append(ex.get("id", n))
    return {"examples": len(examples), "trained_share": trained / max(total, 1),
            "all_masked": all_masked, "spans_without_end_of_turn": no_eot,
            "end_of_turn_trained": eot_trained > 0,
            "pad_is_eos": tokenizer.pad_token_id == tokenizer.eos_token_id}


class MaskView:
    """One tokenised example with its trained tokens marked: HTML in Jupyter, `[[...]]` as text."""

    def __init__(self, tokenizer, input_ids, labels, weights=None):
        self.pieces = [tokenizer.decode([t]) for t in input_ids]
        self.trained = [lab != IGNORE for lab in labels]
        self.weights = weights

    def __str__(self) -> str:
        out, inside = [], False
        for piece, on in zip(self.pieces, self.trained):
            if on != inside:
                out.append("[[" if on else "]]")
                inside = on
            out.append(piece)
        return "".join(out) + ("]]" if inside else "")

    __repr__ = __str__

    def _repr_html_(self) -> str:
        spans = []
        for piece, on in zip(self.pieces, self.trained):
            style = "background:#b6f2b6;" if on else "color:#888;"
            text = html.escape(piece).replace("\n", "\u21b5<br>")
            spans.append(f'<span style="{style}border-right:1px solid #ddd;font-family:monospace">{text}</span>')
        return "<div style='line-height:1.8'>" + "".join(spans) + "</div>"


def show_mask(tokenizer, example: dict) -> MaskView:
    """View `example` (`input_ids`, `labels`) with the trained tokens highlighted."""
    return MaskView(tokenizer, list(example["input_ids"]), list(example["labels"]), example.get("loss_weights"))


GENERATION_PATCH = (  # no whitespace control: it must not change what the rest of the template renders
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}{ORIGINAL}{% endif %}"
)
# the ChatML turn expression most templates use: '<|im_start|>' + role + '\n' + content + '<|im_end|>' + '\n'
_CHATML_TURN = re.compile(
    r"""\{\{-?\s*['"]<\|im_start\|>['"]\s*\+\s*message\[['"]role['"]\]\s*\+\s*['"](?:\n|\\n)['"]\s*\+\s*"""
    r"""message\[['"]content['"]\]\s*\+\s*['"]<\|im_end\|>['"]\s*\+\s*['"](?:\n|\\n)['"]\s*-?\}\}""")


def add_generation_markers(template: str) -> str:
    """Wrap assistant content and its `<|im_end|>` in `{% generation %}` markers in a ChatML-style
    template that renders every turn with one expression (SmolLM2, Qwen2-like). Raises ValueError
    when the template is not of that shape. Check the result with `same_rendering`.
    """
    if has_generation_markers(template):
        return template
    matches = list(_CHATML_TURN.finditer(template))
    if len(matches) != 1:
        raise ValueError(f"expected one ChatML turn expression in the template, found {len(matches)}; "
                         "patch this template by hand")
    m = matches[0]
    return template[:m.start()] + GENERATION_PATCH.replace("{ORIGINAL}", m.group(0)) + template[m.end():]


def same_rendering(tokenizer, template: str, conversations: list[list[dict]]) -> int:
    """Render every conversation (and every prompt with the generation prompt) with the tokenizer's
    template and with `template`; raise on the first difference, else return how many were compared."""
    for n, msgs in enumerate(conversations):
        for gen_prompt, part in ((False, msgs), (True, msgs[:-1])):
            a = tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=gen_prompt)
            b = tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=gen_prompt,
                                              chat_template=template)
            if a != b:
                raise AssertionError(f"conversation {n}: the patched template renders differently:\n{a!r}\n{b!r}")
    return len(conversations)
