"""The README's headline results, generated from the stored experiments (never typed by hand).

`python -m sft_helpers.course.findings` rewrites the block between `<!-- findings:start -->` and
`<!-- findings:end -->` in README.md from docs/masking.json and docs/echo.json (lesson 01), docs/finetune.json (lesson 03),
docs/hyperparameters.json (lesson 05) and docs/data_strategy.json (lesson 06); a test checks that the README holds what this module writes, so
a re-run experiment that changes a number fails the suite until the README is regenerated.
"""

from __future__ import annotations

import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def lines() -> list[str]:
    """One Markdown bullet per headline result, each with its 95% interval, seeds and items."""
    from . import data_strategy, experiments, hyperparameters
    from .hyperparameters import compare_sets

    hp, ds = hyperparameters.load_stored(), data_strategy.load_stored()
    masking, finetune = (experiments.load_stored(name)["runs"] for name in ("masking", "finetune"))
    echo = experiments.load_stored("echo")
    out = [f"- Lesson 01, what full-sequence loss costs: cloze recall of pre-training facts, "
           f"{compare_sets(masking, 'full', 'completion-only', 'recall')}; exact match on the test split, "
           f"{compare_sets(masking, 'full', 'completion-only')}.",
           f"- Lesson 01 with long prompts ({echo['notes']} pasted atlas sentences before every question, "
           f"{echo['prompt_share']:.0%} of the training tokens): exact match, "
           f"{compare_sets(echo['runs'], 'full', 'completion-only')}; no run copies its prompt.",
           f"- Lesson 03, QLoRA against LoRA on the fp32 base (both with the embeddings trained): exact match, "
           f"{compare_sets(finetune, 'QLoRA + embeddings', 'LoRA + embeddings')}."]
    ratio = hyperparameters.best_rate_ratio(hp["learning rate"])
    out += [f"- Lesson 05: LoRA's best learning rate is {10 ** ratio.delta:.1f}× full fine-tuning's (95% CI "
           f"{10 ** ratio.low:.1f}× to {10 ** ratio.high:.1f}×, {ratio.n_seeds} seeds, the embeddings trained)."]
    if "learning rate, embeddings apart" in hp:
        study = hyperparameters.rates_apart(hp)
        d = study["ratio"]
        out.append(f"- Lesson 05: the base was pre-trained at {study['pretraining']:g}; its best SFT rate is "
                   f"{study['pre_over_one']:.2g}× lower, {study['pre_over_body']:.2g}× with the new chat-token "
                   f"embeddings at their own rate (the body's best over one rate's: {10 ** d.delta:.2g}×, 95% CI "
                   f"{10 ** d.low:.2g}× to {10 ** d.high:.2g}×, {d.n_seeds} seeds), not the guide's 10-100×.")
    quality = ds["quality"]
    clean, noisy, kept = quality
    out.append(f"- Lesson 06, quality: exact match, {compare_sets(quality, kept, noisy)}; "
               f"{compare_sets(quality, clean, noisy)}.")
    if blind := ds.get("blind quality"):
        (name,) = blind
        report = ds["blind quality filter"]
        out.append(f"- Lesson 06, a quality filter without ground truth (format, length and each reply's loss "
                   f"under a model fine-tuned once on the noisy set) removes {report['removed']:,} records at "
                   f"{report['precision']:.1%} precision, recall {report['recall']:.1%}; training on what it "
                   f"keeps, exact match: {compare_sets({**quality, **blind}, name, noisy)}.")
    div = ds["diversity"]
    gap = data_strategy.phrasing_gap(div)
    out.append(f"- Lesson 06, phrasing (the training split asks its knowledge questions in 11-13 wordings per "
               f"relation, the narrow variant in the test's 2-3): questions in held-out wordings, {gap['new wordings']}; in the "
               f"training wordings, {gap['seen wordings']}. The default recipe's bar, held-out accuracy "
               f"against half the seen one: {gap['training split']['new vs half seen']}.")
    out.append(f"- Lesson 06, task mix: leaving the json family out, exact match on the whole test split: "
               f"{compare_sets(div, 'without json', 'training split')}; response validation loss: "
               f"{compare_sets(div, 'without json', 'training split', 'val_loss'):.2}.")
    dedup = ds["dedup"]
    raw = next(iter(dedup))
    semantic = data_strategy.semantic_name(dedup)
    out.append(f"- Lesson 06, semantic de-duplication with all-MiniLM-L6-v2 (its threshold chosen on half of the "
               f"records) keeps {dedup[semantic][0]['n_train']:,} of {dedup[raw][0]['n_train']:,} records; "
               f"training on them, exact match: {compare_sets(dedup, semantic, raw)}.")
    return out


def block() -> str:
    """The README block: where the numbers come from, then `lines()`."""
    intro = ("Written by `python -m sft_helpers.course.findings` from the stored runs (tiny base, CPU); every "
             "table, with its seeds and item counts, is in [docs/experiments.md](docs/experiments.md).")
    return "\n".join([intro, "", *lines()])


def main(argv: list[str] | None = None) -> int:
    """Rewrite the README's findings block."""
    from .runs import write_block

    write_block(README, "findings", "What the experiments found", block())
    print(f"{README.name}: findings block rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
