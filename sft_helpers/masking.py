"""Loss masks for SFT: which tokens the model is trained to predict.

Label builders over plain message lists, each returning `{"input_ids", "labels"}` (labels are -100
where no loss is taken), usable from any script or from `datasets.map`:

* `full_labels`: every token (plain causal-LM loss, as in pre-training);
* `completion_only_labels`: only what follows the prompt (the last assistant turn), found the way
  TRL finds it: the prompt rendered with the generation prompt is a token prefix of the whole;
* `assistant_only_labels`: every assistant turn of a multi-turn chat, including its end-of-turn
  token(s), as TRL's `assistant_only_loss` trains it: from the template's `{% generation %}` markers,
  or TRL's `_training` twin of a template it knows, or (any other template) from sentinel spans:
  each reply located by diffing renders, never by searching its text. Every mask is self-checked
  (`assistant_mask_problems`); a wrong one raises MaskError naming the turn;
* `prompt_weighted_labels`: per-token `loss_weights` (prompt tokens weigh `w`, response tokens 1);
  with `w = 0` the loss equals completion-only exactly.

`build_labels` applies one of them to a dataset with a truncation policy and never lets an all-masked
or mis-masked example through silently. `mask_report` checks a labelled dataset; `show_mask` shows one
example.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from .records import chat_inputs, conversation_problems

IGNORE = -100
MODES = ("full", "completion_only", "assistant_only")
TRUNCATION = ("keep_start", "keep_end", "drop")


def render_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False, **kw) -> list[int]:
    """Token ids of `messages` rendered with the tokenizer's chat template (MaskError when the template
    cannot render them)."""
    try:
        enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            add_generation_prompt=add_generation_prompt, **kw)
    except Exception as e:  # the template's own refusal (TemplateError, UndefinedError, TypeError, ...)
        raise MaskError(f"the chat template cannot render this conversation ({type(e).__name__}: {e})") from e
    return list(enc["input_ids"])


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


def full_labels(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> dict:
    """Labels on every token: the plain causal-LM objective."""
    ids = render_ids(tokenizer, messages, tools=tools)
    return {"input_ids": ids, "labels": list(ids)}


def completion_only_labels(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> dict:
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
    prompt = render_ids(tokenizer, messages[:-1], add_generation_prompt=True, tools=tools)
    ids = render_ids(tokenizer, messages, tools=tools)
    n = common_prefix_length(prompt, ids)
    return {"input_ids": ids, "labels": [IGNORE] * n + ids[n:], "prefix_ok": n == len(prompt)}


_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")
# a special-token-shaped marker: <|im_end|>, <end_of_turn>, </s>, <turn|>, <｜end▁of▁sentence｜>
_MARKER = r"<[^<>\s]{1,40}>"
_MARKER_AT = re.compile(_MARKER)
_SENTINEL_EDGES = "QZXJqzxj§¤¶"


class MaskError(ValueError):
    """An assistant-only mask that cannot be built for a conversation, or that fails the self-check."""


def has_generation_markers(template: str | None) -> bool:
    """Whether a chat template marks assistant text with `{% generation %}`."""
    return bool(template) and bool(_GENERATION_TAG.search(template))


def _text_of(content) -> str:
    """The text of a message's content: a string, or the text blocks of a multimodal content list."""
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or []
                   if isinstance(b, dict) and b.get("type") == "text")


def _with_text(message: dict, text: str) -> dict:
    content = text if isinstance(message.get("content"), str) else [{"type": "text", "text": text}]
    return {**message, "content": content}


