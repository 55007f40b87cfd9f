"""The course's data under `data/`: (re)generating it and reading each file.

`build_data(out_dir, seed)` regenerates all of `data/` (world, pre-training corpus, SFT splits, planted
duplicates and paraphrases, the noisy training variant, the reworded test questions, the
narrow-phrasing training variant, the task families) byte for byte from a seed; `load_*` read each
file (chat files through `sft_helpers.records.load_conversations`, which checks every record).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..paths import DATA_DIR, data_path
from ..records import load_conversations
from .conversations import (
    SPLIT_SIZES,
    noisy_conversations,
    plant_duplicates,
    plant_paraphrases,
    question_wordings,
    reworded,
    widened,
    sft_conversations,
    task_families,
)
from .world import SPLITS, make_world, pretraining_corpus


def load_split(split: str) -> list[dict]:
    """The committed SFT split `train`, `validation` or `test`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return load_conversations(data_path(f"sft_{split}.jsonl"))


def load_world():
    """The committed world, as a `World`."""
    from .world import City, Country, Person, World

    raw = json.loads(data_path("world.json").read_text())
    return World(raw["seed"], tuple(Country(**{**c, "cities": tuple(c["cities"])}) for c in raw["countries"]),
                 tuple(City(**c) for c in raw["cities"]), tuple(Person(**p) for p in raw["people"]))


def load_pretraining_corpus() -> list[str]:
    return [json.loads(line)["text"] for line in data_path("pretrain.jsonl").open(encoding="utf-8")]


def _load_table(name: str) -> list[dict]:
    return [json.loads(line) for line in data_path(name).open(encoding="utf-8") if line.strip()]


def load_duplicates() -> list[dict]:
    """The side table of the duplicates planted in the train split: `{"id", "duplicate_of", "kind"}` each
    (`kind` "exact" or "near"); `dedup.planted_pairs(load_split("train"), load_duplicates())` indexes them."""
    return _load_table("sft_train_duplicates.jsonl")


def load_paraphrases() -> tuple[list[dict], list[dict]]:
    """`(records, table)`: 60 paraphrase duplicates of train records (the first question reworded, same
    answer; `conversations.plant_paraphrases`) and their side table `{"id", "duplicate_of", "kind":
    "paraphrase"}`. Append them to the split to get ground-truth pairs for semantic de-duplication:

    >>> from sft_helpers.dedup import planted_pairs
    >>> records, table = load_paraphrases()
    >>> train = load_split("train") + records
    >>> pairs = planted_pairs(train, table)
    >>> len(pairs), train[pairs[0][0]]["messages"][-1] == train[pairs[0][1]]["messages"][-1]
    (60, True)
    """
    return load_conversations(data_path("sft_train_paraphrases.jsonl")), _load_table("sft_train_paraphrase_pairs.jsonl")


def load_noisy_train() -> list[dict]:
    """7,200 more train-split conversations (train-pool entities only; the clean ones almost never equal
    a train record) of which 40% have a corrupted last reply; each has `"noise"`: "clean", "wrong_answer", "broken_format"
    or "truncated" (`conversations.noisy_conversations`). `clean_vs_noisy` builds the lesson's two sets.

    >>> from collections import Counter
    >>> Counter(r["noise"] == "clean" for r in load_noisy_train())
    Counter({True: 4320, False: 2880})
    """
    return load_conversations(data_path("sft_train_noisy.jsonl"))


