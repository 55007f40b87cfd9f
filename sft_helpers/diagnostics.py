"""Pre-flight checks and symptom detectors for SFT runs (lesson 04).

Each `check_*` function looks at one thing (labels, template, data, hyperparameters, a training
history) and returns `Finding`s: a severity ("error", "warning", "info"), what was found, with numbers,
and the fix the guide suggests. `preflight(...)` runs every check that its arguments allow and prints
one report. The generation-side detectors (`looping_rate`, `format_ignored_rate`, `refusal_rate`)
measure replies from `evaluate.generate` / `chat_eval`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .evaluate import REFUSAL
from .records import conversation_problems
from .masking import IGNORE, mask_report

# the guide's learning-rate ranges, by method
LR_RANGES = {"full": (5e-6, 5e-5), "lora": (1e-4, 3e-4), "qlora": (1e-4, 3e-4)}
SEVERITIES = ("error", "warning", "info")


@dataclass
class Finding:
    """One problem (or note) found by a check."""

    severity: str
    check: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"[{self.severity}] {self.check}: {self.message}" + (f"\n    fix: {self.fix}" if self.fix else "")


# --- labels -----------------------------------------------------------------------------------

def check_labels(examples: list[dict], tokenizer, end_of_turn: str | None = None) -> list[Finding]:
    """Labelled examples (from `build_labels`): examples with nothing trained, the share of trained
    tokens (all of them: the prompt is trained too), end-of-turn tokens not trained, pad == EOS.

    >>> from sft_helpers.models import load_tokenizer
    >>> tok = load_tokenizer("tiny")
    >>> [f.check for f in check_labels([{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}], tok)]
    ['all-masked examples', 'end-of-turn not trained']
    """
    if not examples:
        return [Finding("error", "no examples", "there are no labelled examples to check",
                        "check the data and the labelling step (build_labels reports what it dropped)")]
    r = mask_report(examples, tokenizer, end_of_turn)
    out = []
    if r["all_masked"]:
        out.append(Finding("error", "all-masked examples",
                           f"{len(r['all_masked'])} of {len(examples)} examples train no token (loss NaN or 0 for them)",
                           "drop them (build_labels does) or fix the mask: is the response truncated away?"))
    if all(_unmasked(e) for e in examples):
        out.append(Finding("warning", "no loss mask", "every token is trained, prompt and template included",
                           "use completion-only or assistant-only labels (lesson 01)"))
    if not r["end_of_turn_trained"]:
        out.append(Finding("error", "end-of-turn not trained",
                           "no trained span ends with the end-of-turn token: the model never learns to stop",
                           "train the <|im_end|> / EOS token after every assistant reply"))
    elif r["spans_without_end_of_turn"]:
        out.append(Finding("warning", "end-of-turn missing in some examples",
                           f"{len(r['spans_without_end_of_turn'])} examples have trained spans not ending in end-of-turn",
                           "check truncation and the template's generation markers"))
    if r["pad_is_eos"]:
        out.append(Finding("warning", "pad == EOS", "the pad token is the EOS token: a collator that masks pads by "
                           "token id also masks every real EOS", "pad labels by position (PaddedCollator)"))
    return out


def _unmasked(example: dict) -> bool:
    """Whether every predicted token is trained at full weight (prompt-weighted examples label every
    token but weigh the prompt less: that is a loss mask too)."""
    labels = list(example["labels"])
    weights = example.get("loss_weights")
    weights = [1.0] * len(labels) if weights is None else list(weights)
    return all(lab != IGNORE and w >= 1 for lab, w in zip(labels[1:], weights[1:]))


# --- template ---------------------------------------------------------------------------------

def check_template(tokenizer, inference_template: str | None = None, messages: list[dict] | None = None) -> list[Finding]:
    """The chat template: missing; special tokens it writes that the tokenizer does not know as
    single tokens; a different template used at inference (`inference_template`); the rendered prompt
    not being a token prefix of prompt + response (`messages`, a conversation ending with the reply).

    >>> from sft_helpers.models import load_tokenizer
    >>> [f.check for f in check_template(load_tokenizer("tiny"), inference_template="### Instruction:")]
    ['template mismatch']
    """
    out = []
    template = tokenizer.chat_template
    if not template:
        return [Finding("error", "no chat template", "the tokenizer has no chat template",
                        "set one (the base model's, or ChatML) and train and infer with the same one")]
    known = set(tokenizer.get_vocab())
    for token in sorted(set(re.findall(r"<\|[a-z_]+\|>", template))):
        if token not in known:
            out.append(Finding("error", "template token not in vocabulary",
                               f"the template writes {token}, which the tokenizer splits into pieces",
                               "add it as a special token (and train the embeddings) or use the base's template"))
    if inference_template is not None and inference_template.strip() != template.strip():
        out.append(Finding("error", "template mismatch", "the prompt format used at inference differs from the "
                           "chat template used for training: expect gibberish or empty replies",
                           "render prompts with tokenizer.apply_chat_template(..., add_generation_prompt=True)"))
    if messages:
        from .masking import completion_only_labels

        if not completion_only_labels(tokenizer, messages)["prefix_ok"]:
            out.append(Finding("warning", "prompt not a token prefix",
                               "the tokenised prompt is not a prefix of the tokenised conversation (BPE merges "
                               "across the boundary)", "build masks from the whole conversation (lesson 01)"))
    return out


# --- data -------------------------------------------------------------------------------------

# MinHash near duplicates: Jaccard of 3-word shingles at least this (one word changed in ~30; on the
# course data no two distinct conversations under the same system prompt reach it)
NEAR_THRESHOLD = 0.8


def find_duplicates(records: list[dict], near_threshold: float | None = None) -> list[tuple[int, int, str]]:
    """Pairs `(earlier index, duplicate index, kind)`, one per duplicate record in index order: "exact"
    when its messages are identical to an earlier record's, "near" when identical after `normalise_text`
    (lower-cased, punctuation, "please" and extra whitespace dropped: `dedup.exact_duplicates`), and with
    `near_threshold` "minhash" when its user and assistant turns have a Jaccard similarity of at least
    that with an earlier record's under the same system prompt (`dedup.near_duplicates`: a long shared
    system prompt would make short conversations look alike). Records that are not valid conversations
    are skipped.

    >>> a = {"messages": [{"role": "user", "content": "Name a city."}, {"role": "assistant", "content": "Velm"}]}
    >>> b = {"messages": [{"role": "user", "content": "name a city  please"}, {"role": "assistant", "content": "Velm"}]}
    >>> find_duplicates([a, a, b])
    [(0, 1, 'exact'), (0, 2, 'near')]
    """
    from .dedup import exact_duplicates

    out = []
    for cluster in exact_duplicates(records).clusters:
        verbatim: dict[tuple, int] = {}
        for i in cluster:
            j = verbatim.setdefault(tuple((m["role"], m["content"]) for m in records[i]["messages"]), i)
            if i != cluster[0]:
                out.append((j, i, "exact") if j != i else (cluster[0], i, "near"))
    if near_threshold is not None:
        found = {i for _, i, _ in out}
        out += [(j, i, "minhash") for j, i in _minhash_pairs(records, near_threshold) if i not in found]
    return sorted(out, key=lambda pair: pair[1])


def _minhash_pairs(records: list[dict], threshold: float) -> list[tuple[int, int]]:
    """`(first index of its cluster, index)` for each record that
    `dedup.near_duplicates_per_system_prompt` puts in a cluster with earlier records."""
    from .dedup import near_duplicates_per_system_prompt

    return [(c[0], i) for c in near_duplicates_per_system_prompt(records, threshold).clusters for i in c[1:]]


def is_refusal(text: str) -> bool:
    """Whether a reply is a refusal (the course's refusal, or a common refusal opening)."""
    t = text.strip().lower()
    return t.startswith(("i can't", "i cannot", "i can not", "sorry, i", "i'm sorry", "i am sorry", "i won't")) or t == REFUSAL.lower()


def split_malformed(records: list) -> tuple[list[dict], list[str]]:
    """`(good, bad)`: the records that are valid chat conversations (`conversation_problems`, the checks
    of `load_conversations`), and for each other one `record #index (id ...): reason`.

    >>> split_malformed([{"messages": [{"role": "user"}]}])[1]
    ["record #0: message 0: missing 'content'; no assistant turn"]
    """
    good, bad = [], []
    for i, r in enumerate(records):
        problems = conversation_problems(r)
        if not problems:
            good.append(r)
            continue
        rid = f" (id {r['id']!r})" if isinstance(r, dict) and "id" in r else ""
        bad.append(f"record #{i}{rid}: " + "; ".join(problems))
    return good, bad


def check_data(records: list[dict], tokenizer=None, max_length: int | None = None,
               max_refusal_share: float = 0.15, near_threshold: float | None = NEAR_THRESHOLD) -> list[Finding]:
    """Chat records: malformed records (reported, then left out of the other checks), no records at
    all, duplicates (`find_duplicates`: exact, near after normalising, and similar by MinHash at
    `near_threshold`, None to skip it), the share longer than `max_length` tokens (they would be
    truncated), and the share of assistant replies that are refusals.

    >>> r = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": REFUSAL}]}
    >>> [f.check for f in check_data([r, r, {"messages": []}])]
    ['malformed records', 'duplicates', 'refusal share']
    """
    if not records:
        return [Finding("error", "no records", "there are no records to check",
                        "check the file path and any filtering that ran before")]
    out = []
    good, bad = split_malformed(records)
    if bad:
        shown = bad[:5] + ([f"... and {len(bad) - 5} more"] if len(bad) > 5 else [])
        listed = "".join(f"\n      {b}" for b in shown)
        out.append(Finding("error", "malformed records", f"{len(bad)} of {len(records)} records are not "
                           f"valid chat conversations (left out of the other checks):{listed}",
                           "fix or drop them: load_conversations(path, on_error='skip') drops them and names "
                           "each one's file:line: reason"))
    records = good
    dups = find_duplicates(records, near_threshold)
    if dups:
        kinds = {k: sum(d[2] == k for d in dups) for k in ("exact", "near", "minhash")}
        similar = (f", {kinds['minhash']} similar by MinHash: Jaccard ≥ {near_threshold:g}"
                   if kinds["minhash"] else "")
        out.append(Finding("warning", "duplicates", f"{len(dups)} of {len(records)} records duplicate an earlier one "
                           f"({kinds['exact']} exact, {kinds['near']} near{similar})",
                           "deduplicate: duplicates are trained several times per epoch and inflate overfitting"))
    if tokenizer is not None and max_length:
        lengths = [len(tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
                   for r in records]
        over = sum(n > max_length for n in lengths)
        if records and over / len(records) > 0.05:
            out.append(Finding("warning", "over-long examples", f"{over / len(records):.1%} of records exceed "
                               f"max_length={max_length} and would be truncated",
                               "raise max_length to cover > 95% of the data, or drop/split the long ones"))
    refusals = sum(is_refusal(r["messages"][-1]["content"]) for r in records)
    if records and refusals / len(records) > max_refusal_share:
        out.append(Finding("warning", "refusal share", f"{refusals / len(records):.0%} of replies are refusals "
                           f"(above {max_refusal_share:.0%}): the model will learn to refuse benign requests",
                           "rebalance: keep refusals for genuinely harmful requests, a few percent of the data"))
    return out


# --- training ---------------------------------------------------------------------------------

# learning rates within 30% of the best validation loss on every seed, measured on the ~4M-parameter
# tiny base by lesson 05 (docs/experiments.md; `hyperparameters.good_lr_range`)
SMALL_MODEL_LR_RANGES = {"full": (5.62e-4, 1.78e-3), "lora": (1.78e-3, 5.62e-3), "qlora": (1.78e-3, 5.62e-3)}


def check_hyperparameters(lr: float, method: str = "full", warmup: float = 0.05, epochs: float = 1.0,
                          model_params: int | None = None) -> list[Finding]:
    """The learning rate for the method and model size, a warmup, 1–3 epochs. Billion-parameter
    models (or `model_params` unknown): the guide's ranges (full 5e-6–5e-5, LoRA/QLoRA 1e-4–3e-4).
    Models under 100M parameters: the ranges lesson 05 measured on the 4M tiny base (full 5.6e-4–1.8e-3,
    LoRA 1.8e-3–5.6e-3). An adapter rate inside full fine-tuning's range gets a hint: LoRA's best rate
    is several times full fine-tuning's (measured in lesson 05; ~10× published).

    >>> [f.check for f in check_hyperparameters(1e-3, "full", warmup=0)]
    ['learning rate', 'no warmup']
    >>> check_hyperparameters(1e-3, "full", model_params=4_000_000)
    []
    """
    out = []
    small = model_params is not None and model_params < 100e6
    low, high = (SMALL_MODEL_LR_RANGES if small else LR_RANGES)[method]
    if not low <= lr <= high:
        where = (f"{low:g}–{high:g} for {method} on models under 100M parameters (measured in lesson 05)"
                 if small else f"the guide's {low:g}–{high:g} for {method}")
        if method != "full" and lr <= (SMALL_MODEL_LR_RANGES if small else LR_RANGES)["full"][1]:
            where += "; this is a full fine-tuning rate: adapters train best several times higher"
        out.append(Finding("warning", "learning rate", f"lr={lr:g} is outside {where}",
                           f"start inside {low:g}–{high:g}; too low: loss flat, too high: loss spikes and forgetting"))
    if not warmup:
        out.append(Finding("warning", "no warmup", "the schedule starts at the full learning rate",
                           "warm up over ~3-10% of the steps, then cosine decay"))
    if epochs > 3:
        out.append(Finding("warning", "many epochs", f"{epochs:g} epochs: SFT data is usually fit in 1-3",
                           "watch validation loss and stop at its minimum"))
    return out


def loss_curve(log_history: list[dict]) -> dict:
    """The landmarks of a run's curves, from a `Trainer.state.log_history` with both losses: the
    validation loss at the start, at its minimum (`best`, `best step`) and at the end (`final`, `last
    step`), and the training loss nearest the best step and at the end (NaN when no training loss
    was logged: a run shorter than its logging interval). A U-shaped validation loss has its best
    step strictly inside the run and a final loss above the best.

    >>> h = [{"step": s, "loss": 4 - s, "eval_loss": v} for s, v in [(0, 9), (1, 3), (2, 4)]]
    >>> loss_curve(h)["best step"], loss_curve(h)["train final"]
    (1, 2)
    >>> loss_curve([{"step": 0, "eval_loss": 9.0}, {"step": 2, "eval_loss": 8.0}])["train final"]
    nan
    """
    val = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    if not val:
        raise ValueError("loss_curve: the history has no validation loss (train with eval_steps)")
    best_step, best = min(val, key=lambda p: p[1])
    nearest = min(train, key=lambda p: abs(p[0] - best_step))[1] if train else float("nan")
    return {"start": val[0][1], "best": best, "best step": best_step, "final": val[-1][1],
            "last step": val[-1][0], "train at best": nearest, "train final": train[-1][1] if train else float("nan")}


def check_history(log_history: list[dict], window: int = 3, min_drop: float = 0.05) -> list[Finding]:
    """A `Trainer.state.log_history` (what `train_sft` returns): NaN/inf loss, a loss of exactly 0 (nothing
    trained), a spike (a later log above 1.5× the first), a training loss that does not fall (mean of the
    last `window` logs not `min_drop` below the first `window`), and validation loss rising while
    training loss falls (overfitting, with the best step).

    >>> hist = [{"step": s, "loss": 2.0} for s in range(1, 9)]
    >>> [f.check for f in check_history(hist)]
    ['loss not decreasing']
    """
    out = []
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    bad = [s for s, v in train + evals if not math.isfinite(v)]
    if bad:
        out.append(Finding("error", "NaN/inf loss", f"non-finite loss from step {bad[0]}",
                           "lower the learning rate, check for all-masked batches, use bf16 not fp16"))
        return out
    if train and all(v == 0 for _, v in train):
        out.append(Finding("error", "zero loss", "the logged training loss is 0 at every log: no token is trained (each step's loss is "
                           "0/0 = NaN, which Trainer's nan/inf filter logs as 0)",
                           "check the labels: every position is -100 (a mask covering everything)"))
        return out
    if len(train) >= 2 and max(v for _, v in train[1:]) > 1.5 * train[0][1]:
        step, peak = max(train[1:], key=lambda t: t[1])
        out.append(Finding("warning", "loss spike", f"training loss rose from {train[0][1]:.3f} to {peak:.3f} "
                           f"(step {step})", "lower the learning rate (or warm up longer)"))
    if len(train) >= 2 * window:
        first = sum(v for _, v in train[:window]) / window
        last = sum(v for _, v in train[-window:]) / window
        if last > (1 - min_drop) * first:
            out.append(Finding("error", "loss not decreasing", f"training loss {first:.3f} -> {last:.3f} (means of the first and last {window} logs)",
                               "raise a too-low learning rate (or lower one that spikes); check the mask trains "
                               "the response"))
    if len(evals) >= 3 and train:
        curve = loss_curve(log_history)
        best_step, best, final = curve["best step"], curve["best"], curve["final"]
        train_falling = len(train) >= 2 and train[-1][1] < train[0][1]
        if best_step != curve["last step"] and final > 1.05 * best and train_falling:
            out.append(Finding("warning", "overfitting", f"validation loss rose from {best:.2g} (step {best_step}) to "
                               f"{final:.2g} while training loss fell",
                               f"stop near step {best_step}: fewer epochs, deduplicate, more data"))
    return out


# --- generation -------------------------------------------------------------------------------

def is_looping(text: str, n: int = 3, repeats: int = 3) -> bool:
    """Whether a reply repeats some `n`-word sequence `repeats` times or more (a degenerate loop).

    >>> is_looping("a b c a b c a b c"), is_looping("Velm is the capital of Norland.")
    (True, False)
    """
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return any(grams.count(g) >= repeats for g in set(grams))


def looping_items(replies: list[dict]) -> list[int]:
    """1 for each reply (a dict with `text`, `stopped` from `generate`) that never stops or loops, else 0:
    per-item scores for `sft_helpers.stats.compare`.

    >>> looping_items([{"text": "a b c a b c a b c", "stopped": True}, {"text": "Velm.", "stopped": True}])
    [1, 0]
    """
    return [int((not r["stopped"]) or is_looping(r["text"])) for r in replies]


def looping_rate(replies: list[dict]) -> float:
    """Share of replies (dicts with `text`, `stopped` from `generate`) that never stop or loop."""
    return sum(looping_items(replies)) / len(replies)


def format_ignored_items(replies: list[dict]) -> list[int]:
    """1 for each reply that ignores the chat format: empty, never stopping, or writing template
    markup or another turn (`<|im_start|>`, "user:", "### Instruction"), else 0."""
    markers = ("<|im_start|>", "<|im_end|>", "user:", "assistant:", "### instruction", "### response")
    return [int((not r["text"].strip()) or (not r["stopped"]) or any(m in r["text"].lower() for m in markers))
            for r in replies]


def format_ignored_rate(replies: list[dict]) -> float:
    """Share of replies that ignore the chat format (`format_ignored_items`)."""
    return sum(format_ignored_items(replies)) / len(replies)


def refusal_items(replies: list[dict]) -> list[int]:
    """1 for each reply that is a refusal (`is_refusal`), else 0."""
    return [int(is_refusal(r["text"])) for r in replies]


def refusal_rate(replies: list[dict]) -> float:
    """Share of replies that are refusals (`is_refusal`)."""
    return sum(refusal_items(replies)) / len(replies)


# --- all together -----------------------------------------------------------------------------

def preflight(records: list[dict], tokenizer, examples: list[dict] | None = None, *, lr: float | None = None,
              method: str = "full", warmup: float = 0.05, epochs: float = 1.0, max_length: int | None = None,
              inference_template: str | None = None, log_history: list[dict] | None = None,
              model_params: int | None = None, verbose: bool = True) -> list[Finding]:
    """Run every check the arguments allow (data on `records`; labels on `examples`, else on
    completion-only labels built from `records`; template; hyperparameters when `lr` is given; the
    history when given) and print one report, errors first. Returns the findings. Malformed records
    (or none at all) are findings too, never an exception: the other checks run on the valid records.
    """
    from .masking import build_labels

    good, _ = split_malformed(records)  # check_data reports the others
    if examples is None and good:
        examples, _ = build_labels(good, tokenizer, "completion_only", on_all_masked="drop")
        examples = examples or [{"input_ids": [0], "labels": [IGNORE]}]
    findings = check_data(records, tokenizer, max_length)
    if examples is not None:
        findings += check_labels(examples, tokenizer)
    findings += check_template(tokenizer, inference_template, good[0]["messages"] if good else None)
    if lr is not None:
        findings += check_hyperparameters(lr, method, warmup, epochs, model_params)
    if log_history:
        findings += check_history(log_history)
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))
    if verbose:
        counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
        print(f"preflight: {len(records)} records, {counts['error']} errors, {counts['warning']} warnings, "
              f"{counts['info']} notes")
        for f in findings:
            print(f)
    return findings


