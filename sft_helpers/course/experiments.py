"""Small, seeded SFT experiments the notebooks run and compare (same data, steps and seed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .data import load_split
from .lanes import COURSE_RUN, lane, run_config
from .runs import run_in_workers
from ..masking import build_labels, drop_end_of_turn
from ..models import load_model, load_tokenizer
from ..recipe import config_command, run_sft
from ..training import eval_loss, example_losses, train_sft

DOCS = Path(__file__).resolve().parents[2] / "docs"  # where the stored experiments are written

# lesson 01's four loss variants: keyword arguments of run_sft_variant
MASKING_VARIANTS = {"full": dict(mode="full"), "completion-only": dict(mode="completion_only"),
                    "assistant-only": dict(mode="assistant_only"), "prompt weight 0.1": dict(prompt_weight=0.1)}


def variant_config(model_id: str = "tiny", mode: str = "completion_only", prompt_weight: float | None = None,
                   steps: int = 250, lr: float = 1e-3, batch_size: int = 16, seed: int = 0, eval_every: int = 50,
                   padding_free: bool = False) -> dict:
    """The `sft-train` config of a `run_sft_variant` run (capped by the lane's budget).

    >>> variant_config(mode="full", batch_size=8)["batching"], variant_config(padding_free=True)["batching"]
    ('padded', 'padding_free')
    """
    budget = lane(model_id)
    steps = budget.steps(steps)
    eval_every = max(1, min(eval_every, steps))
    return run_config(model=model_id, mask=mode, prompt_weight=prompt_weight, lr=lr, max_steps=steps,
                      batching="padding_free" if padding_free else "padded", batch_size=budget.batch(batch_size),
                      seed=seed, eval_steps=eval_every, logging_steps=eval_every)


def run_sft_variant(model_id: str = "tiny", mode: str = "completion_only", prompt_weight: float | None = None,
                    steps: int = 250, lr: float = 1e-3, batch_size: int = 16, seed: int = 0,
                    eval_every: int = 50, train_records: list[dict] | None = None, forgetting: bool = False,
                    padding_free: bool = False, notes: int = 0) -> dict:
    """Fine-tune a fresh copy of `model_id` with one loss variant and measure it.

    Training labels follow `mode` (or `prompt_weight`); the validation loss is always taken on the
    validation split's *response tokens only* (the last reply and its end-of-turn: completion-only
    labels cut at the end-of-turn, `stop_at_end_of_turn`), the same tokens for every variant, so the
    curves are comparable. `multi_turn_loss` is the loss on *every* assistant turn of
    the validation split's multi-turn conversations (completion-only training never sees the earlier
    ones). The test split is then answered greedily (`chat_eval`). With `forgetting`, also what is
    left of pre-training: `cloze_recall` on every fifth fact probe and `pretraining_loss`.
    Returns `{"history", "val_response_loss", "multi_turn_loss", "scores", "label_report"}` with
    `val_losses` and `multi_turn_losses` (one loss per conversation, for `sft_helpers.stats.compare`;
    `scores["rows"]` holds the test items), and `"forgetting"`, and the trained `model`. Steps and evaluation sets are capped by the lane's budget
    (`sft_helpers.course.lanes`). `padding_free=True` flattens each batch into one row (`PaddingFreeCollator`):
    the same samples in the same order and the same loss as padded batches (lesson 02), without
    computing on padding. With `notes`, every split's last user message starts with that many atlas
    sentences (`conversations.with_notes`: long, copyable prompts) and each test row gets `copy`
    (`evaluate.copies_prompt`: the reply copies six words of its prompt).
    """
    budget = lane(model_id)
    cfg = variant_config(model_id, mode, prompt_weight, steps, lr, batch_size, seed, eval_every, padding_free)
    splits = {name: load_split(name) for name in ("train", "validation", "test")}
    if train_records:
        splits["train"] = train_records
    if notes:
        from .conversations import with_notes
        from .data import load_world

        splits = {name: with_notes(records, load_world(), name, notes) for name, records in splits.items()}
    validation = splits["validation"]
    run = run_sft(cfg, splits["train"], budget.items(validation), budget.items(splits["test"]))
    model, tok = run.model, run.tokenizer
    if notes:
        from ..evaluate import copies_prompt

        for row, r in zip(run.scores["rows"], budget.items(splits["test"])):
            row["copy"] = copies_prompt(r["messages"][:-1], row["reply"], row["reference"])
        run.scores["copy_rate"] = sum(row["copy"] for row in run.scores["rows"]) / len(run.scores["rows"])
    multi_turn = [r for r in validation if r["task"] == "multi_turn"]
    multi_turn, _ = build_labels(budget.items(multi_turn), tok, "assistant_only")
    out = {"history": run.history, "val_response_loss": run.val_loss,
           "val_losses": example_losses(model, tok, run.data["validation"]),
           "multi_turn_loss": eval_loss(model, tok, multi_turn),
           "multi_turn_losses": example_losses(model, tok, multi_turn), "scores": run.scores,
           "label_report": run.data["label_report"], "model": model, "config": cfg}
    if forgetting:
        out["forgetting"] = forgetting_scores(model, tok, budget)
    return out


def run_variants(variants: dict[str, dict], workers: int | None = None, **common) -> dict[str, dict]:
    """`run_sft_variant(**common, **variants[name])` for every variant, run side by side by
    `run_in_workers` (the trained models stay in the workers); a dict in the order given.

    >>> out = run_variants(MASKING_VARIANTS, steps=250)  # doctest: +SKIP
    """
    jobs = [{**common, **kw} for kw in variants.values()]
    return dict(zip(variants, run_in_workers(run_sft_variant, jobs, workers, keep_models=False)))


def forgetting_scores(model, tokenizer, budget=None) -> dict:
    """What a fine-tuned `model` keeps of pre-training: greedy cloze recall on every fifth fact probe
    of the world (`cloze_recall`) and the loss on pre-training documents (`pretraining_loss`).
    `budget` (a `Lane`) caps the probes. Returns `{"recall", "corpus_loss"}` and, per item for an
    interval, `hits` (1 or 0 per probe) and `doc_losses` (one loss per document)."""
    from .data import load_world
    from ..evaluate import cloze_recall
    from .world import cloze_probes

    probes = cloze_probes(load_world())[::5]
    probes = budget.items(probes) if budget is not None else probes
    recall = cloze_recall(model, tokenizer, probes)
    return {"recall": recall["recall"], "hits": recall["hits"], "corpus_loss": pretraining_loss(model, tokenizer),
            "doc_losses": example_losses(model, tokenizer, pretraining_documents(tokenizer))}


def variant_table(results: dict[str, dict], tasks: list[str] | None = None) -> str:
    """A plain-text table: one row per variant, response-only val loss, overall rates, exact match
    per task family; with the multi-turn loss and the forgetting measures when the runs have them."""
    first = next(iter(results.values()))
    tasks = tasks or list(first["scores"]["per_task"])
    extra = []  # (header, cell) for the measures these runs have
    if "multi_turn_loss" in first:
        extra.append(("mt loss", lambda r: f"{r['multi_turn_loss']:.2f}"))
    if "forgetting" in first:
        extra += [("recall", lambda r: f"{r['forgetting']['recall']:.0%}"),
                  ("text loss", lambda r: f"{r['forgetting']['corpus_loss']:.1f}")]
    head = (f"{'variant':<22}{'val loss':>9}" + "".join(f"{name:>{len(name) + 1}}" for name, _ in extra)
            + f"{'exact':>7}{'format':>8}{'stop':>6}{'echo':>6}  " + " ".join(f"{t[:9]:>9}" for t in tasks))
    rows = [head, "-" * len(head)]
    for name, r in results.items():
        s = r["scores"]
        rows.append(f"{name:<22}{r['val_response_loss']:>9.2f}"
                    + "".join(f"{cell(r):>{len(header) + 1}}" for header, cell in extra)
                    + f"{s['exact_match']:>7.0%}{s['format_ok']:>8.0%}{s['stop_rate']:>6.0%}{s['echo_rate']:>6.0%}  "
                    + " ".join(f"{s['per_task'][t]['exact_match']:>9.0%}" for t in tasks))
    return "\n".join(rows)


def run_summary(run: dict) -> dict:
    """What a stored table needs of a `run_sft_variant` or `run_finetune` run: the response
    validation loss (`val_loss`), greedy rates overall and per family, the 1-or-0 scores per test
    conversation (`exact_items`, `format_items`, for `sft_helpers.stats.compare`), and, when the run
    has them, the multi-turn loss, the forgetting measures (`recall`, `recall_items` per fact probe,
    `corpus_loss`) and the parameter counts.

    >>> rows = [{"task": "json", "exact": True, "format_ok": True}]
    >>> scores = {"exact_match": 1.0, "format_ok": 1.0, "stop_rate": 1.0, "echo_rate": 0.0, "rows": rows,
    ...           "per_task": {"json": {"exact_match": 1.0, "n": 1}}}
    >>> run_summary({"val_response_loss": 0.5, "scores": scores})["exact_items"]
    [1]
    """
    from .hyperparameters import float_rates, item_columns

    s = run["scores"]
    out = {"val_loss": run["val_response_loss"], "exact": s["exact_match"], "format_ok": s["format_ok"],
           "stop_rate": s["stop_rate"], "echo_rate": s["echo_rate"], "per_task": float_rates(s["per_task"]),
           **item_columns(s["rows"])}
    out.update({k: run[k] for k in ("multi_turn_loss", "trainable", "footprint_mb") if k in run})
    if forgetting := run.get("forgetting"):
        out.update(recall=forgetting["recall"], recall_items=[int(h) for h in forgetting["hits"]],
                   corpus_loss=forgetting["corpus_loss"])
    return out


def seeds_table(runs_by_name: dict[str, list[dict]], ref: str, columns: list[tuple]) -> list[str]:
    """A Markdown table of stored runs `{name: [summary per seed]}`: one row per name, each cell the
    values per seed ("seed 0 / seed 1 / ..."). `columns`: `(header, value, format, delta)` with
    `value` a summary key or a function of a summary; `delta` (or None) a `hyperparameters.compare_sets`
    key ("exact", "recall", or a loss key): a "Δ" column after it, the name minus `ref` with its
    95% interval (over items and seeds for per-item scores, over seeds for a loss). When the
    runs have a `config` (their `sft-train` overrides), the last column shows it.

    >>> runs = {"a": [{"val_loss": 1.0, "config": "(none)"}, {"val_loss": 1.1, "config": "(none)"}],
    ...         "b": [{"val_loss": 2.0, "config": "`--x`"}, {"val_loss": 2.3, "config": "`--x`"}]}
    >>> print("\\n".join(seeds_table(runs, "a", [("loss", "val_loss", "{:.2f}", "val_loss")])[2:]))
    | a | 1.00 / 1.10 |  | (none) |
    | b | 2.00 / 2.30 | +1.10 (-0.17 to +2.37) | `--x` |
    """
    from .hyperparameters import delta_cell, seed_values

    heads = [h for header, _, _, delta in columns for h in ([header] + ([f"Δ {header}"] if delta else []))]
    configs = "config" in next(iter(runs_by_name.values()))[0]
    heads += ["config"] if configs else []
    lines = ["| run | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for name, runs in runs_by_name.items():
        cells = []
        for _, value, fmt, delta in columns:
            cells.append(seed_values(runs, value, fmt))
            if delta:
                cells.append(delta_cell(runs_by_name, name, ref, delta))
        cells += [runs[0]["config"]] if configs else []
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _family(task: str):
    """A `seeds_table` value: the exact match of one task family (nan when the run has none)."""
    from .hyperparameters import family_score

    return lambda r: family_score(r, task)


def masking_experiment(seeds=(0, 1, 2), steps: int = 250, lr: float = 1e-3, batch_size: int = 8) -> dict:
    """Run lesson 01's four loss variants for several seeds (side by side, `run_variants`), with the
    forgetting measurement: `{"seeds", "command", "base", "runs": {variant: [summary per seed]}}`
    (`run_summary`; `base`: the base model's cloze recall and pre-training text loss, what
    forgetting is measured against). `write_stored("masking", ...)` stores it; `masking_tables`
    prints it."""
    common = dict(steps=steps, lr=lr, batch_size=batch_size, eval_every=steps)
    base = variant_config(**common)
    model, tok = load_model("tiny")
    before = forgetting_scores(model, tok)
    runs = {name: [] for name in MASKING_VARIANTS}
    for seed in seeds:
        for name, r in run_variants(MASKING_VARIANTS, model_id="tiny", seed=seed, forgetting=True,
                                    **common).items():
            runs[name].append({**run_summary(r), "config": _overrides(r["config"], base)})
            print(f"seed {seed} {name}: val loss {r['val_response_loss']:.3f}, "
                  f"exact {r['scores']['exact_match']:.1%}", flush=True)
    return {"seeds": list(seeds), "steps": steps, "command": f"{config_command(base)} --seed S",
            "base": {"recall": before["recall"], "corpus_loss": before["corpus_loss"]}, "runs": runs}


MASKING_REFERENCE = "completion-only"  # the Δ columns of lesson 01's table: each variant minus this one


def masking_tables(results: dict) -> str:
    """The Markdown table of `masking_experiment` results, with Δ columns against completion-only."""
    runs = results["runs"]
    n_test = len(next(iter(runs.values()))[0]["exact_items"])
    n_probes = len(next(iter(runs.values()))[0]["recall_items"])
    columns = [("response val loss", "val_loss", "{:.3f}", "val_loss"),
               ("multi-turn loss", "multi_turn_loss", "{:.3f}", None),
               ("exact", "exact", "{:.1%}", "exact"), ("format", "format_ok", "{:.1%}", None),
               ("stop", "stop_rate", "{:.1%}", None), ("echo", "echo_rate", "{:.0%}", None),
               ("knowledge exact", _family("knowledge"), "{:.0%}", None),
               ("multi-turn exact", _family("multi_turn"), "{:.0%}", None),
               ("refusal exact", _family("refusal"), "{:.0%}", None),
               ("cloze recall", "recall", "{:.1%}", "recall"),
               ("text loss", "corpus_loss", "{:.2f}", "corpus_loss")]
    base = results["base"]
    return "\n".join([
        f"Each row is `{results['command']}` plus its config overrides; values per seed "
        f"(\"seed {' / seed '.join(map(str, results['seeds']))}\"). Δ: the variant minus "
        f"{MASKING_REFERENCE}'s, 95% CI: exact match over the {n_test} test conversations × "
        f"{len(results['seeds'])} seeds, cloze recall over the {n_probes} probes × seeds (paired "
        f"bootstrap), losses over seeds (Student t). The base model before SFT: cloze recall "
        f"{base['recall']:.1%}, pre-training text loss {base['corpus_loss']:.2f}.", "",
        *seeds_table(runs, MASKING_REFERENCE, columns)])


# lesson 03's fine-tuning methods: keyword arguments of run_finetune
FINETUNE_METHODS = {"full fine-tuning": dict(method="full"),
                    "LoRA, adapters only": dict(method="lora"),
                    "LoRA + embeddings": dict(method="lora", train_embeddings=True),
                    "QLoRA + embeddings": dict(method="qlora", train_embeddings=True)}


def learning_rate(model_id: str, method: str) -> float:
    """The lesson's learning rate: the guide's ranges for real models (full 2e-5, in 5e-6–5e-5; LoRA
    and QLoRA 2e-4, in 1e-4–3e-4); for the ~4M-parameter tiny base, rates ~50× and ~15× higher (a
    tiny model fine-tunes at about 1e-3, lesson 01; its LoRA at 3e-3, measured in lesson 03).

    >>> learning_rate("tiny", "qlora"), learning_rate("Qwen/Qwen2.5-0.5B", "full")
    (0.003, 2e-05)
    """
    return lane(model_id).lr(method)


def finetune_config(model_id: str = "tiny", method: str = "qlora", lr: float | None = None, steps: int = 150,
                    r: int = 16, train_embeddings: bool = False, seed: int = 0, eval_every: int = 25,
                    samples_per_step: int = 16, gradient_checkpointing: bool = False) -> dict:
    """The `sft-train` config of a `run_finetune` run (capped by the lane's budget): packed rows, LoRA
    alpha 2r with peft's usual dropout, validation loss on the completion-only labels.

    >>> finetune_config(method="qlora", train_embeddings=True)["lr"]
    0.003
    """
    from ..lora import LORA_DEFAULTS

    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method must be 'full', 'lora' or 'qlora', not {method!r}")
    budget = lane(model_id)
    steps = budget.steps(steps)
    eval_every = max(1, min(eval_every, steps))
    return run_config(model=model_id, method=method, lora_r=r, lora_alpha=2 * r,
                      lora_dropout=LORA_DEFAULTS["lora_dropout"], train_embeddings=train_embeddings,
                      gradient_checkpointing=gradient_checkpointing, lr=lr or learning_rate(model_id, method),
                      max_steps=steps, samples_per_step=budget.batch(samples_per_step), seed=seed,
                      eval_steps=eval_every, logging_steps=eval_every, validation_labels="completion_only")


def run_finetune(model_id: str = "tiny", method: str = "qlora", lr: float | None = None, steps: int = 150,
                 r: int = 16, train_embeddings: bool = False, seed: int = 0, eval_every: int = 25,
                 samples_per_step: int = 16, gradient_checkpointing: bool = False) -> dict:
    """Fine-tune a fresh copy of `model_id` by `method` ("full", "lora", "qlora") on the training split
    (completion-only labels, packed rows in shuffled order, two rows per step holding about
    `samples_per_step` conversations) and measure it: validation loss curve, test-split `chat_eval`,
    trainable / total parameters, the model's memory footprint, the training time and, on a GPU, the
    peak allocated memory. `lr` defaults to `learning_rate(model_id, method)`. Steps and evaluation
    sets are capped by the lane's budget (`sft_helpers.course.lanes`).
    Returns a dict with `history`, `val_response_loss`, `val_losses` (per conversation), `scores`, `trainable`, `total`,
    `footprint_mb`, `seconds`, `peak_gpu_gib`, `row_length` and the trained `model` and `tokenizer`.
    """
    from ..lora import footprint_mb, trainable_parameters

    budget = lane(model_id)
    cfg = finetune_config(model_id, method, lr, steps, r, train_embeddings, seed, eval_every, samples_per_step,
                          gradient_checkpointing)
    run = run_sft(cfg, load_split("train"), budget.items(load_split("validation")),
                  budget.items(load_split("test")))
    trainable, total = trainable_parameters(run.model)
    return {"history": run.history, "val_response_loss": run.val_loss, "scores": run.scores,
            "val_losses": example_losses(run.model, run.tokenizer, run.data["validation"]), "trainable": trainable, "total": total, "footprint_mb": footprint_mb(run.model),
            "seconds": run.seconds, "row_length": run.row_length, "peak_gpu_gib": run.peak_gpu_gib,
            "model": run.model, "tokenizer": run.tokenizer, "config": cfg}


def quick_sft(records: list[dict] | None = None, *, examples: list[dict] | None = None, model_id: str = "tiny",
              steps: int = 80, epochs: float = 1.0, lr: float = 1e-3, train_eos: bool = True,
              replay: float = 0.0, eval_examples: list[dict] | None = None, eval_every: int | None = None,
              samples_per_step: int = 16, warmup: float = 0.05, logging_steps: int = 5, seed: int = 0,
              early_stopping_patience: int | None = None, schedule: str = "cosine",
              attention_dropout: float | None = None) -> dict:
    """A short SFT run for lesson 04's symptoms: completion-only labels of `records` (or ready
    `examples`), with the end-of-turn token left out of the labels when `train_eos=False`, plus a `replay`
    share of plain pre-training text (full labels) mixed in. Runs `steps` steps (or, with `steps=-1`,
    `epochs` epochs) of two packed rows holding about `samples_per_step` examples, with warmup then
    `schedule` ("cosine", or "constant_with_warmup" to keep the rate up), with the model's
    `attention_dropout` when given. Returns `model`, `tokenizer`,
    `history`. Steps and evaluation examples are capped by the lane's budget (`sft_helpers.course.lanes`).
    """
    import random

    from .data import load_pretraining_corpus

    budget = lane(model_id)
    steps = budget.steps(steps)
    eval_every = eval_every and max(1, min(eval_every, budget.steps(eval_every)))
    if eval_examples is not None:
        eval_examples = budget.items(eval_examples)
    tok = load_tokenizer(model_id, verbose=False)
    if examples is None:
        examples, _ = build_labels(records, tok, "completion_only")
    if not train_eos:
        examples = drop_end_of_turn(examples, tok)
    if replay:
        docs = load_pretraining_corpus()
        rng = random.Random(seed)
        picked = rng.sample(docs, int(len(examples) * replay / (1 - replay)))
        texts = [tok(d, truncation=True, max_length=256)["input_ids"] for d in picked]
        examples = examples + [{"input_ids": ids, "labels": list(ids)} for ids in texts]
    cfg = run_config(model=model_id, lr=lr, max_steps=steps, epochs=epochs,
                     samples_per_step=budget.batch(samples_per_step), warmup=warmup, seed=seed,
                     logging_steps=logging_steps, eval_steps=eval_every,
                     early_stopping_patience=early_stopping_patience, attention_dropout=attention_dropout,
                     schedule="cosine" if schedule == "cosine" else "constant", test=None,
                     validation=None if eval_examples is None else COURSE_RUN["validation"])
    run = run_sft(cfg, examples, eval_examples)
    return {"model": run.model, "tokenizer": run.tokenizer, "history": run.history, "config": cfg}


def update_share_by_precision(model_id: str = "tiny", lr: float = 2e-5, n_examples: int = 4,
                              max_length: int = 64, seed: int = 0) -> dict[str, float]:
    """Lesson 03's cost of pure bf16: one AdamW step at `lr` from the same bf16 weights, kept as an fp32
    master copy (mixed precision, the default) or in bf16 (`pure_bf16=True`); returns the share of
    trainable weights whose stored value changed. Adam's first step moves every weight by about `lr`,
    so fp32 keeps (nearly) all of them; bf16, with 8 bits of mantissa, rounds away every update
    smaller than half a unit in the last place of the weight.
    """
    from ..precision import update_share

    records = load_split("train")[:n_examples]
    shares = {}
    for name, pure in (("mixed precision (fp32 master)", False), ("pure bf16", True)):
        model, tok = load_model(model_id, precision="bf16")
        examples, _ = build_labels(records, tok, "completion_only", max_length=max_length)
        before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
        train_sft(model, tok, examples, lr=lr, max_steps=1, batch_size=n_examples, warmup=0, weight_decay=0.0,
                  seed=seed, pure_bf16=pure)
        shares[name] = update_share(before, model)
    return shares


# lesson 04: prompt formats other than the chat template the model was trained with
PROMPT_STYLES = {
    "alpaca": lambda question: f"### Instruction:\n{question}\n\n### Response:\n",
    "llama2": lambda question: f"[INST] {question} [/INST]",
}


def prompts_in_style(records: list[dict], tokenizer, style: str = "chatml") -> list[str]:
    r"""The last user question of each record rendered as a prompt: "chatml" = the tokenizer's chat
    template with the generation prompt (what the model was trained on), or a `PROMPT_STYLES` format.

    >>> prompts_in_style([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}],
    ...                  None, "alpaca")
    ['### Instruction:\nHi\n\n### Response:\n']
    """
    if style == "chatml":
        return [tokenizer.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
                for r in records]
    return [PROMPT_STYLES[style](r["messages"][-2]["content"]) for r in records]


def with_refusals(records: list[dict], share: float, seed: int = 0) -> list[dict]:
    """A copy of `records` where each benign conversation's reply is replaced, with probability
    `share`, by the course's refusal: an over-refusing training set.

    >>> r = {"task": "knowledge", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    >>> with_refusals([r], 1.0)[0]["messages"][-1]["content"]
    "I can't help with that."
    """
    import random

    from .conversations import REFUSAL

    rng = random.Random(seed)
    return [{**r, "messages": r["messages"][:-1] + [{"role": "assistant", "content": REFUSAL}]}
            if r.get("task") != "refusal" and rng.random() < share else r for r in records]


def pretraining_documents(tokenizer, every: int = 30, max_tokens: int = 256) -> list[dict]:
    """Every `every`-th pre-training document as a plain-text example (all tokens trained, at most
    `max_tokens`): what `pretraining_loss` scores."""
    from .data import load_pretraining_corpus

    docs = [tokenizer(d)["input_ids"][:max_tokens] for d in load_pretraining_corpus()[::every]]
    return [{"input_ids": d, "labels": d} for d in docs]


def pretraining_loss(model, tokenizer, every: int = 30, max_tokens: int = 256) -> float:
    """Mean token loss on every `every`-th pre-training document (plain text, all tokens trained):
    how well the model still models the text it was pre-trained on (rises when it forgets).
    Per document, for an interval: `training.example_losses(model, tokenizer, pretraining_documents(tokenizer))`."""
    from ..training import eval_loss

    return eval_loss(model, tokenizer, pretraining_documents(tokenizer, every, max_tokens))


def _overrides(cfg: dict, base: dict) -> str:
    """A table cell: what `cfg` changes of `base` (the seed aside: a column of its own), as
    `sft-train` overrides."""
    flags = config_command(cfg, {**base, "seed": cfg["seed"]}).removeprefix("sft-train").strip()
    return f"`{flags}`" if flags else "(none)"


def finetune_experiment(seeds=(0, 1, 2), steps: int = 120) -> dict:
    """Run lesson 03's four fine-tuning methods for several seeds: `{"seeds", "command", "runs":
    {method: [summary per seed]}}` (`run_summary`). `write_stored("finetune", ...)` stores it;
    `finetune_tables` prints it."""
    base = finetune_config(method="full", steps=steps, eval_every=steps)
    runs = {name: [] for name in FINETUNE_METHODS}
    for seed in seeds:
        for name, kw in FINETUNE_METHODS.items():
            r = run_finetune("tiny", steps=steps, seed=seed, eval_every=steps, **kw)
            runs[name].append({**run_summary(r), "config": _overrides(r["config"], base)})
            print(f"seed {seed} {name}: val loss {r['val_response_loss']:.3f}, "
                  f"exact {r['scores']['exact_match']:.1%}", flush=True)
    return {"seeds": list(seeds), "steps": steps, "command": f"{config_command(base)} --seed S", "runs": runs}


FINETUNE_REFERENCE = "full fine-tuning"  # the Δ columns of lesson 03's table: each method minus this one


def finetune_tables(results: dict) -> str:
    """The Markdown table of `finetune_experiment` results, with Δ columns against full fine-tuning,
    then QLoRA against LoRA (both with the embeddings trained), exact match and loss."""
    from .hyperparameters import compare_sets

    runs = results["runs"]
    n_test = len(runs[FINETUNE_REFERENCE][0]["exact_items"])
    columns = [("trainable", "trainable", "{:,}", None), ("footprint MB", "footprint_mb", "{:.1f}", None),
               ("response val loss", "val_loss", "{:.3f}", "val_loss"),
               ("exact", "exact", "{:.1%}", "exact"), ("format", "format_ok", "{:.1%}", "format"),
               ("stop", "stop_rate", "{:.1%}", None)]
    qlora, lora = "QLoRA + embeddings", "LoRA + embeddings"
    return "\n".join([
        f"Each row is `{results['command']}` plus its config overrides; values per seed "
        f"(\"seed {' / seed '.join(map(str, results['seeds']))}\"). Δ: the method minus "
        f"{FINETUNE_REFERENCE}'s, 95% CI: exact match and format over the {n_test} test conversations × "
        f"{len(results['seeds'])} seeds (paired bootstrap), the loss over seeds (Student t).", "",
        *seeds_table(runs, FINETUNE_REFERENCE, columns), "",
        f"QLoRA against LoRA (both with the embeddings trained): exact match, {compare_sets(runs, qlora, lora)}; "
        f"response val loss, {compare_sets(runs, qlora, lora, 'val_loss'):.3}."])


def sample_streams(examples: list[dict], tokenizer, max_length: int = 512, end_of_turn: bool = True,
                   eot: str = "<|im_end|>") -> list[dict]:
    """Pretraining-style packing of labelled chat examples: every sample end to end in one token
    stream, cut every `max_length` tokens (`packing.pack_wrapped`), each stream one example. Its
    tokens see the samples before them and its labels run across the boundaries: with full-sequence
    labels a sample's last token is trained to predict the next sample's first. With
    `end_of_turn=False` each sample's closing `eot` token (and the newline after it) is left out:
    nothing marks where one sample ends and the next begins.

    >>> from sft_helpers.models import load_tokenizer
    >>> tok = load_tokenizer("tiny")
    >>> eot = tok.convert_tokens_to_ids("<|im_end|>")
    >>> ex = [{"input_ids": [5, 6, eot, 9], "labels": [5, 6, eot, 9]}] * 3
    >>> [s["input_ids"] for s in sample_streams(ex, tok, max_length=4, end_of_turn=False)]
    [[5, 6, 5, 6], [5, 6]]
    """
    from ..packing import pack_wrapped

    if not end_of_turn:
        eot_id = tokenizer.convert_tokens_to_ids(eot)
        cut = []
        for e in examples:
            last = max(i for i, t in enumerate(e["input_ids"]) if t == eot_id)
            cut.append({"input_ids": e["input_ids"][:last], "labels": e["labels"][:last]})
        examples = cut
    streams = []
    for row in pack_wrapped([len(e["input_ids"]) for e in examples], max_length).bins:
        streams.append({key: [t for i, start, end in row for t in examples[i][key][start:end]]
                        for key in ("input_ids", "labels")})
    return streams


def runs_on(row: dict) -> bool:
    """Whether a `chat_eval` row's reply runs on into another turn: a role line of the template
    ("user", "assistant" or "system" alone on a line, what is left of `<|im_start|>user` once the
    special tokens are skipped) inside the reply, the start of a sample the model was never asked for.

    >>> runs_on({"reply": "Velm.system\\nYou are"}), runs_on({"reply": "They live in Velm."})
    (True, False)
    """
    return re.search(r"(?m)(system|user|assistant)$\n", row["reply"]) is not None


RUN_ON_VARIANTS = {"end-of-turn between samples": True, "nothing between samples": False}


def run_on_experiment(seeds=(0, 1, 2), steps: int = 80, test_items: int = 120) -> dict:
    """Guide §3.1, "packing requires explicit EOS tokens to separate samples": the training split,
    full-sequence labels, packed pretraining-style (`sample_streams`: end to end, rows of 512 tokens,
    about 16 conversations per step) with and without each sample's closing `<|im_end|>`, trained
    `steps` steps per seed and answering the first `test_items` test prompts greedily. Per run:
    exact match, stop rate and `runs_on` (the reply runs into another turn), each also per item."""
    from ..evaluate import chat_eval, per_item
    from .hyperparameters import item_columns

    tok = load_tokenizer("tiny", verbose=False)
    examples, _ = build_labels(load_split("train"), tok, "full")
    test = load_split("test")[:test_items]
    runs = {name: [] for name in RUN_ON_VARIANTS}
    for seed in seeds:
        for name, eot in RUN_ON_VARIANTS.items():
            run = quick_sft(examples=sample_streams(examples, tok, end_of_turn=eot), steps=steps,
                            samples_per_step=2, seed=seed)
            got = chat_eval(run["model"], run["tokenizer"], test)
            rows = got["rows"]
            run_on_items = [int(runs_on(r)) for r in rows]
            runs[name].append({"exact": got["exact_match"], "stop_rate": got["stop_rate"], **item_columns(rows),
                               "stop_items": per_item(got, "stopped"), "run_on_items": run_on_items,
                               "run_on": sum(run_on_items) / len(rows)})
            print(f"seed {seed} {name}: exact {got['exact_match']:.1%}, stop {got['stop_rate']:.1%}, "
                  f"run-on {runs[name][-1]['run_on']:.1%}", flush=True)
    return {"seeds": list(seeds), "steps": steps, "runs": runs,
            "command": f"quick_sft(examples=sample_streams(...), steps={steps}, samples_per_step=2, seed=S)"}


def run_on_tables(results: dict) -> str:
    """The table of `run_on_experiment` results: each variant per seed, the Δ against the variant
    with the end-of-turn kept."""
    runs = results["runs"]
    ref = next(iter(runs))
    n = len(runs[ref][0]["exact_items"])
    columns = [("stop", "stop_rate", "{:.0%}", "stop"), ("runs into another turn", "run_on", "{:.0%}", "run_on"),
               ("exact", "exact", "{:.0%}", "exact")]
    return "\n".join([
        f"Each run is `{results['command']}` on the training split with full-sequence labels; values per seed "
        f"(\"seed {' / seed '.join(map(str, results['seeds']))}\"), greedy replies to the first {n} test "
        f"prompts. Δ: minus the {ref} run's, 95% CI over the prompts × {len(results['seeds'])} seeds.", "",
        *seeds_table(runs, ref, columns)])


# guide §1 / §3.3 with long, copyable prompts (`conversations.with_notes`): lesson 01's loss variants
ECHO_VARIANTS = {name: MASKING_VARIANTS[name] for name in ("completion-only", "full", "prompt weight 0.1")}
ECHO_NOTES = 8  # atlas sentences before each question: ~100 tokens, most of a full-loss example


def echo_experiment(seeds=(0, 1, 2), steps: int = 250, lr: float = 1e-3, batch_size: int = 8) -> dict:
    """Lesson 01's loss variants (completion-only, full, prompt weight 0.1) trained and tested on
    conversations whose questions follow `ECHO_NOTES` pasted atlas sentences, with lesson 01's budget
    (`masking_experiment`'s settings): does training on the prompts teach copying them, and does
    it cost the answers? Per run: `run_summary` plus `copy_rate` and `copy_items` (the reply copies
    six words of its prompt, `evaluate.copies_prompt`) and the share of trained tokens that are
    prompt tokens under full-sequence labels."""
    from ..evaluate import per_item

    common = dict(steps=steps, lr=lr, batch_size=batch_size, eval_every=steps, notes=ECHO_NOTES)
    base = variant_config(steps=steps, lr=lr, batch_size=batch_size, eval_every=steps)
    runs = {name: [] for name in ECHO_VARIANTS}
    for seed in seeds:
        for name, r in run_variants(ECHO_VARIANTS, model_id="tiny", seed=seed, **common).items():
            runs[name].append({**run_summary(r), "copy_rate": r["scores"]["copy_rate"],
                               "copy_items": per_item(r["scores"], "copy"),
                               "config": _overrides(r["config"], base)})
            print(f"seed {seed} {name}: val loss {r['val_response_loss']:.3f}, exact "
                  f"{r['scores']['exact_match']:.1%}, copy {r['scores']['copy_rate']:.1%}", flush=True)
    return {"seeds": list(seeds), "steps": steps, "notes": ECHO_NOTES, "runs": runs,
            "prompt_share": prompt_token_share(ECHO_NOTES), "prompt_share_without_notes": prompt_token_share(),
            "command": f"{config_command(base)} --seed S  # every prompt after {ECHO_NOTES} atlas sentences"}


def prompt_token_share(notes: int = 0) -> float:
    """The share of the training split's tokens that are not the last reply (and its end-of-turn):
    what full-sequence loss trains beyond completion-only's labels, with `notes` atlas sentences
    before each question (`conversations.with_notes`).

    >>> 0.5 < prompt_token_share() < prompt_token_share(8) < 1
    True
    """
    from .conversations import with_notes
    from .data import load_world

    tok = load_tokenizer("tiny", verbose=False)
    records = load_split("train")
    if notes:
        records = with_notes(records, load_world(), "train", notes)
    completion, _ = build_labels(records, tok, "completion_only")  # every token, the prompt's masked
    trained = sum(sum(t != -100 for t in e["labels"]) for e in completion)
    total = sum(len(e["input_ids"]) for e in completion)
    return 1 - trained / total


def echo_tables(results: dict) -> str:
    """The table of `echo_experiment` results, with Δ columns against completion-only."""
    runs = results["runs"]
    n_test = len(runs[MASKING_REFERENCE][0]["exact_items"])
    columns = [("response val loss", "val_loss", "{:.3f}", "val_loss"),
               ("exact", "exact", "{:.1%}", "exact"), ("format", "format_ok", "{:.1%}", "format"),
               ("copies 6+ prompt words", "copy_rate", "{:.1%}", None), ("stop", "stop_rate", "{:.1%}", None)]
    return "\n".join([
        f"Each row is `{results['command']}` plus its config overrides; values per seed "
        f"(\"seed {' / seed '.join(map(str, results['seeds']))}\"). Every question of every split follows "
        f"{results['notes']} pasted atlas sentences (`conversations.with_notes`): "
        f"{results['prompt_share']:.0%} of the training tokens are prompt. Δ: the variant minus "
        f"{MASKING_REFERENCE}'s, 95% CI over the {n_test} test conversations × {len(results['seeds'])} "
        f"seeds (paired bootstrap), the loss over seeds (Student t).", "",
        *seeds_table(runs, MASKING_REFERENCE, columns)])


STORED = {"masking": ("Lesson 01: loss masks across seeds", masking_experiment, masking_tables),
          "finetune": ("Lesson 03: fine-tuning methods across seeds", finetune_experiment, finetune_tables),
          "echo": ("Lesson 01: loss masks with long, copyable prompts", echo_experiment, echo_tables),
          "run-on": ("Lesson 02: packing with and without an end-of-turn between samples", run_on_experiment,
                     run_on_tables)}


def stored_path(experiment: str, docs: Path | None = None) -> Path:
    """Where `experiment` ("masking", "finetune") stores its runs: docs/<experiment>.json."""
    return (docs or DOCS) / f"{experiment}.json"


def write_stored(experiment: str, results: dict, docs: Path | None = None) -> None:
    """Store `results` of `experiment` in docs/<experiment>.json and its table in docs/experiments.md
    between the `<!-- experiment:start/end -->` markers."""
    from .runs import results_json, write_block

    title, _, tables = STORED[experiment]
    stored_path(experiment, docs).write_text(results_json(results), encoding="utf-8")
    command = (f"`python -m sft_helpers.course.experiments {experiment} --seeds "
               f"{' '.join(map(str, results['seeds']))}`")
    write_block((docs or DOCS) / "experiments.md", experiment, title, f"{command}\n\n{tables(results)}")