def clean_vs_noisy(n_clean: int, factor: int = 4, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Quality vs quantity: `(clean, noisy)` where `clean` is `n_clean` train records drawn at random (not
    a planted copy) and `noisy` is `factor` times as many: those same records plus `(factor - 1) *
    n_clean` from `load_noisy_train()` (the first ones, 40% of them corrupted), shuffled; every record
    has a `"noise"` label. With `factor=4` about 30% of `noisy` is bad: train both for the same number of
    steps, then filter `noisy` with quality checks (`evaluate.format_ok`, length) and compare.

    >>> clean, noisy = clean_vs_noisy(100)
    >>> len(clean), len(noisy), round(sum(r["noise"] != "clean" for r in noisy) / len(noisy), 1)
    (100, 400, 0.3)
    """
    import random

    rng = random.Random(f"{seed}-clean-vs-noisy")
    copies = {d["id"] for d in load_duplicates()}
    clean = [{**r, "noise": "clean"} for r in rng.sample([r for r in load_split("train") if r["id"] not in copies],
                                                          n_clean)]
    noisy = clean + load_noisy_train()[:(factor - 1) * n_clean]
    rng.shuffle(noisy)
    return clean, noisy


def load_reworded_test() -> list[dict]:
    """The test split's knowledge and one_word questions asked in wordings held out of every training file
    (`conversations.HELD_OUT_QUESTIONS`): id `<test id>-reworded`, same answer, a `"wording"` field
    (`"age/held2"`). Compare with the same records of `load_split("test")` (fixed wordings)."""
    return load_conversations(data_path("sft_test_reworded.jsonl"))


def load_narrow_phrasing() -> list[dict]:
    """The train split's knowledge questions (not the planted copies) asked in the 2-3 fixed wordings
    per relation the validation and test splits use (`conversations._QUESTIONS`), where the split
    itself draws from 11-13 (`WIDE_QUESTIONS`): same ids, same answers, a `"wording"` field. The same
    training set with narrower phrasing, at the same number of examples:

    >>> narrow = {r["id"]: r for r in load_narrow_phrasing()}
    >>> train = load_split("train")
    >>> narrowed = [narrow.get(r["id"], r) for r in train]
    >>> len(narrowed) == len(train), sum(r is not t for r, t in zip(narrowed, train)) == len(narrow)
    (True, True)
    """
    return load_conversations(data_path("sft_train_narrow_phrasing.jsonl"))


def load_families() -> dict[str, dict]:
    """`data/families.json`: each task family's `asks`, `checked`, `share` and record count per split
    (`conversations.task_families`)."""
    return json.loads(data_path("families.json").read_text(encoding="utf-8"))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def fixed_wordings(records: list[dict], world) -> list[dict]:
    """The knowledge records of `records` (asked in the fixed wordings), each naming its `"wording"`."""
    knowledge = [r for r in records if r["task"] == "knowledge"]
    return [{**r, "wording": w} for r, w in zip(knowledge, question_wordings(knowledge, world))]


def build_data(out_dir: str | Path = DATA_DIR, seed: int = 0) -> dict[str, int]:
    """Regenerate the world, corpus and SFT splits into `out_dir`; returns row counts per file.
    Same seed, same bytes. (The tokenizer and base model are made by `sft-course pretrain`.)"""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(seed)
    (out / "world.json").write_text(world.to_json(), encoding="utf-8")
    corpus = pretraining_corpus(world)
    _write_jsonl(out / "pretrain.jsonl", [{"text": t} for t in corpus])
    counts = {"pretrain.jsonl": len(corpus)}
    drawn = {}
    for split in SPLITS:
        rows = drawn[split] = sft_conversations(world, split)
        if split == "train":  # knowledge questions in 11-13 wordings each (lesson 06 measured why)
            narrow, rows = rows, widened(rows, world, seed)
            drawn["train narrow"], drawn["train"] = narrow, rows
            rows, planted = plant_duplicates(rows, seed)
            _write_jsonl(out / "sft_train_duplicates.jsonl", planted)
            counts["sft_train_duplicates.jsonl"] = len(planted)
        _write_jsonl(out / f"sft_{split}.jsonl", rows)
        counts[f"sft_{split}.jsonl"] = len(rows)
    return {**counts, **_build_variants(out, world, drawn, seed)}


def _build_variants(out: Path, world, drawn: dict[str, list[dict]], seed: int) -> dict[str, int]:
    """The files made from the drawn splits (before planting duplicates), each from its own random stream."""
    paraphrases, table = plant_paraphrases(drawn["train"], world, seed)
    rows = {"sft_train_paraphrases.jsonl": paraphrases, "sft_train_paraphrase_pairs.jsonl": table,
            # noisy records ask in the fixed wordings: avoiding the narrow split avoids the widened one
            "sft_train_noisy.jsonl": noisy_conversations(world, seed, 3 * SPLIT_SIZES["train"],
                                                         drawn["train narrow"]),
            "sft_test_reworded.jsonl": reworded(drawn["test"], world, seed),
            "sft_train_narrow_phrasing.jsonl": fixed_wordings(drawn["train narrow"], world)}
    for name, records in rows.items():
        _write_jsonl(out / name, records)
    families = task_families({s: drawn[s] for s in SPLITS})
    (out / "families.json").write_text(json.dumps(families, indent=1) + "\n", encoding="utf-8")
    return {**{name: len(r) for name, r in rows.items()}, "families.json": len(families)}