def check_multi_turn(records: list[dict], mask: str) -> list[Finding]:
    """A warning when `mask` is "completion_only" and records have several assistant turns: only the
    last reply of each is trained; names how many earlier replies are not, and the mode that
    trains them.

    >>> turn = lambda role: {"role": role, "content": "x"}
    >>> check_multi_turn([{"messages": [turn("user"), turn("assistant")] * 3}], "completion_only")[0].check
    'multi-turn records'
    """
    replies = [sum(m.get("role") == "assistant" for m in r.get("messages", [])) for r in records]
    multi = [n for n in replies if n > 1]
    if mask != "completion_only" or not multi:
        return []
    return [Finding("warning", "multi-turn records",
                    f"{len(multi)} of {len(records)} records have several assistant turns; completion_only "
                    f"trains only the last reply of each, so {sum(n - 1 for n in multi)} earlier replies "
                    "are not trained", "mask: assistant_only trains every assistant turn")]


def plot_loss_curves(histories: dict[str, list[dict]], key: str = "eval_loss", title: str = "",
                     log_scale: bool = True):
    """One line per run: `key` ("loss" for training, "eval_loss") against the step, from
    `Trainer.state.log_history` lists (what `train_sft` returns); a log y-axis by default, so the
    end of training is not flattened by the first steps."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    for label, history in histories.items():
        points = [(h["step"], h[key]) for h in history if key in h]
        ax.plot(*zip(*points), marker="o", ms=3, label=label)
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.set_title(title)
    if histories:
        ax.legend(fontsize=8)
    else:  # a run too short to log a loss
        ax.text(0.5, 0.5, "no loss logged (fewer steps than logging_steps)", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    plt.close(fig)
    return fig