def load_stored(experiment: str) -> dict:
    """The runs `experiment` ("masking", "finetune") stored in docs/<experiment>.json."""
    return json.loads(stored_path(experiment).read_text(encoding="utf-8"))


if __name__ == "__main__":
    import argparse

    from .runs import merge_stored

    ap = argparse.ArgumentParser(description="lesson experiments, several seeds")
    ap.add_argument("experiment", choices=["masking", "finetune", "echo", "run-on", "hyperparameters", "data-strategy",
                                           "data-sets"])
    ap.add_argument("--out", default="sets", help="data-sets: the folder the training sets are written to")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--docs", default=None, help="the folder to write the JSON and "
                                                 "tables to (default: docs/)")
    ap.add_argument("--only", nargs="+", default=None, metavar="SWEEP",
                    help="hyperparameters: rerun only these sweeps (e.g. epochs), keep the stored others; "
                         "data-strategy: only these groups (quality, 'blind quality', diversity, repeats, dedup)")
    args = ap.parse_args()
    docs = Path(args.docs) if args.docs else None
    if args.experiment == "data-sets":  # lesson 06's training sets as JSONL files, for sft-train
        from sft_helpers.course import data_strategy

        for seed in args.seeds:
            for path in data_strategy.write_sets(args.out, seed):
                print(path)
        raise SystemExit(0)
    if args.experiment in ("data-strategy", "hyperparameters"):  # lessons 06 and 05
        from sft_helpers.course import data_strategy, hyperparameters

        if args.experiment == "data-strategy":
            lesson = data_strategy
            results = data_strategy.run_experiments(tuple(args.seeds), only=args.only)
        else:
            lesson = hyperparameters
            results = hyperparameters.with_seeds(hyperparameters.all_sweeps(tuple(args.seeds), only=args.only),
                                                 args.seeds)
        if args.only and not docs:  # merge into the stored groups or sweeps
            results = merge_stored(lesson.load_stored(), results)
        lesson.write_docs(results, docs)
        print(lesson.tables(results))
    else:  # masking, finetune, run-on: docs/<experiment>.json and their tables in docs/experiments.md
        _, experiment, tables = STORED[args.experiment]
        results = experiment(tuple(args.seeds))
        write_stored(args.experiment, results, docs)
        print(tables(results))
