"""Self-checking exercises for the notebooks: each `check_…` runs the learner's answer (a number or a
function) on cases with known answers and says what is wrong, or that it is right.

A check returns a `Verdict`, shown as one line, "✓ ..." or "✗ not yet: <what is wrong>", and true only
when the answer is right; it never raises on a wrong answer (a learner's cell keeps running), so a
notebook's solution cell asserts it.
An unanswered exercise (`None`, or a function returning `None`) is "not attempted yet".

>>> check_bytes_per_parameter(16)
✓ 4 (fp32 weight) + 4 (fp32 gradient) + 8 (two fp32 AdamW moments) = 16 bytes per parameter
>>> bool(check_bytes_per_parameter(8))
False
"""

from __future__ import annotations

import random
from typing import Callable

import torch

from ..masking import IGNORE, completion_only_labels, weighted_lm_loss


class Verdict:
    """What a check found: true when the answer is right; shown as one line in a notebook."""

    def __init__(self, ok: bool, message: str):
        self.ok, self.message = ok, message

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return ("✓ " if self.ok else "✗ not yet: ") + self.message


def _verdict(ok: bool, message: str) -> Verdict:
    return Verdict(ok, message)


def _call(fn: Callable, *args):
    """`fn(*args)`, or the exception it raised (the learner sees it as a verdict, not a traceback)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported to the learner
        return e


# --- 00: the tour ------------------------------------------------------------------------------

def template_overhead(tokenizer, content: str = "Hi") -> int:
    """Tokens the chat template adds around one user message (with the generation prompt).

    >>> from sft_helpers import load_model
    >>> template_overhead(load_model("tiny")[1])
    11
    """
    from ..masking import render_ids

    ids = render_ids(tokenizer, [{"role": "user", "content": content}], add_generation_prompt=True)
    return len(ids) - len(tokenizer(content, add_special_tokens=False)["input_ids"])


def check_template_overhead(answer: int | None, tokenizer) -> Verdict:
    """Exercise: how many tokens does the chat template add around the user message "Hi", with the
    generation prompt that asks the assistant to answer?"""
    if answer is None:
        return _verdict(False, "not attempted yet (set `answer`)")
    want = template_overhead(tokenizer)
    if answer == want:
        return _verdict(True, f"{want} tokens of template around the message's own tokens")
    if answer == want - len(tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]):
        return _verdict(False, f"{answer} leaves out the generation prompt (add_generation_prompt=True)")
    return _verdict(False, f"{answer} is not it: render with apply_chat_template, count tokens, subtract the "
                           "message's own tokens")


def check_max_length(answer: int | None, lengths: list[int], coverage: float = 0.95) -> Verdict:
    """Exercise: the smallest `max_length` that keeps `coverage` of the conversations whole."""
    if answer is None:
        return _verdict(False, "not attempted yet (set `answer`)")
    covered = sum(n <= answer for n in lengths) / len(lengths)
    if covered < coverage:
        return _verdict(False, f"max_length={answer} keeps only {covered:.1%} whole (want >= {coverage:.0%})")
    smaller = sum(n <= answer - 1 for n in lengths) / len(lengths)
    if smaller >= coverage:
        return _verdict(False, f"max_length={answer} works, but {answer - 1} does too: find the smallest")
    return _verdict(True, f"max_length={answer} keeps {covered:.1%} of the conversations whole")


# --- 01: masking -------------------------------------------------------------------------------

def check_completion_only(fn: Callable, tokenizer, conversations: list[list[dict]]) -> Verdict:
    """Exercise: `fn(tokenizer, messages) -> labels` with -100 on everything but the last assistant
    turn (and its end-of-turn token), compared token by token with `completion_only_labels`."""
    for i, messages in enumerate(conversations):
        want = completion_only_labels(tokenizer, messages)["labels"]
        got = _call(fn, tokenizer, messages)
        if got is None:
            return _verdict(False, "not attempted yet (the function returns None)")
        if isinstance(got, Exception):
            return _verdict(False, f"conversation {i} raised {type(got).__name__}: {got}")
        got = list(got)
        if len(got) != len(want):
            return _verdict(False, f"conversation {i}: {len(got)} labels for {len(want)} tokens")
        if got != want:
            t = next(j for j, (a, b) in enumerate(zip(got, want)) if a != b)
            token = tokenizer.decode([completion_only_labels(tokenizer, messages)["input_ids"][t]])
            what = "trained but should be -100" if want[t] == IGNORE else "-100 but should be trained"
            return _verdict(False, f"conversation {i}, token {t} ({token!r}) is {what}")
    return _verdict(True, f"your labels equal completion_only_labels on all {len(conversations)} conversations")


def _loss_cases(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    cases = []
    for rows, length in ((1, 6), (3, 9), (2, 5)):
        logits = torch.randn(rows, length, 11, generator=g)
        labels = torch.randint(0, 11, (rows, length), generator=g)
        labels[:, : length // 2] = IGNORE  # a masked prompt
        cases.append((logits, labels))
    return cases


def check_masked_loss(fn: Callable) -> Verdict:
    """Exercise: `fn(logits, labels) -> loss`, the causal-LM loss a model trains on: position t
    predicts token t+1, only labels != -100 count, mean over those tokens."""
    import torch.nn.functional as F

    for i, (logits, labels) in enumerate(_loss_cases()):
        got = _call(fn, logits, labels)
        if got is None:
            return _verdict(False, "not attempted yet (the function returns None)")
        if isinstance(got, Exception):
            return _verdict(False, f"case {i} raised {type(got).__name__}: {got}")
        want = weighted_lm_loss(logits, labels)
        if torch.isclose(torch.as_tensor(got, dtype=torch.float32), want, atol=1e-5):
            continue
        unshifted = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=IGNORE)
        every = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].clamp(min=0).reshape(-1))
        if torch.isclose(torch.as_tensor(got, dtype=torch.float32), unshifted, atol=1e-5):
            return _verdict(False, "not shifted: the logits at position t predict the label at t+1")
        if torch.isclose(torch.as_tensor(got, dtype=torch.float32), every, atol=1e-5):
            return _verdict(False, "the -100 labels are counted: leave them out (ignore_index=-100)")
        return _verdict(False, f"case {i}: {float(got):.4f}, expected {want.item():.4f}")
    return _verdict(True, "shifted, masked, averaged over target tokens: the model's own loss")


# --- 02: packing -------------------------------------------------------------------------------

_SEQ_CASES = ([3], [4, 3, 5], [1, 1, 2], [6, 2])


def check_position_ids(fn: Callable) -> Verdict:
    """Exercise: `fn(seq_lengths) -> position_ids` for one packed row: 0, 1, ... restarting at each
    sample."""
    for lengths in _SEQ_CASES:
        want = [p for n in lengths for p in range(n)]
        got = _call(fn, list(lengths))
        if got is None:
            return _verdict(False, "not attempted yet (the function returns None)")
        if isinstance(got, Exception):
            return _verdict(False, f"seq_lengths={lengths} raised {type(got).__name__}: {got}")
        if len(lengths) > 1 and list(got) == list(range(sum(lengths))):
            return _verdict(False, f"seq_lengths={lengths}: positions never restart: every sample would "
                                   "see the ones before it")
        if list(got) != want:
            return _verdict(False, f"seq_lengths={lengths}: got {list(got)}, expected {want}")
    return _verdict(True, "positions restart at 0 for every sample")


def check_cu_seq_lens(fn: Callable) -> Verdict:
    """Exercise: `fn(seq_lengths) -> cu_seq_lens`, the cumulative sample boundaries flash-attn's
    varlen kernel takes: [0, n1, n1 + n2, ...]."""
    for lengths in _SEQ_CASES:
        want = [0]
        for n in lengths:
            want.append(want[-1] + n)
        got = _call(fn, list(lengths))
        if got is None:
            return _verdict(False, "not attempted yet (the function returns None)")
        if isinstance(got, Exception):
            return _verdict(False, f"seq_lengths={lengths} raised {type(got).__name__}: {got}")
        got = [int(x) for x in got]
        if got == want[1:]:
            return _verdict(False, f"seq_lengths={lengths}: {got} misses the leading 0")
        if got != want:
            return _verdict(False, f"seq_lengths={lengths}: got {got}, expected {want}")
    return _verdict(True, "cu_seq_lens = [0] + running sum of the lengths")


def check_packer(fn: Callable, max_length: int = 64, n: int = 200, seed: int = 0) -> Verdict:
    """Exercise: `fn(lengths, max_length) -> rows` (lists of sample indices), e.g. first-fit
    decreasing. Every sample exactly once, no row over `max_length`, and no more rows than
    `pack_ffd` needs."""
    from ..packing import pack_ffd

    rng = random.Random(seed)
    lengths = [min(max_length, int(rng.expovariate(1 / 12)) + 1) for _ in range(n)]
    rows = _call(fn, list(lengths), max_length)
    if rows is None:
        return _verdict(False, "not attempted yet (the function returns None)")
    if isinstance(rows, Exception):
        return _verdict(False, f"raised {type(rows).__name__}: {rows}")
    placed = sorted(i for row in rows for i in row)
    if placed != list(range(n)):
        missing = sorted(set(range(n)) - set(placed))
        twice = sorted({i for i in placed if placed.count(i) > 1})
        return _verdict(False, f"every sample exactly once: missing {missing[:5]}, twice {twice[:5]}")
    full = next((r for r in rows if sum(lengths[i] for i in r) > max_length), None)
    if full is not None:
        return _verdict(False, f"row {full[:6]}... holds {sum(lengths[i] for i in full)} > {max_length} tokens")
    best = len(pack_ffd(lengths, max_length).bins)
    if len(rows) > best:
        return _verdict(False, f"{len(rows)} rows where first-fit decreasing needs {best}: sort longest first, "
                               "then put each sample in the first row with room")
    eff = sum(lengths) / (len(rows) * max_length)
    return _verdict(True, f"{n} samples in {len(rows)} rows of {max_length}, {eff:.1%} full")


# --- 03: QLoRA ---------------------------------------------------------------------------------

def check_lora_parameters(fn: Callable) -> Verdict:
    """Exercise: `fn(in_features, out_features, r) -> int`, the parameters LoRA trains beside one
    linear layer (A is r x in, B is out x r)."""
    for shape in ((4096, 4096, 16), (4096, 11008, 8), (256, 64, 4)):
        i, o, r = shape
        got = _call(fn, *shape)
        if got is None:
            return _verdict(False, "not attempted yet (the function returns None)")
        if isinstance(got, Exception):
            return _verdict(False, f"{shape} raised {type(got).__name__}: {got}")
        if got == i * o:
            return _verdict(False, f"{shape}: {got} is the frozen weight, not the adapter")
        if got != r * (i + o):
            return _verdict(False, f"{shape}: got {got}, expected A ({r}x{i}) + B ({o}x{r}) = {r * (i + o)}")
    return _verdict(True, "r x (in + out): 131,072 for a 4096 x 4096 layer at r=16, 0.8% of its weights")


def check_bytes_per_parameter(answer: float | None) -> Verdict:
    """Exercise: bytes per parameter for full fine-tuning with AdamW in mixed precision (the course's
    default: fp32 master weights, gradients and moments), before activations."""
    if answer is None:
        return _verdict(False, "not attempted yet (set `answer`)")
    if answer == 16:
        return _verdict(True, "4 (fp32 weight) + 4 (fp32 gradient) + 8 (two fp32 AdamW moments) = 16 bytes "
                              "per parameter")
    hints = {8: "8 is pure bf16 (no fp32 master copy): the default keeps fp32",
             12: "AdamW keeps two moments per parameter, not one",
             4: "the weights alone: add the gradient and AdamW's two moments",
             2: "the bf16 weights alone: training keeps fp32 weights, gradients and two moments"}
    return _verdict(False, hints.get(answer, f"{answer} is not it: weight + gradient + AdamW's two moments, fp32"))


# --- 04: troubleshooting -----------------------------------------------------------------------

def _histories() -> list[tuple[list[dict], int]]:
    u = [4.0, 3.1, 2.6, 2.4, 2.5, 2.7, 3.0]
    falling = [3.0, 2.5, 2.2, 2.0]
    tie = [3.0, 2.0, 2.0, 2.5]
    cases = []
    for losses in (u, falling, tie):
        history = []
        for k, v in enumerate(losses):
            history.append({"loss": 5.0 - k * 0.3, "step": k * 10})
            history.append({"eval_loss": v, "step": k * 10})
        cases.append((history, 10 * losses.index(min(losses))))
    return cases


def check_best_step(fn: Callable) -> Verdict:
    """Exercise: `fn(log_history) -> step` where the validation loss (`eval_loss`) was lowest (the
    first such step on a tie): where early stopping would keep the weights."""
    for i, (history, want) in enumerate(_histories()):
        got = _call(fn, [dict(h) for h in history])
        if got is None:
            return _verdict(False, "not attempted yet (the function returns None)")
        if isinstance(got, Exception):
            return _verdict(False, f"history {i} raised {type(got).__name__}: {got}")
        if got == history[-1]["step"] and got != want:
            return _verdict(False, f"history {i}: {got} is the last step; look for the lowest eval_loss")
        if got != want:
            return _verdict(False, f"history {i}: got step {got}, expected {want} (only entries with eval_loss "
                                   "count; the training loss keeps falling)")
    return _verdict(True, "the lowest validation loss, found in log_history")


_LOOPS = [("They live in Foufer.", False), ("- a\n- b\n- c", False),
          ("They are 45. They are 45. They are 45.", True),
          ("They live in X, in X, in X, in X and more", True), ("The the cat sat.", False),
          ("Tumukin has 4 cities, and its capital is Baipar. Baipar has 835,000 people.", False)]


def check_is_looping(fn: Callable) -> Verdict:
    """Exercise: `fn(text) -> bool`, True when a reply repeats one phrase (3+ words) three times."""
    for text, want in _LOOPS:
        got = _call(fn, text)
        if got is None:
            return _verdict(False, "not attempted yet (the function returns None)")
        if isinstance(got, Exception):
            return _verdict(False, f"{text!r} raised {type(got).__name__}: {got}")
        if bool(got) != want:
            return _verdict(False, f"{text!r} should be {'looping' if want else 'fine'}")
    return _verdict(True, f"right on all {len(_LOOPS)} replies")


# --- 05: hyperparameters -----------------------------------------------------------------------

def check_lr_at_step(fn: Callable) -> Verdict:
    """Exercise: `fn(step, total_steps, warmup_steps, peak_lr) -> lr` for linear warmup from 0 to
    `peak_lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`; checked against
    transformers' own `get_cosine_schedule_with_warmup`.

    >>> import math
    >>> check_lr_at_step(lambda s, t, w, lr: lr * s / w if s < w
    ...                  else lr * 0.5 * (1 + math.cos(math.pi * (s - w) / (t - w))))
    ✓ linear warmup then cosine decay, as transformers computes it
    """
    from transformers import get_cosine_schedule_with_warmup

    for total, warmup, peak in ((100, 10, 1e-3), (60, 3, 2e-4), (50, 0, 3e-3)):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
        schedule = get_cosine_schedule_with_warmup(optimizer, warmup, total)
        for step in range(total + 1):
            want = peak * schedule.lr_lambdas[0](step)
            got = _call(fn, step, total, warmup, peak)
            if got is None:
                return _verdict(False, "not attempted yet (the function returns None)")
            if isinstance(got, Exception):
                return _verdict(False, f"step {step} of {total} (warmup {warmup}) raised {type(got).__name__}: {got}")
            if abs(got - want) > 1e-9 + 1e-6 * peak:
                hint = ("during warmup the rate grows linearly from 0" if step < warmup else
                        "the cosine starts after the warmup, at the peak, and reaches 0 at the last step")
                return _verdict(False, f"step {step} of {total} (warmup {warmup}, peak {peak:g}): got {got:.6g}, "
                                       f"expected {want:.6g}; {hint}")
    return _verdict(True, "linear warmup then cosine decay, as transformers computes it")


def check_accumulation_steps(fn: Callable) -> Verdict:
    """Exercise: `fn(target_batch, per_device_batch, processes) -> gradient accumulation steps` so
    that per_device_batch × processes × steps reaches `target_batch` (the fewest steps that do).

    >>> check_accumulation_steps(lambda t, b, p: -(-t // (b * p)))
    ✓ effective batch = per-device batch × processes × accumulation steps
    """
    import math

    for target, per_device, processes in ((64, 8, 1), (128, 4, 2), (100, 16, 1), (256, 32, 8), (8, 16, 1)):
        want = max(1, math.ceil(target / (per_device * processes)))
        got = _call(fn, target, per_device, processes)
        if got is None:
            return _verdict(False, "not attempted yet (the function returns None)")
        if isinstance(got, Exception):
            return _verdict(False, f"({target}, {per_device}, {processes}) raised {type(got).__name__}: {got}")
        if not isinstance(got, int) or isinstance(got, bool):
            return _verdict(False, f"({target}, {per_device}, {processes}): got {got!r}; steps are a whole number")
        if got == max(1, math.ceil(target / per_device)) and got != want:
            return _verdict(False, f"({target}, {per_device}, {processes}): got {got}, expected {want}; each of "
                                   f"the {processes} processes contributes its own batch to every step")
        if got != want:
            return _verdict(False, f"({target}, {per_device}, {processes}): got {got}, expected {want}")
    return _verdict(True, "effective batch = per-device batch × processes × accumulation steps")


# --- lesson 06 -----------------------------------------------------------------------------------

def check_json_reply(fn: Callable) -> Verdict:
    """Exercise: `fn(reply) -> bool`, whether a JSON-family reply is well formed (parses to an object
    with exactly the keys age, city and job), compared with `data_strategy.format_problem` on the
    noisy set's JSON replies (clean, broken and cut ones).

    >>> import json
    >>> check_json_reply(lambda s: s.startswith("{") and s.endswith("}"))
    ✗ not yet: "{'age': 19, 'city': 'Drope', 'job': 'doctor'}" is not JSON (single quotes), but your check passes it
    """
    from .data import load_noisy_train
    from .data_strategy import format_problem

    replies = [r["messages"][-1]["content"] for r in load_noisy_train() if r["task"] == "json"][:300]
    for reply in replies:
        got = _call(fn, reply)
        if got is None:
            return _verdict(False, "not attempted yet (the function returns None)")
        if isinstance(got, Exception):
            return _verdict(False, f"{reply!r} raised {type(got).__name__}: {got}")
        want = format_problem("json", reply) is None
        if bool(got) != want:
            why = " (single quotes)" if "'" in reply else ""
            return _verdict(False, f"{reply!r} is {'' if want else 'not '}JSON{why}, but your check "
                                   f"{'fails' if want else 'passes'} it")
    return _verdict(True, f"your check agrees with format_problem on all {len(replies)} JSON replies")


def check_normalise(fn: Callable) -> Verdict:
    """Exercise: `fn(text) -> str`, a normalisation for exact de-duplication: every planted "near"
    copy of the training split (case, spacing, "please" changed) must normalise like its original,
    and no two different training conversations may.

    >>> from sft_helpers.dedup import normalise_text
    >>> check_normalise(normalise_text)
    ✓ all 60 near copies match their originals; the 2,400 distinct conversations stay distinct
    """
    from .data import load_duplicates, load_split

    probe = _call(fn, "Name a city, please.")
    if probe is None:
        return _verdict(False, "not attempted yet (the function returns None)")
    if isinstance(probe, Exception):
        return _verdict(False, f"'Name a city, please.' raised {type(probe).__name__}: {probe}")
    records = {r["id"]: r for r in load_split("train")}

    def key(record):
        return tuple(fn(m["content"]) for m in record["messages"])

    table = load_duplicates()
    for row in (t for t in table if t["kind"] == "near"):
        got = _call(key, records[row["id"]])
        if isinstance(got, Exception):
            return _verdict(False, f"{row['id']} raised {type(got).__name__}: {got}")
        if got != key(records[row["duplicate_of"]]):
            text = records[row["id"]]["messages"][-2]["content"]
            return _verdict(False, f"{text!r} should normalise like its original")
    copies = {t["id"] for t in table}
    keys: dict[tuple, str] = {}
    for rid, record in records.items():
        if rid in copies:
            continue
        other = keys.setdefault(key(record), rid)
        if other != rid:
            return _verdict(False, f"{rid} and {other} are different conversations but normalise the same")
    return _verdict(True, f"all {sum(t['kind'] == 'near' for t in table)} near copies match their originals; "
                          f"the {len(keys):,} distinct conversations stay distinct")
