"""Generation and the course's measurements: cloze recall, chat exact match, format, stopping.

Every notebook number about model behaviour comes from these functions, so the definitions are in
one place:

* **cloze recall**: the base model completes a plain-text prompt ("The capital of X is") and the
  greedy continuation starts with the right answer;
* **stop rate**: a chat generation ends with the chat EOS (`<|im_end|>`) within the token budget;
* **exact match**: the reply, up to the chat EOS, equals the reference reply;
* **format compliance**: the reply has the shape its task asks for (JSON with the right keys, a
  Markdown list, one word...), whatever its content.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

import torch

from .progress import progress_bar

REFUSAL = "I can't help with that."  # the refusal the course's data teaches and `refusal` items expect


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, batch_size: int = 32,
             progress: bool = False, **decoding) -> list[dict]:
    """Greedy generation for a list of already-rendered prompt strings, batched with left padding;
    `decoding`: more `model.generate` settings (`repetition_penalty=1.3`, `no_repeat_ngram_size=3`).

    Returns one dict per prompt: `text` (decoded continuation, special tokens dropped, cut at the chat
    EOS) and `stopped` (whether the chat EOS was generated).

    >>> from sft_helpers import load_model
    >>> m, t = load_model("tiny")
    >>> generate(m, t, ["The capital of"], max_new_tokens=3)[0].keys()
    dict_keys(['text', 'stopped'])
    """
    eos_ids = {tokenizer.eos_token_id}
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    out = []
    try:
        batches = range(0, len(prompts), batch_size)
        for start in progress_bar(batches, desc="generate", disable=not progress):
            enc = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=list(eos_ids), pad_token_id=tokenizer.pad_token_id, **decoding)
            for row in gen[:, enc["input_ids"].shape[1]:].tolist():
                cut = next((i for i, t in enumerate(row) if t in eos_ids), None)
                text_ids = row if cut is None else row[:cut]
                out.append({"text": tokenizer.decode(text_ids, skip_special_tokens=True),
                            "stopped": cut is not None})
    finally:
        tokenizer.padding_side = side
    return out


def chat_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 64) -> dict:
    """One greedy assistant reply to `messages` (rendered with the tokenizer's chat template and the
    generation prompt), stopping at the chat EOS: `{"text", "stopped"}`.

    >>> from sft_helpers import load_model
    >>> m, t = load_model("tiny")
    >>> chat_reply(m, t, [{"role": "user", "content": "Hi"}], max_new_tokens=2)["stopped"] in (True, False)
    True
    """
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return generate(model, tokenizer, [prompt], max_new_tokens=max_new_tokens)[0]


def cloze_recall(model, tokenizer, probes: list[dict], progress: bool = False) -> dict:
    """Share of plain-text probes whose greedy continuation starts with the answer, overall and per
    relation, and `hits` (1 or 0 per probe, in order, for `sft_helpers.stats.compare`). `probes` come
    from `sft_helpers.course.world.cloze_probes`."""
    gens = generate(model, tokenizer, [p["prompt"] for p in probes], max_new_tokens=8,
                    batch_size=64, progress=progress)
    hits = [int(g["text"].strip().startswith(p["answer"])) for p, g in zip(probes, gens)]
    per: dict[str, list[int]] = defaultdict(list)
    for p, hit in zip(probes, hits):
        per[p["relation"]].append(hit)
    return {"recall": sum(hits) / len(hits), "n": len(hits),
            "per_relation": {k: sum(v) / len(v) for k, v in sorted(per.items())}, "hits": hits}


def format_ok(task: str, reply: str, reference: str) -> bool:
    """Whether `reply` has the shape that `task` asks for, regardless of whether it is correct."""
    reply = reply.strip()
    if task == "json":
        try:
            obj = json.loads(reply)
        except json.JSONDecodeError:
            return False
        return isinstance(obj, dict) and set(obj) == set(json.loads(reference))
    if task == "markdown_list":
        lines = reply.splitlines()
        return bool(lines) and all(line.startswith("- ") for line in lines)
    if task == "one_word":
        return len(reply.split()) == 1 and reply[-1].isalnum()
    if task == "refusal":
        return reply == REFUSAL
    if task == "transform":  # the shape of the reference: a number, a list of numbers, a word in capitals
        shape = next(p for p in (r"\d+", r"\d+(, \d+)+", r"[A-Z]+", r".+") if re.fullmatch(p, reference))
        return re.fullmatch(shape, reply) is not None
    # knowledge, multi_turn, profile: one or more plain sentences
    return bool(reply) and reply.endswith(".") and "<|" not in reply


def chat_eval(model, tokenizer, records: list[dict], max_new_tokens: int = 48,
              progress: bool = False) -> dict:
    """Prompt with every conversation minus its last assistant reply (rendered with the tokenizer's
    chat template) and compare the greedy reply with the reference.

    Returns overall `exact_match`, `format_ok`, `stop_rate`, `echo_rate`, the same per task, and the
    `rows`.
    """
    prompts = [tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
               for r in records]
    gens = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, progress=progress)
    rows = []
    for r, g, exact in zip(records, gens, exact_items(gens, records)):
        ref = r["messages"][-1]["content"]
        rows.append({"id": r.get("id"), "task": r.get("task", "?"), "reply": g["text"], "reference": ref,
                     "exact": bool(exact),
                     "format_ok": format_ok(r.get("task", "?"), g["text"], ref), "stopped": g["stopped"],
                     "echo": echoes_prompt(r["messages"][:-1], g["text"])})
    return summarize(rows)


def exact_items(replies: list[dict], records: list[dict]) -> list[int]:
    """1 where a generated reply (`generate`'s dicts) stopped and equals its record's last message
    (surrounding whitespace aside), else 0: `chat_eval`'s exact match, item by item.

    >>> exact_items([{"text": " Paris ", "stopped": True}, {"text": "Paris", "stopped": False}],
    ...             [{"messages": [{"role": "assistant", "content": "Paris"}]}] * 2)
    [1, 0]
    """
    return [int(g["stopped"] and g["text"].strip() == r["messages"][-1]["content"]) for g, r in zip(replies, records)]


def echoes_prompt(prompt_messages: list[dict], reply: str) -> bool:
    """Whether the reply repeats the last user message (case and punctuation ignored): the
    degeneration completion-only loss is said to prevent."""
    user = " ".join(_words(_last_user(prompt_messages)))
    return bool(user) and user in " ".join(_words(reply))


def _words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped: what echo and copy measures compare."""
    return re.sub(r"[^\w\s]", " ", text.lower()).split()


def _last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def copies_prompt(prompt_messages: list[dict], reply: str, reference: str = "", words: int = 6) -> bool:
    """Whether the reply repeats `words` consecutive words of the last user message (case and
    punctuation ignored) that its reference reply does not hold: echo for long prompts, which a
    reply rarely repeats whole (`echoes_prompt`) but can copy a stretch of.

    >>> user = [{"role": "user", "content": "Notes: Ada is a baker in Rome. Ada is 41. Where is Ada?"}]
    >>> copies_prompt(user, "Notes: Ada is a baker in Rome"), copies_prompt(user, "She lives in Rome.")
    (True, False)
    """
    said, ref = " ".join(_words(reply)), " ".join(_words(reference))
    u = _words(_last_user(prompt_messages))
    spans = {" ".join(u[i:i + words]) for i in range(len(u) - words + 1)}
    return any(span in said and span not in ref for span in spans)


def summarize(rows: list[dict]) -> dict:
    """Aggregate per-row booleans (`exact`, `format_ok`, `stopped`, and `echo` where present)
    overall and per task."""
    if not rows:
        raise ValueError("summarize: no rows to summarize (an empty evaluation set?)")

    def rates(rs):
        n = len(rs)
        return {"n": n, "exact_match": sum(r["exact"] for r in rs) / n,
                "format_ok": sum(r["format_ok"] for r in rs) / n, "stop_rate": sum(r["stopped"] for r in rs) / n,
                "echo_rate": sum(r.get("echo", False) for r in rs) / n}
    tasks = sorted({r["task"] for r in rows})
    return {**rates(rows), "per_task": {t: rates([r for r in rows if r["task"] == t]) for t in tasks},
            "rows": rows}


def task_score(scores: dict, task: str, key: str = "exact_match") -> float:
    """One task family's `key` from `chat_eval` scores (or their `per_task`), NaN when the items
    evaluated held none of that family (a lane's smoke budget evaluates a handful): comparisons with
    NaN are False, so a claim about that family reads "does not hold" instead of a KeyError.

    >>> task_score({"per_task": {"json": {"exact_match": 0.5}}}, "json")
    0.5
    >>> task_score({"per_task": {}}, "refusal")
    nan
    """
    per_task = scores.get("per_task", scores)
    return per_task.get(task, {}).get(key, float("nan"))


def per_item(scores: dict, key: str = "exact", task: str | None = None) -> list[int]:
    """One 0/1 score per evaluated conversation of `chat_eval` `scores` (`key`: "exact", "format_ok",
    "stopped" or "echo"), in order; with `task`, only that family's: the per-item scores
    `sft_helpers.stats.compare` puts an interval on.

    >>> rows = [{"task": "json", "exact": True}, {"task": "refusal", "exact": False}]
    >>> per_item({"rows": rows}), per_item({"rows": rows}, task="refusal")
    ([1, 0], [0])
    """
    return [int(row[key]) for row in scores["rows"] if task is None or row["task"] == task]


def per_item_mean(runs: list[dict], key: str = "exact", task: str | None = None) -> list[float]:
    """Item by item, the mean of several runs' `per_item` scores (the runs scored the same
    conversations in the same order): one score per item for a group of runs, e.g. the share of two
    variants that refuse each harmful request.

    >>> a = {"rows": [{"task": "refusal", "exact": True}, {"task": "refusal", "exact": False}]}
    >>> b = {"rows": [{"task": "refusal", "exact": True}, {"task": "refusal", "exact": True}]}
    >>> per_item_mean([a, b], task="refusal")
    [1.0, 0.5]
    """
    columns = [per_item(scores, key, task) for scores in runs]
    if len({len(c) for c in columns}) > 1:
        raise ValueError(f"per_item_mean needs runs that scored the same items, got {[len(c) for c in columns]}")
    return [sum(x) / len(columns) for x in zip(*columns)]
