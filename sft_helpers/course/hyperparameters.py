"""Lesson 05's sweeps: the guide's hyperparameter table, one row at a time, on the tiny base.

Every run is `run_hp`: the course recipe (completion-only labels, packed rows, AdamW, warmup +
cosine) with one setting changed, the same data, steps and seed, measured the same way (loss on the
validation split's response tokens, greedy exact match on the test split). The sweeps run side by
side in worker processes (`run_in_workers`); `python -m sft_helpers.course.experiments hyperparameters
--seeds 0 1 2` runs them all on three seeds and writes the tables to docs/experiments.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .data import load_split
from ..evaluate import chat_eval
from .lanes import lane, run_config
from .runs import results_json, run_in_workers, write_block
from ..masking import build_labels, stop_at_end_of_turn
from ..models import load_model, load_tokenizer
from ..recipe import config_command, run_sft
from ..training import eval_loss, example_losses, is_due
from transformers import TrainerCallback

# the course's recipe for a 60-step run; every sweep changes one of these
RECIPE = dict(method="full", lr=1e-3, steps=60, samples_per_step=16, schedule="cosine", warmup=0.05,
              weight_decay=0.01)


def quarter_decades(low: float, high: float) -> tuple[float, ...]:
    """Learning rates from 10**low to 10**high in steps of 10**0.25 (x1.78), three significant digits:
    fine enough to tell a 3x from a 10x ratio between two optima.

    >>> quarter_decades(-3, -2.5)
    (0.001, 0.00178, 0.00316)
    """
    return tuple(float(f"{10 ** (k / 4):.3g}") for k in range(round(4 * low), round(4 * high) + 1))


# LoRA trains the embeddings and output head too (`train_embeddings`): without them, adapters on the
# tiny base stall whatever the rate (lesson 03), and a sweep of runs that learn nothing has no optimum
LR_GRID = {"full": quarter_decades(-4, -2), "lora": quarter_decades(-3.5, -1.5)}
# guide §2 (SFT rates 10-100x below pre-training's): the body's rate swept while the new chat-token
# embeddings (and the tied output head) keep the single-rate sweep's best, at their own rate
EMBEDDING_LR = 1e-3
SCHEDULES = {"constant (5% warmup)": dict(schedule="constant_with_warmup"),
             "cosine (5% warmup)": dict(schedule="cosine"),
             "cosine, no warmup": dict(schedule="cosine", warmup=0.0)}
# lesson 04's overfitting setup: 16 conversations, 50 epochs, constant LR after warmup
OVERFIT = dict(n_train=16, steps=-1, epochs=50, samples_per_step=8, schedule="constant_with_warmup", eval_every=6)
REGULARISATION = {"weight decay 0": dict(weight_decay=0.0), "weight decay 0.01": {},
                  "weight decay 0.1": dict(weight_decay=0.1), "LoRA, dropout 0": dict(method="lora", lr=3e-3),
                  "LoRA, dropout 0.1": dict(method="lora", lr=3e-3, lora_dropout=0.1),
                  # the model's own dropout (Llama: on the attention weights), full fine-tuning
                  "attention dropout 0.1": dict(attention_dropout=0.1),
                  "attention dropout 0.3": dict(attention_dropout=0.3)}
# the epochs study: the whole training split (2,520 conversations, 5% of them planted duplicates)
# against the same number made of half of them each twice; 8 epochs at a constant rate after a
# fixed warmup, so the first k epochs are exactly a k-epoch run (tests/test_hyperparameters.py)
EPOCHS = dict(n_train=2520, steps=-1, epochs=8, schedule="constant_with_warmup", warmup=20,
              eval_every="epoch", exact_every="epoch")
EPOCH_SETS = {"2,520 (whole split)": dict(duplicate=False), "1,260, each twice": dict(duplicate=True)}
# the guide's schedule over 1, 2 or 3 epochs of the whole split: each its own run (a decaying rate
# makes the first k epochs of a longer run a different run)
EPOCHS_COSINE = dict(n_train=2520, steps=-1, schedule="cosine", warmup=0.05, eval_every="epoch", exact_every="epoch")
COURSE_MAX_LENGTH = 1024  # longer than any course conversation: nothing is cut unless a run sets max_length
DOCS_JSON = Path(__file__).resolve().parents[2] / "docs" / "hyperparameters.json"


def length_coverage(examples: list[dict], percentiles=(50, 90, 95, 99, 100)) -> dict[int, int]:
    """Token length of `examples` (from `build_labels`, or any dicts with `input_ids`) at each
    percentile: the max length that keeps that share of the examples whole.

    >>> length_coverage([{"input_ids": [0] * n} for n in range(1, 101)], (50, 95, 100))
    {50: 50, 95: 95, 100: 100}
    """
    lengths = sorted(len(e["input_ids"]) for e in examples)
    if not lengths:
        raise ValueError("length_coverage: no examples")
    return {p: lengths[max(0, math.ceil(p / 100 * len(lengths)) - 1)] for p in percentiles}


def recommend_max_length(examples: list[dict], coverage: float = 0.95, multiple: int = 64) -> int:
    """The guide's rule: the smallest max length, rounded up to a `multiple` (GPU kernels like
    multiples of 64), that keeps at least `coverage` of the examples whole.

    >>> recommend_max_length([{"input_ids": [0] * n} for n in range(1, 101)], 0.95, multiple=8)
    96
    """
    needed = length_coverage(examples, (round(coverage * 100),))[round(coverage * 100)]
    return multiple * math.ceil(needed / multiple)


def epoch_cost(examples: list[dict], max_length: int, batch_size: int = 16, seed: int = 0) -> dict[str, int]:
    """Token positions one epoch computes at `max_length` (examples cut to it): `padded` in batches of
    `batch_size` in a shuffled order, each padded to its longest example, and `packed` in rows of
    `max_length` (best-fit decreasing); `real` is the tokens themselves.

    >>> epoch_cost([{"input_ids": [0] * n} for n in (10, 2, 8, 4)], 10, batch_size=2)
    {'real': 24, 'padded': 28, 'packed': 30}
    """
    import random

    from ..packing import pack_bfd

    lengths = [min(len(e["input_ids"]), max_length) for e in examples]
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    return {"real": sum(lengths), "padded": sum(max(lengths[i] for i in b) * len(b) for b in batches),
            "packed": len(pack_bfd(lengths, max_length).bins) * max_length}


def loss_noise(log_history: list[dict]) -> float:
    """How much the training loss jumps from one logged step to the next over the second half of a
    run (standard deviation of the differences): the gradient noise a batch size leaves.

    >>> loss_noise([{"loss": x} for x in (5, 4, 3, 2, 2, 3, 2, 3, 2)])
    1.0
    """
    losses = [h["loss"] for h in log_history if "loss" in h]
    diffs = [b - a for a, b in zip(losses[len(losses) // 2:], losses[len(losses) // 2 + 1:])]
    if len(diffs) < 2:
        return float("nan")
    mean = sum(diffs) / len(diffs)
    return (sum((d - mean) ** 2 for d in diffs) / len(diffs)) ** 0.5


class ExactMatchCallback(TrainerCallback):
    """Logs greedy exact match on `records` (`chat_eval`) every `every` steps (or, with
    `every="epoch"`, at every epoch's end) and at the last step, as `{"step", "exact"}` entries of
    the trainer's `log_history`."""

    def __init__(self, tokenizer, records: list[dict], every: int | str):
        self.tokenizer, self.records, self.every = tokenizer, records, every

    def _log(self, state, model):
        if not any(h.get("step") == state.global_step and "exact" in h for h in state.log_history):
            exact = chat_eval(model, self.tokenizer, self.records)["exact_match"]
            state.log_history.append({"step": state.global_step, "exact": exact})
            model.train()

    def on_step_end(self, args, state, control, model=None, **kw):
        if is_due(self.every, state):
            self._log(state, model)

    def on_epoch_end(self, args, state, control, model=None, **kw):
        if self.every == "epoch":
            self._log(state, model)


def hp_config(model_id: str = "tiny", *, method: str = "full", lr: float = 1e-3, steps: int = 60,
              epochs: float = 1.0, samples_per_step: int = 16, grad_accum: int = 1, batching: str = "packed",
              schedule: str = "cosine", warmup: float = 0.05, weight_decay: float = 0.01,
              lora_dropout: float = 0.0, train_embeddings: bool = False, max_length: int | None = None,
              eval_every: int | str | None = None, eval_items: int = 60, test_items: int = 60,
              n_train: int | None = None, duplicate: bool = False, seed: int = 0,
              embedding_lr: float | None = None, attention_dropout: float | None = None, **course) -> dict:
    """The `sft-train` config of a `run_hp` run with these keywords (capped by the lane's budget):
    `n_train` is `max_train_examples` unless `duplicate` (then the run trains on the first
    `n_train // 2` conversations twice, which no config key says); the `course` keywords
    (`exact_every`, `records`, `eval_sets`) choose the course's data and measures, not the config.

    >>> from sft_helpers.recipe import config_command
    >>> config_command(hp_config(lr=3e-3, seed=1), hp_config())
    'sft-train --lr 0.003 --seed 1'
    """
    budget = lane(model_id)
    steps, samples_per_step = budget.steps(steps), budget.batch(samples_per_step)
    grad_accum = min(grad_accum, samples_per_step)
    if method not in ("full", "lora"):
        raise ValueError(f"method must be 'full' or 'lora', not {method!r}")
    if batching not in ("packed", "padded", "padding_free"):
        raise ValueError(f"batching must be 'packed', 'padded' or 'padding_free', not {batching!r}")
    packed = batching == "packed"
    return run_config(model=model_id, method=method, lora_dropout=lora_dropout,
                      train_embeddings=train_embeddings and method != "full", lr=lr, max_steps=steps,
                      epochs=epochs, batching=batching, batch_size=2 if packed else samples_per_step // grad_accum,
                      grad_accum=1 if packed else grad_accum, samples_per_step=samples_per_step if packed else None,
                      schedule="cosine" if schedule == "cosine" else "constant", warmup=warmup,
                      weight_decay=weight_decay, max_length=max_length or COURSE_MAX_LENGTH, seed=seed,
                      logging_steps=1, eval_steps=eval_every or _start_and_end(steps, epochs),
                      max_eval_examples=max(budget.count(eval_items), budget.count(test_items)),
                      max_train_examples=None if duplicate else n_train, embedding_lr=embedding_lr,
                      attention_dropout=attention_dropout)


def _start_and_end(steps: int, epochs: float) -> int | str:
    """An `eval_steps` that evaluates only at the start and at the last step."""
    return steps if steps > 0 else "epoch" if epochs == 1 else 10**9


def run_hp(model_id: str = "tiny", *, method: str = "full", lr: float = 1e-3, steps: int = 60,
           epochs: float = 1.0, samples_per_step: int = 16, grad_accum: int = 1, batching: str = "packed",
           schedule: str = "cosine", warmup: float = 0.05, weight_decay: float = 0.01,
           lora_dropout: float = 0.0, train_embeddings: bool = False, max_length: int | None = None,
           n_train: int | None = None, duplicate: bool = False, eval_every: int | str | None = None, exact_every: int | str | None = None,
           eval_items: int = 60, test_items: int = 60, records: list[dict] | None = None,
           eval_sets: dict[str, list[dict]] | None = None, seed: int = 0,
           embedding_lr: float | None = None, attention_dropout: float | None = None) -> dict:
    """One fine-tuning run of lesson 05: `model_id` by `method` ("full", or "lora": r=16, alpha 32,
    adapters on every linear layer, with `train_embeddings` the embeddings and output head too) on the training split (its first `n_train` conversations; with
    `duplicate`, its first `n_train // 2` each twice), completion-only labels cut to `max_length`
    (keeping the start), `steps` optimizer steps (or `epochs` with `steps=-1`) of about
    `samples_per_step` conversations in two packed rows (`batching="packed"`), or in micro-batches of
    `samples_per_step // grad_accum` conversations accumulated `grad_accum` times, padded
    (`"padded"`) or flattened into one row (`"padding_free"`, the same loss without computing on
    padding); warmup then `schedule`; `embedding_lr`: the embeddings and output head at their own
    peak rate (the body at `lr`); `attention_dropout`: the model's, while training. The validation loss is logged every `eval_every` steps (and
    at the start and the end); with `exact_every`, the test exact match too (`{"step", "exact"}`
    entries of the history); `"epoch"` for either means at the end of every epoch.

    Returns `history`, `val_loss` (response tokens of `eval_items` validation conversations, as in
    lesson 01) and `val_losses` (one per conversation, for `sft_helpers.stats.compare`), `exact`, `format_ok`, `stop_rate` (greedy, `test_items` test conversations),
    `exact_items` and `format_items` (1 or 0 per test conversation, for `sft_helpers.stats.compare`),
    `truncated` (share of the kept training examples cut), `dropped` (share of conversations left
    with no trained token: the reply cut entirely), `slots_per_epoch` (token positions computed per
    epoch, padding included) and `steps`. Steps, batch and evaluation sets are capped by the lane's
    budget (`sft_helpers.course.lanes`).

    Lesson 06 trains on its own data sets: `records` replaces the training split, and each of
    `eval_sets` (`{name: records}`) is scored after training, in `sets[name]`: greedy `exact`,
    `format_ok`, `per_task`, the response-token `loss`, `exact_items` and `format_items`.
    """
    cfg = hp_config(model_id, method=method, lr=lr, steps=steps, epochs=epochs, samples_per_step=samples_per_step,
                    grad_accum=grad_accum, batching=batching, schedule=schedule, warmup=warmup,
                    weight_decay=weight_decay, lora_dropout=lora_dropout, train_embeddings=train_embeddings,
                    max_length=max_length, eval_every=eval_every, eval_items=eval_items, test_items=test_items, n_train=n_train,
                    duplicate=duplicate, seed=seed, embedding_lr=embedding_lr, attention_dropout=attention_dropout)
    budget = lane(model_id)
    eval_items, test_items = budget.count(eval_items), budget.count(test_items)
    packed = batching == "packed"
    records = load_split("train") if records is None else records
    if n_train and duplicate:  # else the config's max_train_examples cuts them
        records = records[:n_train // 2] * 2
    test = load_split("test")[:test_items]
    exact = [ExactMatchCallback(load_tokenizer(model_id, verbose=False), test, exact_every)] if exact_every else []
    validation = load_split("validation")[:eval_items]
    if max_length:  # the validation replies stay whole however much training cuts
        validation = reply_labels(validation, load_tokenizer(model_id, verbose=False))
    run = run_sft(cfg, records, validation, test, callbacks=exact)
    model, tok, report, rows = run.model, run.tokenizer, run.data["label_report"], run.rows
    if packed:
        slots = len(rows) * run.row_length
    else:
        batch = cfg["batch_size"]
        width = (lambda b: max(len(e["input_ids"]) for e in b) * len(b)) if batching == "padded" else (
            lambda b: sum(len(e["input_ids"]) for e in b))
        slots = sum(width(rows[i:i + batch]) for i in range(0, len(rows), batch))
    scores, sets = run.scores, {}
    for name, items in (eval_sets or {}).items():
        items = budget.items(items)
        got = chat_eval(model, tok, items)
        labelled, _ = build_labels(items, tok, "completion_only")
        sets[name] = {"exact": got["exact_match"], "format_ok": got["format_ok"], "per_task": got["per_task"],
                      "loss": eval_loss(model, tok, labelled), "n": len(items),
                      **item_columns(got["rows"])}
    history = run.history
    return {"history": history, "val_loss": run.val_loss,
            "val_losses": example_losses(model, tok, run.data["validation"]), "exact": scores["exact_match"],
            "format_ok": scores["format_ok"], "stop_rate": scores["stop_rate"],
            **item_columns(scores["rows"]), "truncated": report.truncated / max(report.kept, 1),
            "dropped": len(report.dropped) / run.data["n_records"], "slots_per_epoch": slots,
            "steps": history[-1].get("step", 0), "per_task": scores["per_task"], "sets": sets,
            "n_train": run.data["n_records"], "config": cfg}


def item_columns(rows: list[dict]) -> dict[str, list[int]]:
    """`exact_items` and `format_items` of `chat_eval` rows: 1 or 0 per conversation, in order, what
    a stored summary keeps for `compare_sets`.

    >>> item_columns([{"exact": True, "format_ok": True}, {"exact": False, "format_ok": True}])
    {'exact_items': [1, 0], 'format_items': [1, 1]}
    """
    from ..evaluate import per_item

    return {"exact_items": per_item({"rows": rows}), "format_items": per_item({"rows": rows}, "format_ok")}


def reply_labels(records: list[dict], tokenizer) -> list[dict]:
    """Validation labels as every course run scores them (`validation_labels: reply`): the
    completion-only labels of `records` up to the reply's end-of-turn, never truncated."""
    labelled, _ = build_labels(records, tokenizer, "completion_only")
    return stop_at_end_of_turn(labelled, tokenizer, tokenizer.eos_token)


def accumulation_gap(model_id: str = "tiny", batch: int = 64, micro_batch: int = 8, steps: int = 2,
                     lr: float | None = None) -> dict[str, float]:
    """Train two fresh copies of `model_id` for `steps` steps on the same conversations: batches of
    `batch` padded examples, and micro-batches of `micro_batch` accumulated `batch // micro_batch`
    times (each padded to its own longest example). Returns how far the weights moved (`moved`, the
    largest change of any weight) and the largest difference between the two runs' weights (`gap`):
    float noise when the loss is averaged over the target tokens of the whole accumulated batch.
    The lane's budget caps `batch`."""
    budget = lane(model_id)
    batch = budget.batch(batch)
    micro_batch = min(micro_batch, batch)
    model, tok = load_model(model_id)
    start = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    examples, _ = build_labels(load_split("train")[:batch * steps], tok, "completion_only")
    weights = []
    for size, accumulate in ((batch, 1), (micro_batch, batch // micro_batch)):
        cfg = run_config(model=model_id, batching="padded", batch_size=size, grad_accum=accumulate, warmup=0,
                         lr=lr or budget.lr("full"), max_steps=steps, validation=None, test=None)
        trained = run_sft(cfg, examples).model
        weights.append({n: p.detach().float() for n, p in trained.named_parameters()})
    moved = max((weights[0][n] - start[n]).abs().max().item() for n in start)
    gap = max((weights[0][n] - weights[1][n]).abs().max().item() for n in start)
    return {"moved": moved, "gap": gap}


def _summary(run: dict) -> dict:
    """What a table needs of a run (histories kept short: losses and eval losses by step)."""
    keep = ("val_loss", "val_losses", "exact", "format_ok", "stop_rate", "exact_items", "format_items", "truncated",
            "slots_per_epoch", "steps", "n_train")
    out = {k: run[k] for k in keep + ("dropped",) if k in run}
    out["train_loss"] = [(h["step"], round(h["loss"], 4)) for h in run["history"] if "loss" in h]
    out["eval_loss"] = [(h["step"], round(h["eval_loss"], 4)) for h in run["history"] if "eval_loss" in h]
    out["lr"] = [(h["step"], h["learning_rate"]) for h in run["history"] if "learning_rate" in h]
    out["exact_curve"] = [(h["step"], h["exact"]) for h in run["history"] if "exact" in h]
    out["per_task"] = float_rates(run["per_task"])
    if run.get("sets"):
        out["sets"] = {name: {**m, "per_task": float_rates(m["per_task"])} for name, m in run["sets"].items()}
    return out


def float_rates(per_task: dict) -> dict:
    """`chat_eval`'s rates per task family without the counts: what a stored summary keeps.

    >>> float_rates({"json": {"n": 4, "exact_match": 0.25}})
    {'json': {'exact_match': 0.25}}
    """
    return {task: {k: v for k, v in m.items() if isinstance(v, float)} for task, m in per_task.items()}


def sweep(settings: dict[str, dict], seeds=(0,), workers: int | None = None, **common) -> dict[str, list[dict]]:
    """`run_hp(**common, **settings[name], seed=s)` for every setting and seed, side by side in
    worker processes; `{name: [summary per seed]}` in the order given.

    >>> out = sweep({"lr 1e-3": dict(lr=1e-3)}, seeds=(0, 1), steps=20)  # doctest: +SKIP
    """
    names = [(name, s) for name in settings for s in seeds]
    jobs = [{**common, **settings[name], "seed": s} for name, s in names]
    runs = run_in_workers(run_hp, jobs, workers, keep_models=False, desc="hyperparameter runs")
    out: dict[str, list[dict]] = {name: [] for name in settings}
    for (name, _), run in zip(names, runs):
        out[name].append(_summary(run))
    return out


def best_lr(results: dict[str, list[dict]]) -> tuple[float, float]:
    """The learning rate with the lowest validation loss averaged over seeds, from a sweep keyed by
    "method lr" names (e.g. "full 1e-3"); returns (lr, mean val loss)."""
    means = {float(name.split()[-1]): sum(r["val_loss"] for r in runs) / len(runs) for name, runs in results.items()}
    lr = min(means, key=means.get)
    return lr, means[lr]


def fitted_best_lr(runs: dict[str, dict]) -> float:
    """One seed's best learning rate between grid points: the vertex of the parabola through the
    validation loss against log10(rate) at the grid's lowest point and its two neighbours (the
    lowest point itself when it is at the grid's edge). `runs`: `{"method lr": summary}`.

    >>> round(fitted_best_lr({"full 0.0001": {"val_loss": 3.0}, "full 0.001": {"val_loss": 2.0},
    ...                       "full 0.01": {"val_loss": 4.0}}), 5)
    0.00068
    """
    points = sorted((math.log10(float(name.split()[-1])), run["val_loss"]) for name, run in runs.items())
    i = min(range(len(points)), key=lambda k: points[k][1])
    if i in (0, len(points) - 1):
        return 10 ** points[i][0]
    (x0, y0), (x1, y1), (x2, y2) = points[i - 1:i + 2]
    # vertex of the parabola through three points (x1 in the middle, evenly spaced or not)
    num = (x1 - x0) ** 2 * (y1 - y2) - (x1 - x2) ** 2 * (y1 - y0)
    den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0)
    return 10 ** (x1 - 0.5 * num / den)


def by_method(results: dict[str, list[dict]]) -> dict[str, dict[str, list[dict]]]:
    """A learning-rate sweep keyed "method rate" split by method: `{"full": {...}, "lora": {...}}`.

    >>> {m: list(runs) for m, runs in by_method({"full 1e-3": [], "lora 3e-3": []}).items()}
    {'full': ['full 1e-3'], 'lora': ['lora 3e-3']}
    """
    return {m: {n: r for n, r in results.items() if n.split()[0] == m} for m in ("full", "lora")}


def fitted_best_lrs(results: dict[str, list[dict]]) -> dict[str, list[float]]:
    """`fitted_best_lr` of each method ("full", "lora") the sweep has, on each of its seeds.

    >>> fitted_best_lrs({"full 0.001": [{"val_loss": 2.0}], "full 0.01": [{"val_loss": 3.0}]})
    {'full': [0.001]}
    """
    seeds = range(len(next(iter(results.values()))))
    return {m: [fitted_best_lr({n: r[s] for n, r in runs.items()}) for s in seeds]
            for m, runs in by_method(results).items() if runs}


def best_rate_ratio(results: dict[str, list[dict]]):
    """LoRA's best learning rate over full fine-tuning's, from a learning-rate sweep on several seeds:
    a `stats.Difference` of log10 rates (`fitted_best_lr` per seed, paired by seed); the ratio is
    `10 ** d.delta`, its 95% interval `10 ** d.low` to `10 ** d.high`."""
    from ..stats import compare_seeds

    logs = {m: [math.log10(lr) for lr in lrs] for m, lrs in fitted_best_lrs(results).items()}
    return compare_seeds(logs["lora"], logs["full"], ("LoRA's best log10 rate", "full fine-tuning's"))


def early_peak(run: dict, first: int = 10) -> float:
    """The highest training loss logged in the first `first` steps: the spike a schedule lets through
    (compare runs of one seed: the same batches in the same order).

    >>> early_peak({"train_loss": [(1, 9.0), (2, 12.5), (3, 7.0), (11, 20.0)]})
    12.5
    """
    return max(loss for step, loss in run["train_loss"] if step <= first)


def warmup_excess(without: list[dict], with_warmup: list[dict], first: int = 10) -> list[float]:
    """Per seed, how much higher the training loss is without warmup than with it over the first
    `first` steps, step by step on the same batches (the runs share their seed and so their data
    order): what the schedule does, with what each batch contains cancelled out.

    >>> warmup_excess([{"train_loss": [(1, 9.0), (2, 8.0)]}], [{"train_loss": [(1, 9.0), (2, 6.0)]}])
    [1.0]
    """
    out = []
    for a, b in zip(without, with_warmup):
        paired = [(x, y) for (sx, x), (sy, y) in zip(a["train_loss"], b["train_loss"]) if sx == sy <= first]
        if [s for s, _ in a["train_loss"]][:first] != [s for s, _ in b["train_loss"]][:first]:
            raise ValueError("warmup_excess: the runs did not log the same steps")
        out.append(sum(x - y for x, y in paired) / len(paired))
    return out


def lr_settings(method: str, lrs=None, model_id: str = "tiny", train_embeddings: bool = False) -> dict[str, dict]:
    """Sweep settings for `method` over `lrs` (default `LR_GRID[method]`, moved to the lane's own
    rates on a lane other than the tiny base's), named "method lr"; `train_embeddings` for LoRA trains the
    embeddings and output head too.

    >>> list(lr_settings("lora", (1e-3, 1e-2)))
    ['lora 0.001', 'lora 0.01']
    >>> list(lr_settings("full", (1e-3,), model_id="Qwen/Qwen2.5-0.5B"))
    ['full 2e-05']
    """
    shift = lane(model_id).lr(method) / lane("tiny").lr(method)
    extra = {"train_embeddings": True} if train_embeddings and method != "full" else {}
    return {f"{method} {lr * shift:.3g}": dict(method=method, lr=lr * shift, **extra)
            for lr in (lrs or LR_GRID[method])}


def sweep_plan(lengths: dict[int, int]) -> dict[str, tuple[dict[str, dict], dict]]:
    """Every sweep of lesson 05 as `{sweep: (settings by row name, keywords common to its rows)}`:
    `run_hp(**common, **settings[row], seed=s)` is one run; `lengths` are the training split's length
    percentiles (the max-length sweep's settings)."""
    base = dict(steps=RECIPE["steps"], samples_per_step=RECIPE["samples_per_step"])
    return {
        "learning rate": ({**lr_settings("full"), **lr_settings("lora", train_embeddings=True)}, base),
        "learning rate, embeddings apart": ({name: {**kw, "embedding_lr": EMBEDDING_LR}
                                             for name, kw in lr_settings("full").items()}, base),
        "schedule": (SCHEDULES, {**base, "lr": 3e-3}),
        "epochs": (EPOCH_SETS, EPOCHS),
        "epochs, cosine": ({f"{k} epoch{'s' * (k > 1)}": dict(epochs=k) for k in (1, 2, 3)}, EPOCHS_COSINE),
        "batch": ({f"effective batch {b}": dict(samples_per_step=b, grad_accum=b // 8) for b in (8, 32, 128)},
                  dict(batching="padding_free", n_train=1024, steps=-1, epochs=1)),
        # the same batches at an equal number of steps (the big batches see more data)
        "batch, equal steps": ({f"effective batch {b}": dict(samples_per_step=b, grad_accum=b // 8)
                                for b in (8, 32, 128)}, dict(batching="padding_free", steps=30, eval_every=5)),
        "max length": ({f"p{p}: {n} tokens": dict(max_length=n) for p, n in lengths.items() if p in (50, 95, 100)},
                       base),
        "regularisation": (REGULARISATION, OVERFIT),
    }


def all_sweeps(seeds=(0, 1), only=None) -> dict:
    """Every sweep of lesson 05 on `seeds` (or those named in `only`, keys of `TABLES`), and the
    training split's length percentiles."""
    lengths = length_coverage(build_labels(load_split("train"), load_model("tiny")[1], "completion_only")[0])
    plan = sweep_plan(lengths)
    unknown = set(only or ()) - set(plan)
    if unknown:
        raise ValueError(f"unknown sweeps {sorted(unknown)}; choose from {list(plan)}")
    return {**{name: sweep(settings, seeds, **common) for name, (settings, common) in plan.items()
               if not only or name in only}, "lengths": lengths}


def row_configs(name: str, lengths: dict[int, int]) -> tuple[str, dict[str, str]]:
    """`(command, {row: overrides})` of the sweep `name`: the `sft-train` command its rows share
    and what each row adds to it (with `--seed S` for seed S). What a config cannot say (the data
    duplicated) is added in words.

    >>> command, rows = row_configs("schedule", {})
    >>> rows["cosine, no warmup"]
    '--warmup 0.0'
    """
    settings, common = sweep_plan(lengths)[name]
    base = hp_config(**common)
    rows = {}
    for row, kw in settings.items():
        parts = [config_command(hp_config(**common, **kw), base).removeprefix("sft-train").strip()]
        if {**common, **kw}.get("duplicate"):
            parts.append(f"(course data: the first {common['n_train'] // 2:,} conversations, each twice)")
        rows[row] = " ".join(p for p in parts if p) or "(as the command)"
    return config_command(base), rows


def biggest_jump(run: dict) -> float:
    """The largest rise of the logged training loss from one step to the next (a spike)."""
    losses = [loss for _, loss in run["train_loss"]]
    return max([0.0] + [b - a for a, b in zip(losses, losses[1:])])


def best_epoch(run: dict) -> int:
    """The epoch (1-based) with the lowest validation loss of a run evaluated at every epoch end
    (`eval_every="epoch"`; its first evaluation is before training).

    >>> best_epoch({"eval_loss": [(0, 9.0), (20, 3.0), (40, 2.5), (60, 2.7)]})
    2
    """
    evals = run["eval_loss"][1:]
    return 1 + min(range(len(evals)), key=lambda i: evals[i][1])


def train_loss_by_epoch(run: dict) -> list[float]:
    """The mean logged training loss of each epoch of a run evaluated at every epoch end (its
    evaluations mark where each epoch ends; the first is before training).

    >>> run = {"eval_loss": [(0, 9.0), (2, 3.0), (4, 2.5)], "train_loss": [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]}
    >>> train_loss_by_epoch(run)
    [3.5, 1.5]
    """
    ends = [step for step, _ in run["eval_loss"]]
    return [sum(ls) / len(ls) for ls in ([loss for step, loss in run["train_loss"] if a < step <= b]
                                         for a, b in zip(ends, ends[1:])) if ls]


def good_lr_range(results: dict[str, list[dict]], method: str, within: float = 0.3) -> tuple[float, float]:
    """The lowest and highest rate of a learning-rate sweep ("method lr" names) whose validation loss
    is within `within` of that seed's best on every seed: the range `check_hyperparameters` uses for
    small models."""
    runs = {float(n.split()[1]): r for n, r in results.items() if n.split()[0] == method}
    seeds = range(len(next(iter(runs.values()))))
    best = [min(r[s]["val_loss"] for r in runs.values()) for s in seeds]
    good = [lr for lr, r in runs.items() if all(r[s]["val_loss"] <= (1 + within) * best[s] for s in seeds)]
    return min(good), max(good)


def guide_vs_tiny(stored: dict) -> str:
    """The guide's table next to what the stored sweeps measured on the tiny base, row by row."""
    lr = stored["learning rate"]
    full, lora = good_lr_range(lr, "full"), good_lr_range(lr, "lora")
    (full_best, _), (lora_best, _) = (best_lr(runs) for runs in by_method(lr).values())
    ratio = best_rate_ratio(lr)
    peaks = {n: [round(early_peak(r), 1) for r in runs] for n, runs in stored["schedule"].items()}
    epochs = {n: [best_epoch(r) for r in runs] for n, runs in stored["epochs"].items()}
    batch = {n.split()[-1]: [round(r["val_loss"], 2) for r in runs] for n, runs in stored["batch"].items()}
    lengths = stored["lengths"]
    rows = [
        ("LR, full", "5e-6 – 5e-5", f"best {full_best:g}; within 30% of it: {full[0]:g} – {full[1]:g}",
         "a 4M model needs far larger steps"),
        ("LR, LoRA", "1e-4 – 3e-4", f"best {lora_best:g}; {lora[0]:g} – {lora[1]:g}; {10 ** ratio.delta:.1f}× full's "
         f"(95% CI {10 ** ratio.low:.1f}–{10 ** ratio.high:.1f}×)", "adapters start at zero, low rank"),
        ("schedule", "warmup + cosine", f"peak loss, steps 1-10: no warmup {peaks['cosine, no warmup']} vs "
         f"{peaks['cosine (5% warmup)']}", "Adam's first steps are its largest"),
        ("epochs", "1 – 3", "best epoch {} (whole split), {} (half, each twice)".format(*epochs.values()),
         "later: training loss falls, validation rises"),
        ("batch", "64 – 512", f"equal data: val loss batch 8 {batch['8']}, 32 {batch['32']}, 128 {batch['128']}",
         "fewer steps over little data"),
        ("max length", "> 95% covered", f"p95 = {lengths['95']} tokens; p50 ({lengths['50']}) costs loss",
         "cut replies lose content and EOS"),
        ("weight decay", "0.01 – 0.1", "no measurable effect on overfitting", "lr × wd is tiny per step"),
    ]
    widths = [max(len(str(r[i])) for r in rows + [("row", "guide", "tiny base, stored sweeps", "why")]) for i in range(4)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format("row", "guide", "tiny base, stored sweeps", "why")] + [fmt.format(*r) for r in rows])


def family_score(run: dict, task: str, key: str = "exact_match") -> float:
    """One task family's rate in a stored summary (`float_rates`), NaN when the run has none.

    >>> family_score({"per_task": {"json": {"exact_match": 0.5}}}, "json"), family_score({"per_task": {}}, "json")
    (0.5, nan)
    """
    return run["per_task"].get(task, {}).get(key, float("nan"))


def seed_values(runs: list[dict], key, fmt: str = "{:.3f}") -> str:
    """A table cell: `key` (a summary key or a function of a summary) of each seed's run, "a / b / c".

    >>> seed_values([{"val_loss": 1.0}, {"val_loss": 1.25}], "val_loss", "{:.2f}")
    '1.00 / 1.25'
    """
    return " / ".join(fmt.format(key(r) if callable(key) else r[key]) for r in runs)


def best_val(run: dict) -> float:
    """The lowest validation loss a run logged (`run_hp` summary).

    >>> best_val({"eval_loss": [(0, 9.0), (20, 3.0), (40, 3.5)]})
    3.0
    """
    return min(v for _, v in run["eval_loss"])


def _configs(results: dict, sweep: str) -> tuple[str, dict[str, str]]:
    """A table's config line (the `sft-train` command its rows share) and each row's overrides."""
    command, rows = row_configs(sweep, {int(p): n for p, n in results["lengths"].items()})
    extra = {"epochs": " The course also logs test exact match at every epoch's end (`ExactMatchCallback`).",
             "max length": " The course scores the validation replies whole; `sft-train` cuts them at "
                           "max_length too."}.get(sweep, "")
    line = (f"Each row is `{command} --seed S` (S: the seed) plus the row's config overrides (the course "
            f"passes the same records as lists).{extra}\n")
    def cell(overrides: str) -> str:
        flags, _, words = overrides.partition(" (")
        return (f"`{flags}`" + (f" ({words}" if words else "")) if flags.startswith("--") else overrides

    return line, {name: cell(r) for name, r in rows.items()}


# --- comparing stored runs -----------------------------------------------------------------------

def _scored(run: dict, wording: str | None) -> dict:
    """What a stored run scored: on the test split, or on its extra set `wording`."""
    return run["sets"][wording] if wording else run


def item_scores(runs: list[dict], key: str = "exact", family: str | None = None,
                wording: str | None = None) -> list[list[int]]:
    """Per-item scores of stored runs, one list per seed: `key` "exact" or "format" (1 or 0 per test
    conversation), on the test split or, with `wording`, on that scored set (`run["sets"]`); with
    `family`, only the test items of that task family.

    >>> item_scores([{"exact_items": [1, 0]}, {"exact_items": [1, 1]}])
    [[1, 0], [1, 1]]
    """
    out = [_scored(r, wording)[f"{key}_items"] for r in runs]
    if family:
        tasks = [r["task"] for r in load_split("test")[:len(out[0])]]
        out = [[x for x, task in zip(items, tasks) if task == family] for items in out]
    return out


def compare_sets(runs_by_set: dict[str, list[dict]], a: str, b: str, key: str = "exact",
                 family: str | None = None, wording: str | None = None):
    """Training set `a` against training set `b` (stored runs `{set: [summary per seed]}`), with its
    95% interval (`sft_helpers.stats`): "exact" or "format" paired over the same test items and
    seeds (`family`, `wording`: as in `item_scores`), or a loss ("val_loss", or "loss" of the
    scored set `wording`), one number per seed.

    >>> runs = {"a": [{"val_loss": 1.0}, {"val_loss": 1.1}], "b": [{"val_loss": 2.0}, {"val_loss": 2.2}]}
    >>> compare_sets(runs, "a", "b", "val_loss").supports("<")
    True
    """
    from ..stats import compare, compare_seeds

    if key.endswith("loss"):
        def losses(name):
            return [_scored(r, wording)[key] for r in runs_by_set[name]]
        return compare_seeds(losses(a), losses(b), (a, b))
    return compare(item_scores(runs_by_set[a], key, family, wording),
                   item_scores(runs_by_set[b], key, family, wording), (a, b))


def delta_cell(runs_by_set: dict[str, list[dict]], name: str, ref: str, key: str = "exact") -> str:
    """A table cell: `name` minus `ref` (`compare_sets`) with its 95% interval, briefly (losses to
    2 decimals, rates in points); "" for the reference row itself.

    >>> runs = {"a": [{"val_loss": 1.0}, {"val_loss": 1.1}], "b": [{"val_loss": 2.0}, {"val_loss": 2.3}]}
    >>> delta_cell(runs, "b", "a", "val_loss"), delta_cell(runs, "a", "a", "val_loss")
    ('+1.10 (-0.17 to +2.37)', '')
    """
    if name == ref:
        return ""
    return compare_sets(runs_by_set, name, ref, key).brief(2 if key.endswith("loss") else None)


def delta_lines(runs_by_name: dict[str, list[dict]], ref: str, keys=("val_loss", "exact")) -> list[str]:
    """Under a table: a heading, then each row minus the `ref` row with its 95% interval
    (`compare_sets`: "exact" over the test items and seeds, a loss over seeds), one line per row.

    >>> runs = {"a": [{"val_loss": 1.0}, {"val_loss": 1.1}], "b": [{"val_loss": 2.0}, {"val_loss": 2.3}]}
    >>> delta_lines(runs, "a", ("val_loss",))[1]
    '* b minus a: response val loss +1.10 (-0.17 to +2.37)'
    """
    names = {"val_loss": "response val loss", "exact": "exact match"}
    out = ["Differences, 95% CI (losses over seeds, exact match over test items and seeds):"]
    for name in runs_by_name:
        if name != ref:
            cells = [f"{names.get(k, k)} {delta_cell(runs_by_name, name, ref, k)}" for k in keys]
            out.append(f"* {name} minus {ref}: " + "; ".join(cells))
    return out


def _lr_table(results: dict) -> list[str]:
    lr = results["learning rate"]
    config, rows = _configs(results, "learning rate")
    out = ["#### Learning rate (60 steps of 16 conversations)", "", config,
           "| method | LR | response val loss | exact match | config |", "|---|---|---|---|---|"]
    out += [f"| {name.split()[0]} | {name.split()[1]} | {seed_values(runs, 'val_loss')} | "
            f"{seed_values(runs, 'exact', '{:.0%}')} | {rows[name]} |" for name, runs in lr.items()]
    best = {m: best_lr(runs) for m, runs in by_method(lr).items()}
    fitted = {m: " / ".join(f"{x:.2g}" for x in lrs) for m, lrs in fitted_best_lrs(lr).items()}
    seeds = range(len(next(iter(lr.values()))))
    out += ["", f"Best LR on the grid (lowest mean validation loss): full fine-tuning {best['full'][0]:g} "
            f"({best['full'][1]:.3f}), LoRA {best['lora'][0]:g} ({best['lora'][1]:.3f}). Between grid points "
            f"(`fitted_best_lr`, per seed): full {fitted['full']}, LoRA {fitted['lora']}."]
    if len(seeds) > 1:
        d = best_rate_ratio(lr)
        out.append(f"LoRA's best rate over full fine-tuning's: {10 ** d.delta:.1f}× (95% CI {10 ** d.low:.1f}× to "
                   f"{10 ** d.high:.1f}×, {d.n_seeds} seeds; `best_rate_ratio`).")
    return out


def pretraining_lr(model_id: str = "tiny") -> float:
    """The peak learning rate the course's base was pre-trained at (its `training_stats.json`).

    >>> pretraining_lr()
    0.002
    """
    from ..paths import data_path

    if model_id != "tiny":
        raise ValueError(f"only the course's own base records its pre-training rate, not {model_id!r}")
    return json.loads((data_path("tiny-base") / "training_stats.json").read_text())["lr"]


def rates_apart(results: dict) -> dict:
    """Guide §2 on the tiny base: the pre-training peak rate (`pretraining_lr`) beside the best full
    fine-tuning rates per seed (`fitted_best_lr`) with one rate for everything (sweep "learning
    rate") and for the body alone, the embeddings and output head at `EMBEDDING_LR` (sweep "learning
    rate, embeddings apart"). `ratio`: the body's best over one rate's, paired by seed (a
    `stats.Difference` of log10 rates: the ratio is `10 ** ratio.delta`); `pre_over_one`,
    `pre_over_body`: the pre-training rate over each best (geometric mean over seeds); `low`: the
    response loss at the grid's `lowest` rate with the embeddings apart minus with one rate."""
    from ..stats import compare_seeds

    body = fitted_best_lrs(results["learning rate, embeddings apart"])["full"]
    one = fitted_best_lrs(results["learning rate"])["full"]
    ratio = compare_seeds([math.log10(x) for x in body], [math.log10(x) for x in one],
                          ("body, embeddings apart", "one rate"))
    pre = pretraining_lr()
    lowest = next(iter(results["learning rate, embeddings apart"]))  # the grid's lowest rate, both sweeps
    low = compare_seeds([r["val_loss"] for r in results["learning rate, embeddings apart"][lowest]],
                        [r["val_loss"] for r in results["learning rate"][lowest]],
                        ("embeddings apart", "one rate"))
    return {"pretraining": pre, "one rate": one, "body": body, "ratio": ratio, "lowest": lowest, "low": low,
            "pre_over_one": pre / 10 ** _mean_log(one), "pre_over_body": pre / 10 ** _mean_log(body)}


def rates_apart_lines(study: dict) -> list[str]:
    """`rates_apart` in words, one line each (under docs' table and in lesson 05)."""
    def rates(xs):
        return " / ".join(f"{x:.2g}" for x in xs)
    d = study["ratio"]
    return [f"The base's pre-training peak rate: {study['pretraining']:g}.",
            f"Best full fine-tuning rate per seed (`fitted_best_lr`), one rate for everything: {rates(study['one rate'])}; "
            f"the body's, the embeddings and head at {EMBEDDING_LR:g}: {rates(study['body'])}.",
            f"The body's best over one rate's: {10 ** d.delta:.2g}× (95% CI {10 ** d.low:.2g}× to {10 ** d.high:.2g}×, "
            f"{d.n_seeds} seeds).",
            f"Pre-training rate over the best SFT rate: {study['pre_over_one']:.2g}× (one rate), "
            f"{study['pre_over_body']:.2g}× (the body's).",
            f"At {study['lowest'].split()[-1]} for the body, the embeddings at {EMBEDDING_LR:g} change the response "
            f"val loss by {study['low'].brief(2)} ({study['low'].mean_b:.2f} with one rate)."]


def _lr_apart_table(results: dict) -> list[str]:
    sweep = "learning rate, embeddings apart"
    config, rows = _configs(results, sweep)
    out = [f"#### The body's learning rate, the embeddings and head at {EMBEDDING_LR:g} (60 steps of 16 "
           "conversations)", "", config, "| body LR | response val loss | exact match | config |", "|---|---|---|---|"]
    out += [f"| {name.split()[1]} | {seed_values(runs, 'val_loss')} | {seed_values(runs, 'exact', '{:.0%}')} | "
            f"{rows[name]} |" for name, runs in results[sweep].items()]
    if "learning rate" not in results:
        return out
    return out + ["", " ".join(rates_apart_lines(rates_apart(results)))]


def _mean_log(xs: list[float]) -> float:
    return sum(math.log10(x) for x in xs) / len(xs)


def _schedule_table(results: dict) -> list[str]:
    config, rows = _configs(results, "schedule")
    runs = results["schedule"]
    out = ["#### Schedule (LR 3e-3, 60 steps)", "", config,
           "| schedule | biggest loss jump | peak loss, steps 1-10 | mean loss above the warmed-up run's, steps 1-10 "
           "| final training loss | response val loss | exact match | config |", "|---|---|---|---|---|---|---|---|"]
    warm = runs["cosine (5% warmup)"]
    return out + [f"| {name} | {seed_values(seeds, biggest_jump, '{:.2f}')} | {seed_values(seeds, early_peak, '{:.2f}')} | "
                  f"{' / '.join(f'{v:+.2f}' for v in warmup_excess(seeds, warm))} | "
                  f"{seed_values(seeds, lambda r: r['train_loss'][-1][1], '{:.2f}')} | {seed_values(seeds, 'val_loss')} | "
                  f"{seed_values(seeds, 'exact', '{:.0%}')} | {rows[name]} |" for name, seeds in runs.items()] + [
        "", *delta_lines(runs, "cosine (5% warmup)", ("val_loss",))]  # exact match: 0% in every run


def _epochs_table(results: dict) -> list[str]:
    out = ["#### Epochs (the whole training split, 8 epochs, constant LR 1e-3 after 20 warmup steps; "
           "the first k epochs are a k-epoch run)", "", _configs(results, "epochs")[0],
           "| data | seed | training loss, epoch 1 … 8 | validation loss, epoch 1 … 8 | exact match, epoch 1 … 8 "
           "| best epoch | config |", "|---|---|---|---|---|---|---|"]
    rows = _configs(results, "epochs")[1]
    for name, runs in results["epochs"].items():
        for seed, r in enumerate(runs):
            out.append(f"| {name} | {seed} | {' '.join(f'{v:.2f}' for v in train_loss_by_epoch(r))} | "
                       f"{' '.join(f'{v:.2f}' for _, v in r['eval_loss'][1:])} | "
                       f"{' '.join(f'{v:.0%}' for _, v in r['exact_curve'])} | {best_epoch(r)} | "
                       f"{rows[name]} |")
    return out


def _epochs_cosine_table(results: dict) -> list[str]:
    config, rows = _configs(results, "epochs, cosine")
    out = ["#### Epochs under warmup + cosine (the whole training split; each row its own run)", "", config,
           "| epochs | steps | final training loss | final validation loss | best validation loss (epoch) | "
           "exact match | config |", "|---|---|---|---|---|---|---|"]
    return out + [f"| {name.split()[0]} | {runs[0]['steps']} | {seed_values(runs, lambda r: train_loss_by_epoch(r)[-1], '{:.2f}')} | "
                  f"{seed_values(runs, lambda r: r['eval_loss'][-1][1], '{:.2f}')} | "
                  f"{' / '.join(f'{best_val(r):.2f} ({best_epoch(r)})' for r in runs)} | "
                  f"{seed_values(runs, 'exact', '{:.0%}')} | {rows[name]} |"
                  for name, runs in results["epochs, cosine"].items()] + [
        "", *delta_lines(results["epochs, cosine"], "1 epoch")]


def stored_noise(run: dict) -> float:
    """`loss_noise` of a stored run summary (its logged `train_loss`)."""
    return loss_noise([{"loss": loss} for _, loss in run["train_loss"]])


def _batch_table(results: dict) -> list[str]:
    out = ["#### Effective batch at equal data (1,024 conversations, one epoch, LR 1e-3; micro-batches "
           "of 8, gradient accumulation)", "", _configs(results, "batch")[0],
           "| effective batch | steps | loss noise (second half) | response val loss | exact match | config |",
           "|---|---|---|---|---|---|"]
    rows = _configs(results, "batch")[1]
    return out + [f"| {name.split()[-1]} | {runs[0]['steps']} | {seed_values(runs, stored_noise, '{:.2f}')} | "
                  f"{seed_values(runs, 'val_loss')} | {seed_values(runs, 'exact', '{:.0%}')} | {rows[name]} |"
                  for name, runs in results["batch"].items()] + ["", *delta_lines(results["batch"], "effective batch 8")]


def _batch_steps_table(results: dict) -> list[str]:
    out = ["#### Effective batch at equal steps (30 optimizer steps, LR 1e-3; micro-batches of 8, gradient "
           "accumulation)", "", _configs(results, "batch, equal steps")[0],
           "| effective batch | conversations seen | validation loss, steps 0 … 30 (every 5) | training loss noise "
           "(second half) | response val loss | exact match | config |", "|---|---|---|---|---|---|---|"]
    rows = _configs(results, "batch, equal steps")[1]
    runs_by_batch = results["batch, equal steps"]
    return out + [f"| {name.split()[-1]} | {30 * int(name.split()[-1]):,} | "
                  f"{' / '.join(' '.join(f'{v:.1f}' for _, v in r['eval_loss']) for r in runs)} | "
                  f"{seed_values(runs, stored_noise, '{:.2f}')} | "
                  f"{seed_values(runs, 'val_loss')} | {seed_values(runs, 'exact', '{:.0%}')} | {rows[name]} |"
                  for name, runs in runs_by_batch.items()] + [
        "", *delta_lines(runs_by_batch, next(iter(runs_by_batch)), ("val_loss",))]  # exact: ~0% in 30 steps


def _max_length_table(results: dict) -> list[str]:
    lengths = results["lengths"]
    out = ["#### Max length (60 steps; training split length percentiles: "
           + ", ".join(f"p{p} {n}" for p, n in lengths.items()) + " tokens)", "",
           _configs(results, "max length")[0],
           "| max length | examples truncated | token slots per epoch | response val loss | exact match | "
           "stop rate | format | config |", "|---|---|---|---|---|---|---|---|"]
    rows = _configs(results, "max length")[1]
    return out + [f"| {name} | {runs[0]['truncated']:.0%} | {runs[0]['slots_per_epoch']:,} | "
                  f"{seed_values(runs, 'val_loss')} | {seed_values(runs, 'exact', '{:.0%}')} | "
                  f"{seed_values(runs, 'stop_rate', '{:.0%}')} | {seed_values(runs, 'format_ok', '{:.0%}')} | "
                  f"{rows[name]} |"
                  for name, runs in results["max length"].items()] + [
        "", *delta_lines(results["max length"], "p100: 342 tokens" if "p100: 342 tokens" in results["max length"]
                         else list(results["max length"])[-1])]


def _regularisation_table(results: dict) -> list[str]:
    config, rows = _configs(results, "regularisation")
    out = ["#### Weight decay and dropout (lesson 04's overfitting setup: 16 conversations, 50 epochs)", "",
           config, "| setting | best val loss (step) | final val loss | final / best | config |",
           "|---|---|---|---|---|"]
    for name, runs in results["regularisation"].items():
        curves = [r["eval_loss"] for r in runs]
        bests = [min(c, key=lambda p: p[1]) for c in curves]
        out.append(f"| {name} | {' / '.join(f'{b[1]:.2f} ({b[0]})' for b in bests)} | "
                   f"{' / '.join(f'{c[-1][1]:.2f}' for c in curves)} | "
                   f"{' / '.join(f'{c[-1][1] / b[1]:.2f}' for c, b in zip(curves, bests))} | {rows[name]} |")
    reg = results["regularisation"]
    plain = {n: r for n, r in reg.items() if not n.startswith("LoRA")}  # full fine-tuning
    lora = {n: r for n, r in reg.items() if n.startswith("LoRA")}
    return out + ["", *delta_lines(plain, "weight decay 0.01", ("val_loss",)),
                  *delta_lines(lora, next(iter(lora)), ("val_loss",))[1:]] if lora else out


TABLES = {"learning rate": _lr_table, "learning rate, embeddings apart": _lr_apart_table,
          "schedule": _schedule_table, "epochs": _epochs_table,
          "epochs, cosine": _epochs_cosine_table,
          "batch": _batch_table, "batch, equal steps": _batch_steps_table, "max length": _max_length_table,
          "regularisation": _regularisation_table}


def tables(results: dict, sections=None, configs: bool = False) -> str:
    """Markdown tables of `all_sweeps` results, one value per seed ("seed 0 / seed 1"): every
    section, or those named in `sections` (keys of `TABLES`, e.g. `("regularisation",)`); with
    `configs`, each table's `sft-train` command and a column of each row's overrides (what
    docs/experiments.md shows)."""
    unknown = set(sections or ()) - set(TABLES)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from {list(TABLES)}")
    names = sections or [n for n in TABLES if n in results]
    blocks = [TABLES[name](results) for name in names]
    seeds = results.get("seeds", {})
    blocks = [lines[:2] + ([f"Seeds {' / '.join(map(str, seeds[name]))} (values per seed, in this order).", ""]
                           if name in seeds else []) + lines[2:] for name, lines in zip(names, blocks)]
    return "\n\n".join("\n".join(lines if configs else _without_configs(lines)) for lines in blocks)


def _without_configs(lines: list[str]) -> list[str]:
    """A table's lines without its config line and its last ("config") column."""
    out = []
    for line in lines:
        if line.startswith("Each row is `sft-train"):
            continue
        out.append(line.rsplit(" | ", 1)[0] + " |" if line.startswith("|") and line.endswith(" |")
                   else line.removesuffix("---|") if line.startswith("|---") else line)
    return out


def write_docs(results: dict, docs: Path | None = None) -> None:
    """Store `results` (with `"seeds"`: `{sweep: [seed, ...]}`) in docs/hyperparameters.json (the
    notebook plots them) and their tables in docs/experiments.md between the `<!-- hyperparameters -->`
    markers."""
    docs = docs or DOCS_JSON.parent
    (docs / "hyperparameters.json").write_text(results_json(results), encoding="utf-8")
    by_seeds: dict[tuple, list[str]] = {}
    for sweep, seeds in results["seeds"].items():
        by_seeds.setdefault(tuple(seeds), []).append(sweep)
    commands = "; ".join(f"`python -m sft_helpers.course.experiments hyperparameters --seeds {' '.join(map(str, seeds))}"
                         f" --only {' '.join(repr(n) if ' ' in n else n for n in sweeps)}`"
                         for seeds, sweeps in by_seeds.items())
    body = (f"{commands} (values per seed, in the order of the seeds each table names):\n\n"
            f"{tables(results, configs=True)}")
    write_block(docs / "experiments.md", "hyperparameters", "Lesson 05: hyperparameters", body)


def with_seeds(results: dict, seeds) -> dict:
    """`results` of `all_sweeps` with `"seeds"`: `{sweep: list(seeds)}` for each of its sweeps.

    >>> with_seeds({"schedule": {}, "lengths": {}}, (0, 1, 2))["seeds"]
    {'schedule': [0, 1, 2]}
    """
    return {**results, "seeds": {name: list(seeds) for name in results if name in TABLES}}


def load_stored() -> dict:
    """The sweeps stored by the command (docs/hyperparameters.json); `stored["seeds"][sweep]` are the
    seeds of each sweep, in the order of its runs."""
    return json.loads(DOCS_JSON.read_text())
