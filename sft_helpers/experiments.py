"""Small, seeded SFT experiments the notebooks run and compare (same data, steps and seed)."""

from __future__ import annotations

from .data import load_split
from .evaluate import chat_eval
from .masking import build_labels
from .models import load_model
from .training import train_sft

# lesson 01's three loss variants: keyword arguments of run_sft_variant
MASKING_VARIANTS = {"full": dict(mode="full"), "completion-only": dict(mode="completion_only"),
                    "prompt weight 0.1": dict(prompt_weight=0.1)}


def run_sft_variant(model_id: str = "tiny", mode: str = "completion_only", prompt_weight: float | None = None,
                    steps: int = 250, lr: float = 1e-3, batch_size: int = 16, seed: int = 0,
                    eval_every: int = 50, train_records: list[dict] | None = None) -> dict:
    """Fine-tune a fresh copy of `model_id` with one loss variant and measure it.

    Training labels follow `mode` (or `prompt_weight`); the validation loss is always taken on the
    validation split's *response tokens only* (completion-only labels), the same tokens for every
    variant, so the curves are comparable. The test split is then answered greedily (`chat_eval`).
    Returns `{"history", "val_response_loss", "scores", "label_report"}` (and the trained `model`).
    """
    model, tok = load_model(model_id)
    train, report = build_labels(train_records or load_split("train"), tok, mode, prompt_weight=prompt_weight)
    val, _ = build_labels(load_split("validation"), tok, "completion_only")
    history = train_sft(model, tok, train, val, lr=lr, max_steps=steps, batch_size=batch_size, seed=seed,
                        eval_steps=eval_every, logging_steps=eval_every)
    return {"history": history, "val_response_loss": [h for h in history if "eval_loss" in h][-1]["eval_loss"],
            "scores": chat_eval(model, tok, load_split("test")), "label_report": report, "model": model}


def variant_table(results: dict[str, dict], tasks: list[str] | None = None) -> str:
    """A plain-text table: one row per variant, response-only val loss, overall rates, exact match
    per task family."""
    first = next(iter(results.values()))["scores"]["per_task"]
    tasks = tasks or list(first)
    head = f"{'variant':<22}{'val loss':>9}{'exact':>7}{'format':>8}{'stop':>6}{'echo':>6}  " + " ".join(
        f"{t[:9]:>9}" for t in tasks)
    rows = [head, "-" * len(head)]
    for name, r in results.items():
        s = r["scores"]
        rows.append(f"{name:<22}{r['val_response_loss']:>9.3f}{s['exact_match']:>7.0%}{s['format_ok']:>8.0%}"
                    f"{s['stop_rate']:>6.0%}{s['echo_rate']:>6.0%}  "
                    + " ".join(f"{s['per_task'][t]['exact_match']:>9.0%}" for t in tasks))
    return "\n".join(rows)


def masking_seeds(seeds=(0, 1), steps: int = 250, lr: float = 1e-3, batch_size: int = 8) -> str:
    """Run lesson 01's three loss variants for several seeds; a Markdown table of the results
    (what the notebook's assertions were chosen from)."""
    lines = ["| seed | variant | response val loss | exact | format | stop | echo | knowledge exact |",
             "|---|---|---|---|---|---|---|---|"]
    for seed in seeds:
        for name, kw in MASKING_VARIANTS.items():
            r = run_sft_variant("tiny", steps=steps, lr=lr, batch_size=batch_size, seed=seed, **kw)
            s = r["scores"]
            lines.append(f"| {seed} | {name} | {r['val_response_loss']:.3f} | {s['exact_match']:.1%} | "
                         f"{s['format_ok']:.1%} | {s['stop_rate']:.1%} | {s['echo_rate']:.1%} | "
                         f"{s['per_task']['knowledge']['exact_match']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="lesson experiments, several seeds")
    ap.add_argument("experiment", choices=["masking"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    print(masking_seeds(tuple(ap.parse_args().seeds)))