def _render(tokenizer, messages: list[dict], template: str | None, add_generation_prompt: bool = False,
            tools: list[dict] | None = None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template, tools=tools,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as e:  # the template's own refusal (TemplateError, UndefinedError, TypeError, ...)
        raise MaskError(f"the chat template cannot render this conversation ({type(e).__name__}: {e})") from e


def _common_prefix(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # binary search on slice equality: C-speed comparisons, O(log n) of them
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid - 1)
    return lo


def _common_suffix(a: str, b: str, limit: int) -> int:
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if a[len(a) - mid:] == b[len(b) - mid:] else (lo, mid - 1)
    return lo


def _sentinel(n: int, text: str) -> str:
    """A stand-in reply that no template trims or rewrites, whose first and last characters do not
    occur in `text` (so a diff cannot run into the real reply)."""
    free = [c for c in _SENTINEL_EDGES if c not in text] + ["Q", "Z"]
    return f"{free[0]}sft{n}{free[1]}"


def content_spans(tokenizer, messages: list[dict], chat_template: str | None = None,
                  tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and, for every message, the character span its content occupies in it.

    Found from renders with sentinel contents, never by searching the content's text, so replies equal
    to template text ("assistant", "think"), replies the template trims, and think blocks it adds are
    located correctly. Fast path: one render with every content a sentinel gives the template text
    around each content, which must reappear verbatim in the real render around the content (as given,
    or whitespace-trimmed). Otherwise each message is diffed alone: its span starts where the real
    render and one with only its content a sentinel stop agreeing, and ends where they agree again (a
    content the template does not render gets an empty span). The span of an assistant turn with tool
    calls runs on over the calls as the template renders them (`_with_tool_calls`).

    >>> from sft_helpers.models import load_tokenizer
    >>> text, spans = content_spans(load_tokenizer("tiny", verbose=False),
    ...     [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "assistant"}])
    >>> [text[s:e] for s, e in spans]
    ['Hi', 'assistant']
    """
    text = _render(tokenizer, messages, chat_template, tools=tools)
    stand_ins = [_sentinel(j, _text_of(m["content"])) for j, m in enumerate(messages)]
    skeleton = _render(tokenizer, [_with_text(m, s) for m, s in zip(messages, stand_ins)], chat_template,
                       tools=tools)
    spans = _spans_from_skeleton(text, skeleton, stand_ins, [_text_of(m["content"]) for m in messages])
    if spans is None:
        spans = [_differing_span(text, _render(tokenizer, messages[:j] + [_with_text(m, stand_ins[j])]
                                               + messages[j + 1:], chat_template, tools=tools))
                 for j, m in enumerate(messages)]
    return text, _with_tool_calls(tokenizer, messages, chat_template, tools, text, spans)


def _differing_span(text: str, other: str) -> tuple[int, int]:
    """The span of `text` where it differs from `other` (the same render with one thing changed)."""
    start = _common_prefix(text, other)
    return start, len(text) - _common_suffix(text, other, min(len(text), len(other)) - start)


def _calls_span(tokenizer, messages: list[dict], j: int, chat_template: str | None, tools: list[dict] | None,
                text: str) -> tuple[int, int] | None:
    """Where the tool calls of turn `j` are in `text` (its render): the span where it differs from the
    render without them; None when the template does not render them."""
    without = {k: v for k, v in messages[j].items() if k != "tool_calls"}
    try:
        other = _render(tokenizer, messages[:j] + [without] + messages[j + 1:], chat_template, tools=tools)
    except MaskError as e:
        raise MaskError(f"cannot locate the tool calls of turn {j}: the template refuses the conversation "
                        f"without them ({str(e).split('(', 1)[-1]}") from e
    # the calls are an insertion: aligned leftmost (suffix first), so that an insertion ending the way
    # the text after it begins ('<tool_call>' before '<|im_end|>') starts at its first character
    same_end = _common_suffix(text, other, min(len(text), len(other)))
    start, end = _common_prefix(text[:len(text) - same_end], other[:len(other) - same_end]), len(text) - same_end
    cut = text.rfind("<", start, end)  # a marker the diff ends inside (GLM's '<|observation|>' after calls,
    if cut >= 0 and (m := _MARKER_AT.match(text, cut)) and m.end() > end:  # '<|user|>' without them)
        end = cut
    return (start, end) if end > start else None


def _with_tool_calls(tokenizer, messages: list[dict], chat_template: str | None, tools: list[dict] | None,
                     text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`spans` with each assistant turn that makes tool calls extended over them (`_calls_span`; an
    empty content's span starts where the calls begin)."""
    out = list(spans)
    for j, m in enumerate(messages):
        if m.get("tool_calls") and (calls := _calls_span(tokenizer, messages, j, chat_template, tools, text)):
            cs, ce = spans[j]
            out[j] = (cs if _text_of(m["content"]).strip() or cs <= calls[0] else calls[0], max(ce, calls[1]))
    return out


def _spans_from_skeleton(text: str, skeleton: str, stand_ins: list[str], contents: list[str]
                         ) -> list[tuple[int, int]] | None:
    """Content spans read off `skeleton` (the render with sentinel contents), or None when `text` is not
    the skeleton with each sentinel replaced by its content, as given or whitespace-trimmed."""
    starts = [skeleton.find(s) for s in stand_ins]
    if not starts or -1 in starts or starts != sorted(starts):
        return None
    ends = [a + len(s) for a, s in zip(starts, stand_ins)]
    spans, pos = [], 0
    for j, content in enumerate(contents):
        nxt = starts[j + 1] if j + 1 < len(starts) else len(skeleton)
        before, after = skeleton[ends[j - 1] if j else 0:starts[j]], skeleton[ends[j]:nxt]
        if not text.startswith(before, pos):
            return None
        pos += len(before)
        shown = next((c for c in (content, content.strip(), content.lstrip(), content.rstrip())
                      if text.startswith(c, pos) and text.startswith(after, pos + len(c))), None)
        if shown is None:
            return None
        spans.append((pos, pos + len(shown)))
        pos += len(shown)
    return spans if text[pos:] == skeleton[ends[-1]:] else None


def _markers(tokenizer) -> re.Pattern:
    special = sorted({t for t in [tokenizer.eos_token, *tokenizer.all_special_tokens] if t},
                     key=len, reverse=True)
    return re.compile(r"\s*(?:" + "|".join([re.escape(t) for t in special] + [_MARKER]) + ")")


def _leading_markers(text: str, markers: re.Pattern) -> list[int]:
    """End offsets of the markers `text` starts with (whitespace allowed before each)."""
    ends = []
    while m := markers.match(text, ends[-1] if ends else 0):
        ends.append(m.end())
    return ends


def _end_of_turn_length(after: str, closing: str, markers: re.Pattern) -> int:
    """How many characters of `after` (what follows a reply) are its end-of-turn: the markers the template
    emits after the conversation's final reply (`closing`), as far as `after` repeats them; where it
    does not (GPT-OSS ends the final turn with <|return|>, earlier ones with <|end|>), as many markers."""
    want, have = _leading_markers(closing, markers), _leading_markers(after, markers)
    k = 0
    while k < min(len(want), len(have)) and after[:have[k]] == closing[:want[k]]:
        k += 1
    if k:
        return have[k - 1]
    n = min(len(want), len(have))
    return have[n - 1] if n else 0


def assistant_char_spans(tokenizer, messages: list[dict], chat_template: str | None = None,
                         tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and, for each assistant turn, the character span to train: what the model
    generates after the generation prompt, through the reply's end-of-turn marker(s).

    * start: where the generation prompt (`messages[:i]` rendered with `add_generation_prompt=True`)
      stops being a prefix of the conversation, as TRL's prompt-completion split does; so template
      text emitted after the generation prompt (Qwen3's empty `<think>\\n\\n</think>\\n\\n`) is trained,
      as TRL's twins train it. Where the prompt diverges from the history earlier (the template
      renders past turns differently), the span starts at the reply.
    * end: the reply (located by `content_spans`) plus the end-of-turn markers the template emits after
      it: one or several (`<|END_RESPONSE|><|END_OF_TURN_TOKEN|>`), and the ones of intermediate turns
      when they differ from the final turn's. Whitespace after the last marker is not trained.
    """
    text, spans = content_spans(tokenizer, messages, chat_template, tools)
    return text, _train_spans(tokenizer, messages, chat_template, text, spans, tools)


def _train_spans(tokenizer, messages: list[dict], chat_template: str | None, text: str,
                 spans: list[tuple[int, int]], tools: list[dict] | None = None) -> list[tuple[int, int]]:
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        return []
    last = turns[-1]
    if last == len(messages) - 1:
        closing = text[spans[last][1]:]
    else:
        sentinel = _sentinel(last, _text_of(messages[last]["content"]))
        final = _render(tokenizer, messages[:last] + [_with_text(messages[last], sentinel)], chat_template,
                        tools=tools)
        end = final.find(sentinel) + len(sentinel)
        if messages[last].get("tool_calls"):  # the closing comes after the calls
            final_turns = messages[:last] + [_with_text(messages[last], sentinel)]
            calls = _calls_span(tokenizer, final_turns, last, chat_template, tools, final)
            end = max(end, calls[1]) if calls else end
        closing = final[end:]
    markers = _markers(tokenizer)
    if not _leading_markers(closing, markers):
        raise MaskError(f"the template emits no end-of-turn marker after a final reply (it emits "
                        f"{closing[:30]!r}): the model could not learn to stop; method='trl' (TRL's twin adds one) or a template "
                        "that closes assistant turns is needed")
    out = []
    for i in turns:
        cs, ce = spans[i]
        start = cs
        if i:
            prompt = _render(tokenizer, messages[:i], chat_template, add_generation_prompt=True, tools=tools)
            cut = _common_prefix(prompt, text)
            start = cut if spans[i - 1][1] <= cut < cs else cs
        out.append((start, ce + _end_of_turn_length(text[ce:], closing, markers)))
    return out


def assistant_mask_from_offsets(tokenizer, messages: list[dict], chat_template: str | None = None,
                                tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """`(input_ids, mask)` for templates without generation markers (e.g. SmolLM2's): a token is an
    assistant token when its characters overlap a span of `assistant_char_spans`."""
    text, spans = content_spans(tokenizer, messages, chat_template, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return _mask_from_spans(enc, _train_spans(tokenizer, messages, chat_template, text, spans, tools))


def _mask_from_spans(enc, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    mask = [int(any(ts < e and te > s for s, e in spans)) for ts, te in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def assistant_mask_from_markers(tokenizer, messages: list[dict], chat_template: str | None = None,
                                tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
    """`(input_ids, mask)` from the template's `{% generation %}` markers (transformers'
    `return_assistant_tokens_mask`)."""
    template = chat_template or tokenizer.chat_template
    if not has_generation_markers(template):
        raise ValueError("the chat template has no {% generation %} markers: use assistant_mask_from_offsets "
                         "or add_generation_markers()")
    try:
        enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, chat_template=template,
                                            tools=tools, return_assistant_tokens_mask=True)
    except Exception as e:
        raise MaskError(f"the chat template cannot render this conversation ({type(e).__name__}: {e})") from e
    return list(enc["input_ids"]), list(enc["assistant_masks"])


def choose_assistant_method(tokenizer, chat_template: str | None = None) -> tuple[str, str | None, str]:
    """`(method, template, path)` that `assistant_only_labels(method="auto")` uses, as TRL's `SFTTrainer`
    would: the template's own `{% generation %}` markers; else, when TRL is installed and recognises
    the template, TRL's `_training` twin (the template TRL trains with; it may render past turns
    differently from the original, e.g. Qwen3's twin keeps their think blocks); else sentinel spans.

    >>> from sft_helpers.models import load_tokenizer
    >>> choose_assistant_method(load_tokenizer("tiny", verbose=False))[2]
    "the template's own {% generation %} markers"
    """
    from .trl_templates import trl_twin

    template = chat_template or tokenizer.chat_template
    if has_generation_markers(template):
        return "markers", template, "the template's own {% generation %} markers"
    if twin := trl_twin(template):
        return "markers", twin[1], f"TRL's twin {twin[0]}_training.jinja"
    return "offsets", template, "sentinel spans (no markers, no TRL twin)"


def assistant_mask_problems(tokenizer, messages: list[dict], example: dict, chat_template: str | None = None,
                            tools: list[dict] | None = None) -> list[str]:
    """What is wrong with an assistant-only mask (`example` with `input_ids` and `labels`), one line per
    problem, naming the turn (its index in `messages`); empty when it is right.

    The trained text of each assistant turn must be: optional template text the turn opens with (a
    think block, or the role header TRL's GPT-OSS/DeepSeek twins train), the reply exactly as given
    (whitespace at its two ends aside: templates trim), then at least one end-of-turn marker (and
    whitespace). Nothing of another message may be trained, nor any non-whitespace text outside
    assistant turns. Replies the template drops or rewrites fail, because their trained text cannot
    equal them. `chat_template` is the template the example was rendered with (default: the one
    `choose_assistant_method` picks, then the tokenizer's own).

    >>> from sft_helpers.models import load_tokenizer
    >>> tok = load_tokenizer("tiny", verbose=False)
    >>> msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    >>> ex = assistant_only_labels(tok, msgs)
    >>> assistant_mask_problems(tok, msgs, ex)
    []
    >>> assistant_mask_problems(tok, msgs, drop_end_of_turn([ex], tok)[0])
    ["turn 1: the end-of-turn is not trained: after the reply the trained text is '', then '<|im_end|>\\\\n'"]
    """
    ids = list(example["input_ids"])
    candidates = ([chat_template] if chat_template
                  else [choose_assistant_method(tokenizer)[1], tokenizer.chat_template])
    for template in candidates:
        text, spans = content_spans(tokenizer, messages, template, tools)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == ids:
            return _problems(tokenizer, messages, list(example["labels"]), text, spans, enc)
    return ["the input_ids are not the tokenised render of the chat template"]


def _problems(tokenizer, messages: list[dict], labels: list[int], text: str, spans: list[tuple[int, int]],
              enc) -> list[str]:
    # trained character runs, merged across untrained whitespace: [start, end, end of the first token,
    # start of the last token]. A token may straddle a boundary (BPE merges "><" of two markers, or a
    # user's "." with the header after it): a run's first and last token may overhang it.
    runs = []
    for (s, e), lab in zip(enc["offset_mapping"], labels):
        if lab == IGNORE or s == e:
            continue
        if runs and (s <= runs[-1][1] or not text[runs[-1][1]:s].strip()):
            runs[-1][1], runs[-1][3] = max(runs[-1][1], e), s
        else:
            runs.append([s, e, e, s])
    problems, used, markers = [], [], _markers(tokenizer)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        cs, ce = spans[i]
        shown, reply = text[cs:ce], _text_of(m["content"])
        if not shown.strip():
            calls = " (nor its tool calls: the chat template ignores 'tool_calls')" if m.get("tool_calls") else ""
            problems.append(f"turn {i}: the template does not render this reply{calls}")
            continue
        if m.get("tool_calls"):  # the span holds the reply and the calls, as the template writes them
            missing = [c["function"]["name"] for c in m["tool_calls"] if c["function"]["name"] not in shown]
            if reply.strip() not in shown or missing:
                problems.append(f"turn {i}: the template does not render {missing or 'the reply'} here: "
                                f"{shown[:60]!r}")
                continue
        elif shown.strip() != reply.strip():
            problems.append(f"turn {i}: the template rewrites this reply as {shown[:60]!r}")
            continue
        lo, hi = cs + len(shown) - len(shown.lstrip()), ce - (len(shown) - len(shown.rstrip()))
        run = next((r for r in runs if r[0] <= lo and hi <= r[1]), None)
        if run is None:
            trained = "".join(text[max(a, cs):min(b, ce)] for a, b, *_ in runs if a < ce and b > cs)
            problems.append(f"turn {i}: the reply is not fully trained (trained of it: {trained[:60]!r})")
            continue
        used.append(run)
        before = spans[i - 1][1] if i else 0
        after = spans[i + 1][0] if i + 1 < len(messages) else len(text)
        if (run[0] < before and run[2] <= before) or (run[1] > after and run[3] >= after):
            problems.append(f"turn {i}: the mask also trains a neighbouring message: "
                            f"{text[run[0]:run[1]][:80]!r}")
            continue
        tail = text[hi:run[1]]
        ends = _leading_markers(tail, markers)
        if not ends or (tail[ends[-1]:].strip() and run[3] >= hi + ends[-1]):
            problems.append(f"turn {i}: the end-of-turn is not trained: after the reply the trained text is "
                            f"{tail[:40]!r}, then {text[run[1]:run[1] + 20]!r}")
    stray = [text[r[0]:r[1]] for r in runs if r not in used and text[r[0]:r[1]].strip()]
    if stray:
        problems.append(f"text outside assistant turns is trained: {stray[0][:60]!r}")
    return problems


def assistant_only_labels(tokenizer, messages: list[dict], method: str = "auto",
                          chat_template: str | None = None, check: bool = True,
                          tools: list[dict] | None = None) -> dict:
    """Labels on every assistant turn (its reply and end-of-turn token); system and user turns -100.

    `method`: "markers" (the template's `{% generation %}` markers), "trl" (the markers of TRL's
    `_training` twin of the template), "offsets" (sentinel spans, `assistant_char_spans`: any
    template) or "auto" (the path `choose_assistant_method` names, TRL's: own markers, else TRL's twin,
    else offsets). So by default the masks are TRL's `assistant_only_loss` masks, including what TRL
    trains besides reply and end-of-turn: template text emitted after the generation prompt (Qwen3's
    empty think block), for some twins the role header (GPT-OSS, DeepSeek) or the newline after the
    end-of-turn. With `check` (default), `assistant_mask_problems` must find nothing, else MaskError
    names the turn; MaskError also when the template cannot render the conversation. `tools`: the
    function schemas given to the template; tool calls are trained as part of their turn, tool
    results (`tool` turns) are not.

    >>> from sft_helpers.models import load_tokenizer
    >>> tok = load_tokenizer("tiny", verbose=False)
    >>> msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes."}]
    >>> ex = assistant_only_labels(tok, msgs)
    >>> tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100])
    'Yes.<|im_end|>'
    """
    template = chat_template or tokenizer.chat_template
    if method == "auto":
        method, template, _ = choose_assistant_method(tokenizer, template)
    elif method == "trl":
        from .trl_templates import trl_family, trl_twin

        twin = trl_twin(template)
        if twin is None:
            name = trl_family(template)
            known = f"family {name!r}" if name else "not one of the families in trl/chat_templates"
            raise MaskError(f"TRL ships no training twin for this template ({known}): TRL's SFTTrainer "
                            "refuses assistant_only_loss for it; use method='offsets'")
        method, template = "markers", twin[1]
    if method not in ("markers", "offsets"):
        raise ValueError(f"method must be 'auto', 'markers', 'trl' or 'offsets', not {method!r}")
    if method == "markers":
        ids, mask = assistant_mask_from_markers(tokenizer, messages, template, tools)
    if check or method == "offsets":
        text, spans = content_spans(tokenizer, messages, template, tools)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if method == "offsets":
        ids, mask = _mask_from_spans(enc, _train_spans(tokenizer, messages, template, text, spans, tools))
    labels = [t if m else IGNORE for t, m in zip(ids, mask)]
    if check:
        problems = (_problems(tokenizer, messages, labels, text, spans, enc) if list(enc["input_ids"]) == ids
                    else ["the input_ids are not the tokenised render of the chat template"])
        if problems:
            raise MaskError("; ".join(problems))
    return {"input_ids": ids, "labels": labels}


def prompt_weighted_labels(tokenizer, messages: list[dict], prompt_weight: float,
                           tools: list[dict] | None = None) -> dict:
    """Labels on every token plus `loss_weights`: `prompt_weight` on the prompt, 1 on the completion.

    Use with `weighted_lm_loss`. `prompt_weight=0` gives exactly the completion-only loss, 1 the
    full-sequence loss; small values (0.01-0.1) are what recent papers found can help.
    """
    if not 0.0 <= prompt_weight <= 1.0:
        raise ValueError(f"prompt_weight must be in [0, 1], not {prompt_weight}")
    ex = completion_only_labels(tokenizer, messages, tools)
    weights = [prompt_weight if lab == IGNORE else 1.0 for lab in ex["labels"]]
    return {"input_ids": ex["input_ids"], "labels": list(ex["input_ids"]), "loss_weights": weights}


def tool_use_problems(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                      chat_template: str | None = None) -> str | None:
    """Why the chat template would silently train on less than the record holds (None when it would
    not): it ignores `tools`, or an assistant turn's `tool_calls`. One render more per tool-call turn
    (and one for tools): records without tool use cost nothing.

    >>> from sft_helpers.models import load_tokenizer
    >>> tok = load_tokenizer("tiny", verbose=False)
    >>> call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    >>> msgs = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    >>> tool_use_problems(tok, msgs) is None
    True
    >>> tool_use_problems(tok, msgs, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}")
    "the chat template ignores the tool calls of turn 1 (they would not be trained): use a template that renders 'tool_calls'"
    """
    if not tools and not any(m.get("tool_calls") for m in messages):
        return None
    text = _render(tokenizer, messages, chat_template, tools=tools)
    if tools and _render(tokenizer, messages, chat_template) == text:
        return "the chat template ignores 'tools' (the model would never see the schemas): use one that renders them"
    for i, m in enumerate(messages):
        if m.get("tool_calls") and not _calls_span(tokenizer, messages, i, chat_template, tools, text):
            return (f"the chat template ignores the tool calls of turn {i} (they would not be trained): "
                    "use a template that renders 'tool_calls'")
    return None


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


def stop_at_end_of_turn(examples: list[dict], tokenizer, end_of_turn: str = "<|im_end|>") -> list[dict]:
    """Copies of labelled examples with nothing trained after the last trained end-of-turn token: the
    tokens a chat model generates (the reply and its end-of-turn), not the newline some templates
    write after it, which completion-only labels (like TRL's) include and assistant-only ones do not.
    Lesson 01 compares every mask on these tokens.

    >>> from sft_helpers.models import load_tokenizer
    >>> tok = load_tokenizer("tiny")
    >>> eot = tok.convert_tokens_to_ids("<|im_end|>")
    >>> stop_at_end_of_turn([{"input_ids": [5, eot, 9], "labels": [5, eot, 9]}], tok)[0]["labels"]
    [5, 2, -100]
    """
    eot = tokenizer.convert_tokens_to_ids(end_of_turn)
    out = []
    for e in examples:
        ends = [i for i, (t, lab) in enumerate(zip(e["input_ids"], e["labels"])) if t == eot and lab != IGNORE]
        cut = ends[-1] + 1 if ends else len(e["labels"])
        out.append({**e, "labels": list(e["labels"][:cut]) + [IGNORE] * (len(e["labels"]) - cut)})
    return out


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
                 prompt_weight: float | None = None, on_error: str = "raise"
                 ) -> tuple[list[dict], LabelReport]:
    """Label every conversation in `records` with `mode` (or prompt weights), truncate over-long ones
    by `truncation`, and drop (counted in the report) or raise (`on_all_masked="raise"`) on examples
    with no trained token, and on malformed conversations (no assistant turn, empty content, not
    ending with an assistant turn: the checks of `load_conversations`).

    In "assistant_only" mode every mask is self-checked (`assistant_mask_problems`: each assistant
    turn's trained text is its reply plus end-of-turn, whitespace and leading template text aside);
    a failing conversation, or one the chat template cannot render, raises MaskError naming the
    conversation id and the turn (`on_error="raise"`, default) or is dropped and counted in the report
    (`on_error="skip"`). Never a silently wrong mask.

    Returns `(examples, report)`; each example keeps the record's `id` and `task`.
    """
    check_label_settings(mode, on_all_masked, on_error)
    report, out = LabelReport(), []
    for i, rec in enumerate(records):
        ex, reason, cut = label_record(rec, i, tokenizer, mode, max_length, truncation, on_all_masked,
                                       prompt_weight, on_error)
        if ex is None:
            report.dropped.append(reason)
            continue
        report.truncated += cut
        out.append(ex)
    report.kept = len(out)
    return out, report


def check_label_settings(mode: str, on_all_masked: str = "drop", on_error: str = "raise") -> None:
    """ValueError naming the setting when `build_labels` / `labelling.label_dataset` would refuse it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if on_all_masked not in ("drop", "raise"):
        raise ValueError(f"on_all_masked must be 'drop' or 'raise', not {on_all_masked!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")


def label_record(rec, i: int, tokenizer, mode: str = "completion_only", max_length: int | None = None,
                 truncation: str = "keep_start", on_all_masked: str = "drop",
                 prompt_weight: float | None = None, on_error: str = "raise", checked: bool = False
                 ) -> tuple[dict | None, str | None, bool]:
    """One record of `build_labels` (record number `i`, its id when it has none): `(example, None,
    truncated)`, or `(None, reason, False)` when it is dropped; raises where `build_labels` raises.
    The whole of `build_labels`' per-record work, shared with `labelling.label_dataset`. With
    `checked`, the record is known to pass `conversation_problems` (the caller checked it while
    reading, as `sft-train` does) and is not checked again.

    >>> from sft_helpers.models import load_tokenizer
    >>> tok = load_tokenizer("tiny", verbose=False)
    >>> label_record({"messages": [{"role": "user", "content": "Hi"}]}, 7, tok)
    (None, '#7: bad conversation: no assistant turn', False)
    """
    rid = rec.get("id", f"#{i}") if isinstance(rec, dict) else f"#{i}"  # a non-dict: bad, reported below
    problems = [] if checked else conversation_problems(rec)
    if problems:
        reason = f"{rid}: bad conversation: " + "; ".join(problems)
        if on_all_masked == "raise":
            raise AllMaskedError(reason)
        return None, reason, False
    messages, tools = chat_inputs(rec)
    try:
        unrendered = tool_use_problems(tokenizer, messages, tools)
        if unrendered:
            raise MaskError(unrendered)
        if prompt_weight is not None:
            ex = prompt_weighted_labels(tokenizer, messages, prompt_weight, tools)
        else:
            ex = LABELLERS[mode](tokenizer, messages, tools=tools)
    except MaskError as e:
        if on_error == "raise":
            raise MaskError(f"{rid}: {e}") from e
        return None, f"{rid}: {e}", False
    ex = {k: v for k, v in ex.items() if k != "prefix_ok"}
    cut = max_length is not None and len(ex["input_ids"]) > max_length
    if cut:
        ex = truncate(ex, max_length, truncation)
        if ex is None:
            return None, f"{rid}: longer than max_length={max_length} (policy 'drop')", False
    weights = ex.get("loss_weights") or [1.0] * len(ex["labels"])
    if not any(lab != IGNORE and w > 0 for lab, w in zip(ex["labels"][1:], weights[1:])):
        after = f" after truncation to {max_length}" if max_length else ""
        reason = f"{rid}: no trained token left{after}"
        if on_all_masked == "raise":
            raise AllMaskedError(reason)
        return None, reason, False
    return {"id": rid, "task": rec.get("task"), **ex}, None, bool(cut)


def trained_text(example: dict, tokenizer) -> str:
    """The text an example trains on: its tokens with a label (not -100) decoded, special tokens
    kept, separate spans joined by " | ". What a truncated example teaches is what it shows: a reply
    cut at max length is learned as a reply that ends there, with no end-of-turn.

    >>> class Tok:
    ...     def decode(self, ids, skip_special_tokens=False): return "".join(map(chr, ids))
    >>> trained_text({"labels": [-100, 104, 105, -100, 33]}, Tok())
    'hi | !'
    """
    from itertools import groupby

    spans = [list(span) for masked, span in groupby(example["labels"], key=lambda lab: lab == IGNORE)
             if not masked]
    return " | ".join(tokenizer.decode(span, skip_special_tokens=False) for span in spans)


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


# its whitespace control mirrors the replaced expression's, so nothing else renders differently
GENERATION_PATCH = (
    "{%{LEAD} if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}{ORIGINAL}{% endif {TRAIL}%}"
)
# the ChatML turn expression most templates use: '<|im_start|>' + role + '\n' + content + '<|im_end|>' + '\n',
# with message['role'] or message.role (Qwen2.5)
_ROLE, _CONTENT = r"""message(?:\[['"]role['"]\]|\.role)""", r"""message(?:\[['"]content['"]\]|\.content)"""
_CHATML_TURN = re.compile(
    r"""\{\{-?\s*['"]<\|im_start\|>['"]\s*\+\s*""" + _ROLE + r"""\s*\+\s*['"](?:\n|\\n)['"]\s*\+\s*"""
    + _CONTENT + r"""\s*\+\s*['"]<\|im_end\|>['"]\s*\+\s*['"](?:\n|\\n)['"]\s*-?\}\}""")


def _probe_difference(template: str, patched: str) -> str | None:
    """None when `patched` renders the probe conversations (`templates.PROBE_CONVERSATIONS`, with and
    without system prompt, string or text-block content; whole, and their prompt with the generation
    prompt) byte-identically to `template` and marks every assistant reply; else what differs."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from .trl_templates import PROBE_CONVERSATIONS

    def render(t, msgs, **kw):
        (text,), gen = render_jinja_template([msgs], chat_template=t, bos_token="<s>", eos_token="</s>", **kw)
        return text, gen[0] if gen else []

    compared = 0
    for conv in PROBE_CONVERSATIONS:
        for msgs in (conv, [m for m in conv if m["role"] != "system"])[:1 + (conv[0]["role"] == "system")]:
            for form in (msgs, [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in msgs]):
                for part, gen_prompt in ((form, False), (form[:-1], True)):
                    try:
                        expected, _ = render(template, part, add_generation_prompt=gen_prompt)
                    except Exception:  # the original refuses this conversation: nothing to compare
                        continue
                    try:
                        got, spans = render(patched, part, add_generation_prompt=gen_prompt,
                                            return_assistant_tokens_mask=not gen_prompt)
                    except Exception as e:
                        return f"it fails where the original renders: {type(e).__name__}: {e}"
                    if got != expected:
                        at = _common_prefix(got, expected)
                        return f"from character {at}: {expected[at:at + 30]!r} becomes {got[at:at + 30]!r}"
                    compared += 1
                    if gen_prompt:
                        continue
                    stand_ins = [_with_text(m, _sentinel(j, "")) if m["role"] == "assistant" else m
                                 for j, m in enumerate(part)]
                    got, spans = render(patched, stand_ins, return_assistant_tokens_mask=True)
                    marked = "".join(got[s:e] for s, e in spans)
                    for j, m in enumerate(part):  # every reply the template renders must be marked
                        stand_in = _sentinel(j, "")
                        if m["role"] == "assistant" and stand_in in got and stand_in not in marked:
                            return f"it does not mark the reply {_text_of(m['content'])!r}"
    return None if compared else "the original renders none of the probe conversations"


def generation_template(template: str) -> tuple[str, str]:
    """`(patched, path)`: `template` with `{% generation %}` markers around each assistant reply and its
    end-of-turn, rendering byte-identically, and the path that gave it: the template's own markers;
    TRL's `_training` twin, when TRL is installed, recognises the template and its twin renders
    identically (Qwen2.5, Llama 3, Gemma 3, Phi-3, GPT-OSS...; not Qwen3's, which keeps past think blocks);
    else a patch of the one ChatML turn expression (SmolLM2; `message['role']` or `message.role`).
    Both are checked on probe conversations (identical render, every reply marked). Raises ValueError
    saying why when no path applies: `assistant_only_labels(method="auto")` still masks such templates.

    >>> from sft_helpers.models import load_tokenizer
    >>> generation_template(load_tokenizer("tiny", verbose=False).chat_template)[1]
    'own markers'
    """
    if has_generation_markers(template):
        return template, "own markers"
    from .trl_templates import trl_twin

    refusals = []
    if twin := trl_twin(template):
        diff = _probe_difference(template, twin[1])
        if diff is None:
            return twin[1], f"TRL's twin {twin[0]}_training.jinja"
        refusals.append(f"TRL's twin {twin[0]}_training.jinja renders differently ({diff})")
    matches = list(_CHATML_TURN.finditer(template))
    if len(matches) == 1:
        m = matches[0]
        turn = m.group(0)
        patch = GENERATION_PATCH.replace("{LEAD}", "-" if turn.startswith("{{-") else "")
        patch = patch.replace("{TRAIL}", "-" if turn.endswith("-}}") else "").replace("{ORIGINAL}", turn)
        patched = template[:m.start()] + patch + template[m.end():]
        diff = _probe_difference(template, patched)
        if diff is None:
            return patched, "ChatML patch"
        refusals.append(f"the ChatML patch renders differently ({diff})")
    else:
        refusals.append(f"expected one ChatML turn expression in the template, found {len(matches)}")
    raise ValueError("no byte-identical {% generation %} version of this template: " + "; ".join(refusals)
                     + ". assistant_only_labels(method='auto') still masks it (TRL's twin or sentinel spans)")


def add_generation_markers(template: str) -> str:
    """`template` with `{% generation %}` markers, rendering byte-identically: `generation_template`'s
    result (which also says which path it took). Check the result on your data with `same_rendering`.
    """
    return generation_template(template)[0]


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
