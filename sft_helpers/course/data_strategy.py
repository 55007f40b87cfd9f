"""Lesson 06: data strategy. Quality over quantity, diversity of tasks and of phrasing, and
duplicates, each measured by training the tiny base on one data set against another.

Pure functions build the data sets (`quality_problems` / `quality_filter` filter a noisy set,
`without_family` / `skewed` change the task mix, `narrowed` rewords the questions, `with_repeats`
plants repeated items, `deduplicated` and `semantic_dedup` run the three de-duplication
methods); every run is `hyperparameters.run_hp` with `records=` and `eval_sets=`, the course
recipe at a fixed number of steps. `python -m sft_helpers.course.experiments data-strategy --seeds 0 1 2` runs them all on
three seeds (about an hour on 2 CPU cores) and writes docs/data_strategy.json and the tables in
docs/experiments.md; the notebook reads them (`load_stored`) next to what it runs live.
"""

from __future__ import annotations

import json
import random
import re
import statistics
from collections import Counter
from pathlib import Path

from .conversations import REFUSAL
from .data import clean_vs_noisy, load_noisy_train, load_paraphrases, load_reworded_test, load_split
from .data import load_narrow_phrasing, load_world
from .hyperparameters import compare_sets, delta_cell, family_score, item_scores  # noqa: F401 (lesson 06 imports some)
from .world import JOBS

DOCS_JSON = Path(__file__).resolve().parents[2] / "docs" / "data_strategy.json"
# every run: the course recipe (full fine-tuning, lr 1e-3, 16 conversations a step, packed)
STEPS = 200
TEST_ITEMS = 300  # the whole test split (and its reworded questions) for per-family results


# --- quality ------------------------------------------------------------------------------------

def format_problem(task: str, reply: str) -> str | None:
    """What is wrong with the shape of `reply` for its task family, or None: JSON that does not
    parse to the keys age/city/job, a list line without "- ", more than one word where one is asked,
    a sentence without its full stop, a refusal other than the course's, a transform answer that is
    not a number, a list of numbers or a word in capitals.

    >>> format_problem("json", "{'age': 30}"), format_problem("knowledge", "They live in Velm.")
    ('JSON does not parse', None)
    """
    if task == "json":
        try:
            value = json.loads(reply)
        except ValueError:
            return "JSON does not parse"
        return None if isinstance(value, dict) and set(value) == {"age", "city", "job"} else "JSON keys"
    if task == "markdown_list":
        return None if all(line.startswith("- ") for line in reply.splitlines()) else "list line without '- '"
    if task == "one_word":
        return None if len(reply.split()) == 1 else "more than one word"
    if task == "refusal":
        return None if reply == REFUSAL else "not the course's refusal"
    if task == "transform":
        shapes = (r"\d+", r"\d+(, \d+)+", r"[A-Z]+")
        return None if any(re.fullmatch(s, reply) for s in shapes) else "not a transform answer"
    return None if reply.endswith(".") else "no full stop"


def atlas_values(world) -> dict[str, set[str]]:
    """For every name in the atlas (person, city, country): the values a correct reply about it may
    state. A person: age, city, job; a city: country, population (as written, "101,000"), residents;
    a country: capital, number of cities, and each city's values and its residents' (a profile).

    >>> values = atlas_values(load_world())
    >>> person = load_world().people[0]
    >>> {str(person.age), person.city, person.job} <= values[person.name]
    True
    """
    residents: dict[str, list] = {}
    for p in world.people:
        residents.setdefault(p.city, []).append(p)
    values = {p.name: {str(p.age), p.city, p.job} for p in world.people}
    for c in world.cities:
        values[c.name] = {c.country, f"{c.population:,}"} | {p.name for p in residents.get(c.name, [])}
    for k in world.countries:
        values[k.name] = {k.capital, str(len(k.cities)), *k.cities}
        for city in k.cities:
            values[k.name] |= values[city]
            for p in residents.get(city, []):
                values[k.name] |= values[p.name]
    return values


def _user_text(record: dict) -> str:
    """The user turns, lower-cased with spacing collapsed: names match ignoring case and spacing
    ("how old is  ada lovel?" asks about Ada Lovel)."""
    return " ".join(" ".join(m["content"] for m in record["messages"] if m["role"] == "user").split()).lower()


def _transform_answer(question: str) -> str | None:
    """The right answer of a transform question (uppercase, addition, sorting), None if not one."""
    if m := re.fullmatch(r"Write the word (\w+) in capital letters\.", question):
        return m[1].upper()
    if m := re.fullmatch(r"What is (\d+) plus (\d+)\?", question):
        return str(int(m[1]) + int(m[2]))
    if m := re.fullmatch(r"Sort these numbers from smallest to largest: ([\d, ]+)\.", question):
        return ", ".join(map(str, sorted(int(x) for x in m[1].split(","))))
    return None


def answer_problem(record: dict, world, values: dict[str, set[str]] | None = None) -> str | None:
    """Whether the last reply agrees with the atlas, the source the data says it answers from: every
    name and number it states must belong to an entity the user named (`atlas_values`); a list of a
    country's cities must name them all; a transform must compute. None when consistent.

    >>> world = load_world()
    >>> p = world.people[0]
    >>> ask = {"role": "user", "content": f"How old is {p.name}?"}
    >>> answer_problem({"task": "one_word", "messages": [ask, {"role": "assistant", "content": "999"}]}, world)
    "'999' is not in the atlas for the names asked about"
    """
    values = values if values is not None else atlas_values(world)
    users = _user_text(record)
    reply = record["messages"][-1]["content"]
    if record.get("task") == "transform":
        right = _transform_answer(record["messages"][-2]["content"])
        return None if right is None or reply == right else f"{reply!r} is not {right!r}"
    asked = asked_entities(record, values)
    allowed = set(asked).union(*(values[n] for n in asked))
    names = "|".join(sorted([*values, *JOBS], key=len, reverse=True))
    for m in re.finditer(rf"\b(?:{names})\b|\d[\d,]*\d|\d", reply):
        if m.group() not in allowed and m.group().lower() not in users:
            return f"{m.group()!r} is not in the atlas for the names asked about"
    if record.get("task") == "markdown_list":
        country = next((k for k in world.countries if k.name.lower() in users), None)
        listed = {line[2:].strip() for line in reply.splitlines()}
        if country and listed != set(country.cities):
            return f"lists {len(listed)} of {country.name}'s {len(country.cities)} cities"
    return None


def reply_losses(model, tokenizer, records: list[dict]) -> list[float]:
    """Each record's last-reply loss under `model`, in order: the completion-only labels up to the
    reply's end-of-turn (`hyperparameters.reply_labels`, what every course run's validation loss
    scores), the mean over the reply's tokens."""
    from ..training import example_losses
    from .hyperparameters import reply_labels

    labelled = reply_labels(records, tokenizer)
    if len(labelled) != len(records):
        raise ValueError(f"{len(records) - len(labelled)} of {len(records)} records have no reply to score")
    return example_losses(model, tokenizer, labelled)


def self_scored_losses(records: list[dict], steps: int | None = None, seed: int = 0,
                       model_id: str = "tiny") -> list[float]:
    """Fine-tune a fresh copy of the base on `records` themselves (the course's recipe, about 16
    conversations per step; `steps` by default one pass over them), then score each record's last
    reply under it (`reply_losses`). No labels and no second source: after one pass, a reply the model still finds
    surprising disagrees with what the rest of the data teaches (a fact stated otherwise elsewhere)
    or with its family's usual shape. `loss_outliers` turns the losses into flags."""
    from ..recipe import run_sft
    from .lanes import lane, run_config

    steps = lane(model_id).steps(steps or -(-len(records) // 16))
    cfg = run_config(model=model_id, max_steps=steps, seed=seed, logging_steps=steps, validation=None, test=None)
    run = run_sft(cfg, records)
    return reply_losses(run.model, run.tokenizer, records)


def loss_outliers(records: list[dict], losses: list[float], z: float = 3.0) -> list[str | None]:
    """For each record, why its reply loss is an outlier within its task family, or None: above the
    family's median by more than `z` robust standard deviations (1.4826 × the median absolute
    deviation, which the outliers themselves barely move). A rule with no labels; `z=3` is the
    usual cut for "far from the rest".

    >>> rs = [{"task": "a"}] * 6
    >>> loss_outliers(rs, [1.0, 1.1, 0.9, 1.0, 1.05, 4.0])[-2:]
    [None, 'reply loss 4.00, family median 1.02 + 3 robust SD = 1.25']
    """
    by_family: dict[str, list[float]] = {}
    for r, loss in zip(records, losses):
        by_family.setdefault(r.get("task", "?"), []).append(loss)
    cut = {}
    for task, xs in by_family.items():
        median = statistics.median(xs)
        spread = 1.4826 * statistics.median(abs(x - median) for x in xs)
        cut[task] = (median, median + z * spread)
    out = []
    for r, loss in zip(records, losses):
        median, limit = cut[r.get("task", "?")]
        out.append(f"reply loss {loss:.2f}, family median {median:.2f} + {z:g} robust SD = {limit:.2f}"
                   if loss > limit else None)
    return out


def quality_problems(records: list[dict], min_share: float = 0.5, min_median: int = 20, atlas: bool = True,
                     losses: list[float] | None = None, z: float = 3.0) -> list[list[str]]:
    """For each record, the quality checks its last reply fails: its task family's format
    (`format_problem`), its length (shorter than `min_share` of its family's median reply length
    in `records`: a cut reply; only for families whose median is at least `min_median` characters,
    as a one-word or numeric answer's length says nothing), with `atlas` its consistency with the
    atlas (`answer_problem`: the world's ground truth, which a learner's own data does not have),
    and with `losses` (one reply loss per record, e.g. `self_scored_losses`) whether it is a loss
    outlier of its family (`loss_outliers`, cut at `z`), each as "check: reason". An empty list:
    the record passes.

    >>> clean, noisy = clean_vs_noisy(20)
    >>> sum(not p for p in quality_problems(clean)) == len(clean)
    True
    """
    world = load_world()
    values = atlas_values(world)
    lengths: dict[str, list[int]] = {}
    for r in records:
        lengths.setdefault(r.get("task", "?"), []).append(len(r["messages"][-1]["content"]))
    median = {task: statistics.median(n) for task, n in lengths.items()}
    outliers = loss_outliers(records, losses, z) if losses is not None else [None] * len(records)
    out = []
    for r, outlier in zip(records, outliers):
        task, reply = r.get("task", "?"), r["messages"][-1]["content"]
        found = {"format": format_problem(task, reply),
                 "length": f"{len(reply)} characters, family median {median[task]:g}"
                 if median[task] >= min_median and len(reply) < min_share * median[task] else None,
                 "atlas": answer_problem(r, world, values) if atlas else None,
                 "likelihood": outlier}
        out.append([f"{check}: {p}" for check, p in found.items() if p])
    return out


def quality_filter(records: list[dict], **checks) -> tuple[list[dict], dict]:
    """`(kept, report)`: the records passing every check of `quality_problems` (`checks`: its
    keywords, e.g. `atlas=False, losses=...` for a filter without ground truth), and a report of how
    many were removed (`removed`, `by_check`).
    `by_check` counts each removed record once, under the first check it fails. With `"noise"`
    labels on the records, also `precision` (share of removed records that were noisy) and `recall` (share of noisy records
    removed), per noise kind in `recall_by_kind`.

    >>> clean, noisy = clean_vs_noisy(50)
    >>> kept, report = quality_filter(noisy)
    >>> report["precision"], report["recall"] > 0.9
    (1.0, True)
    """
    problems = quality_problems(records, **checks)
    kept = [r for r, p in zip(records, problems) if not p]
    by_check = Counter(p.split(":")[0] for ps in problems for p in ps[:1])  # the first check it fails
    report = {"records": len(records), "kept": len(kept), "removed": len(records) - len(kept),
              "by_check": dict(by_check)}
    if all("noise" in r for r in records):
        noisy = [r["noise"] != "clean" for r in records]
        removed = [bool(p) for p in problems]
        hits = sum(n and m for n, m in zip(noisy, removed))
        report["precision"] = hits / max(sum(removed), 1)
        report["recall"] = hits / max(sum(noisy), 1)
        kinds = sorted({r["noise"] for r in records} - {"clean"})
        report["recall_by_kind"] = {k: sum(bool(p) for r, p in zip(records, problems) if r["noise"] == k)
                                    / sum(r["noise"] == k for r in records) for k in kinds}
    return kept, report


def blind_quality_filter(records: list[dict], seed: int = 0, z: float = 3.0) -> tuple[list[dict], dict]:
    """The quality filter a learner can run on their own data: format and length checks plus the
    self-scored reply loss (`self_scored_losses`, outliers past `z`), no atlas. `(kept, report)` as
    `quality_filter`; with noise labels the report scores it against them."""
    return quality_filter(records, atlas=False, losses=self_scored_losses(records, seed=seed), z=z)


# --- diversity ----------------------------------------------------------------------------------

def without_family(records: list[dict], family: str) -> list[dict]:
    """`records` without the task family `family` (the others in their order).

    >>> [r["task"] for r in without_family([{"task": "json"}, {"task": "knowledge"}], "json")]
    ['knowledge']
    """
    return [r for r in records if r.get("task") != family]


def skewed(records: list[dict], family: str, share: float = 0.9, seed: int = 0) -> list[dict]:
    """As many records as `records`, `share` of them from `family` (drawn with replacement when the
    family has too few) and the rest from the other families (drawn without), shuffled: a 90/10 mix.

    >>> mix = skewed([{"task": "a"}] * 50 + [{"task": "b"}] * 50, "a", 0.9)
    >>> len(mix), sum(r["task"] == "a" for r in mix)
    (100, 90)
    """
    rng = random.Random(f"{seed}-skewed")
    ours, others = [r for r in records if r.get("task") == family], without_family(records, family)
    n_ours = round(share * len(records))
    mix = rng.choices(ours, k=n_ours) + rng.sample(others, len(records) - n_ours)
    rng.shuffle(mix)
    return mix


def narrowed(records: list[dict]) -> list[dict]:
    """`records` with each knowledge question of the train split replaced by the same question in
    one of the 2-3 fixed wordings per relation (`data.load_narrow_phrasing`, same id and answer),
    where the split draws from 11-13: narrower phrasing, same examples.

    >>> train = load_split("train")
    >>> narrow = narrowed(train)
    >>> len(narrow) == len(train), sum(n is not t for n, t in zip(narrow, train)) > 700
    (True, True)
    """
    narrow = {r["id"]: r for r in load_narrow_phrasing()}
    return [narrow.get(r.get("id"), r) for r in records]


def phrasing_sets() -> dict[str, list[dict]]:
    """The test split's knowledge and one-word questions twice: in its fixed wordings, which every
    training set holds (`"seen wordings"`) and in wordings held out of every training file (`"new wordings"`,
    `data.load_reworded_test`), the same questions and answers.

    >>> sets = phrasing_sets()
    >>> len(sets["seen wordings"]) == len(sets["new wordings"]), sets["new wordings"][0]["id"].endswith("-reworded")
    (True, True)
    """
    reworded = load_reworded_test()
    test = {r["id"]: r for r in load_split("test")}
    return {"seen wordings": [test[r["id"].removesuffix("-reworded")] for r in reworded], "new wordings": reworded}



def phrasing_gap(diversity: dict[str, list[dict]], sets=("narrow phrasing", "training split")) -> dict:
    """What the training data's phrasing does to the test questions in held-out wordings, with 95%
    intervals over items and seeds (`stats.compare`, paired: the same questions in both wordings).
    For each training set in `sets`: `new vs seen` (held-out minus training wordings) and `new vs
    half seen` (positive: held-out accuracy above half the seen one, the default recipe's bar); and
    between the two sets, `new wordings` and `seen wordings` (second set minus first).
    `diversity`: stored runs `{set: [summary per seed]}` with `sets[...]["exact_items"]`."""
    from ..stats import compare

    out = {}
    for name in sets:
        new, seen = (item_scores(diversity[name], wording=w) for w in ("new wordings", "seen wordings"))
        out[name] = {"new vs seen": compare(new, seen, ("new wordings", "seen wordings")),
                     "new vs half seen": compare(new, [[0.5 * x for x in s] for s in seen],
                                                 ("new wordings", "half the seen accuracy"), percent=True)}
    first, second = sets
    for wording in ("new wordings", "seen wordings"):
        out[wording] = compare_sets(diversity, second, first, wording=wording)
    return out


# --- duplicates ---------------------------------------------------------------------------------

def with_repeats(records: list[dict], times: int = 10, n_items: int = 20, seed: int = 0
                 ) -> tuple[list[dict], dict[str, list[dict]]]:
    """`(training set, probes)`: `records` plus `n_items` wrong-answer items (`load_noisy_train`, one
    value swapped for a false one) repeated `times` times and `n_items` others seen once, shuffled in;
    `probes` holds those two groups and `n_items` never trained on (`"×10"`, `"×1"`, `"never"`). A
    model that answers a probe with its false value has memorised it: no fact it knows gives it.

    >>> train, probes = with_repeats(load_split("train")[:100], times=10, n_items=5)
    >>> len(train), [len(p) for p in probes.values()]
    (155, [5, 5, 5])
    """
    rng = random.Random(f"{seed}-repeats")
    wrong = [r for r in load_noisy_train() if r["noise"] == "wrong_answer" and r["task"] in ("knowledge", "one_word")]
    items = rng.sample(wrong, 3 * n_items)
    probes = {f"×{times}": items[:n_items], "×1": items[n_items:2 * n_items], "never": items[2 * n_items:]}
    train = records + probes[f"×{times}"] * times + probes["×1"]
    rng.shuffle(train)
    return train, probes


def with_paraphrases() -> tuple[list[dict], list[tuple[int, int]]]:
    """`(records, planted)`: the training split with the 60 paraphrase duplicates appended, and the
    planted duplicate pairs (exact, near and paraphrase) as indices into it.

    >>> records, planted = with_paraphrases()
    >>> len(records), len(planted)
    (2580, 180)
    """
    from .data import load_duplicates
    from ..dedup import planted_pairs

    paraphrases, table = load_paraphrases()
    records = load_split("train") + paraphrases
    return records, planted_pairs(records, load_duplicates() + table)


def deduplicated(records: list[dict], near_threshold: float = 0.8) -> dict:
    """The two cheap de-duplication methods of `sft_helpers.dedup` on `records`: `"exact"`
    (normalised text) and `"near"` (MinHash at Jaccard `near_threshold`, per system prompt);
    `{method: DedupResult}`. `semantic_dedup` adds the third.

    >>> records, _ = with_paraphrases()
    >>> {name: len(result.removed) for name, result in deduplicated(records).items()}
    {'exact': 120, 'near': 121}
    """
    from ..dedup import exact_duplicates, near_duplicates_per_system_prompt

    return {"exact": exact_duplicates(records), "near": near_duplicates_per_system_prompt(records, near_threshold)}


def asked_entities(record: dict, values: dict[str, set[str]]) -> frozenset[str]:
    """The atlas names (`atlas_values` keys) the user turns of `record` mention, ignoring case and
    spacing.

    >>> p = load_world().people[0]
    >>> asked_entities({"messages": [{"role": "user", "content": f"how old is {p.name.lower()}?"}]},
    ...                atlas_values(load_world())) == {p.name}
    True
    """
    users = _user_text(record)
    return frozenset(n for n in values if n.lower() in users)


def same_fact(a: dict, b: dict, values: dict[str, set[str]]) -> bool:
    """Whether two records ask about the same entities and get the same answer (normalised): the
    same fact asked twice, in the same or another wording, a semantic duplicate nobody planted.

    >>> v = atlas_values(load_world()); p = load_world().people[0]
    >>> ask = lambda q: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "42."}]}
    >>> same_fact(ask(f"How old is {p.name}?"), ask(f"What is the age of {p.name}?"), v)
    True
    """
    key = fact_key(a, values)
    return key is not None and key == fact_key(b, values)


def fact_key(record: dict, values: dict[str, set[str]]) -> tuple | None:
    """What a record asks, as `(entities asked about, normalised answer)`, or None when it names no
    atlas entity: two records with one key ask the same fact (`same_fact`, `fact_pairs`)."""
    from ..dedup import normalise_text

    entities = asked_entities(record, values)
    return (entities, normalise_text(record["messages"][-1]["content"])) if entities else None


def method_scores(results: dict, planted, kinds: dict[tuple[int, int], str] | None = None,
                  records: list[dict] | None = None) -> dict[str, dict]:
    """Per method: precision and recall (`dedup.precision_recall`) of its pairs against `planted`,
    records removed, and with `kinds` (`{pair: "exact" | "near" | "paraphrase"}`) recall per kind:
    what each method misses. With the `records`, also `same_fact`: the share of its pairs that are
    planted or ask the same fact (`same_fact`), and `removed_same_fact`: the share of removed
    records that ask the same fact as the record their cluster keeps.

    >>> from sft_helpers.dedup import DedupResult
    >>> r = DedupResult("exact", None, 4, clusters=[[0, 1]], kept=[0, 2, 3], removed=[1], pairs=[(0, 1, 1.0)])
    >>> method_scores({"exact": r}, [(0, 1), (2, 3)], {(0, 1): "exact", (2, 3): "paraphrase"})["exact"]["by_kind"]
    {'exact': 1.0, 'paraphrase': 0.0}
    """
    from ..dedup import clusters_from_pairs, precision_recall

    out = {}
    for method, result in results.items():
        row = {**precision_recall(result.pairs, planted), "removed": len(result.removed)}
        if records is not None:
            values = atlas_values(load_world())
            groups = {i: g for g, c in enumerate(clusters_from_pairs(len(records), planted)) for i in c}
            right = sum(groups.get(i, -1) == groups.get(j, -2) or same_fact(records[i], records[j], values)
                        for i, j, *_ in result.pairs)
            row["same_fact"] = right / max(len(result.pairs), 1)
            why = removal_reasons(result, records, planted, values)
            row["removed_same_fact"] = sum(w != "another fact" for w in why.values()) / max(len(why), 1)
        if kinds:
            groups = {i: g for g, c in enumerate(result.clusters) for i in c}
            row["by_kind"] = {k: sum(groups.get(i, -1) == groups.get(j, -2) for (i, j), kk in kinds.items() if kk == k)
                              / sum(kk == k for kk in kinds.values()) for k in sorted(set(kinds.values()))}
        out[method] = row
    return out


def removal_reasons(result, records: list[dict], planted, values: dict | None = None) -> dict[int, str]:
    """Why a de-duplication `result` removed each record it removed, against the record its cluster
    keeps: "planted copy" (the two are copies of one planted group), "same fact" (they ask the same
    fact, `same_fact`) or "another fact". `values`: `atlas_values` of the world (computed if None).

    >>> from sft_helpers.dedup import DedupResult
    >>> ask = lambda q: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "x"}]}
    >>> recs = [ask("Hi"), ask("Hi"), ask("Age of Velm?"), ask("Job of Velm?")]
    >>> r = DedupResult("m", None, 4, clusters=[[0, 1], [2, 3]], kept=[0, 2], removed=[1, 3], pairs=[])
    >>> removal_reasons(r, recs, [(0, 1)], values={})
    {1: 'planted copy', 3: 'another fact'}
    """
    from ..dedup import clusters_from_pairs

    values = atlas_values(load_world()) if values is None else values
    copies = {i: g for g, c in enumerate(clusters_from_pairs(len(records), planted)) for i in c}
    kept_of = {i: c[0] for c in result.clusters for i in c[1:]}
    return {i: "planted copy" if i in copies and copies[i] == copies.get(k)
            else "same fact" if same_fact(records[i], records[k], values) else "another fact"
            for i, k in kept_of.items()}


def paraphrase_pairs() -> list[tuple[int, int]]:
    """The 60 planted paraphrase pairs of `with_paraphrases` (indices into its records)."""
    return sorted(pair for pair, kind in planted_kinds().items() if kind == "paraphrase")


def planted_kinds() -> dict[tuple[int, int], str]:
    """`{pair: kind}` for the planted pairs of `with_paraphrases` ("exact", "near", "paraphrase")."""
    from .data import load_duplicates
    from ..dedup import planted_pairs

    records, _ = with_paraphrases()
    table = load_duplicates() + load_paraphrases()[1]
    return {pair: t["kind"] for t in table for pair in planted_pairs(records, [t])}


def hard_negatives(seed: int = 0) -> list[tuple[int, int]]:
    """For each planted paraphrase pair `(i, j)` of `with_paraphrases`, a pair `(i, k)`: record `k`
    of the split asks in record `i`'s own wording, the same task, about another entity (never one
    of `i`'s planted copies). Lexically close, different meaning: what a semantic threshold must
    keep apart.

    >>> records, _ = with_paraphrases()
    >>> i, k = hard_negatives()[0]
    >>> records[i]["messages"][-1] != records[k]["messages"][-1]
    True
    """
    from .conversations import question_wordings

    from ..dedup import planted_pairs

    records, planted = with_paraphrases()
    wordings = question_wordings(records, load_world())
    split = len(load_split("train"))
    copies = {frozenset(p) for p in planted}
    rng = random.Random(f"{seed}-hard-negatives")
    out = []
    for i, _ in planted_pairs(records, load_paraphrases()[1]):
        same = [k for k in range(split) if k != i and wordings[k] == wordings[i]
                and records[k]["task"] == records[i]["task"] and frozenset((i, k)) not in copies
                and records[k]["messages"][-1] != records[i]["messages"][-1]]
        if same:
            out.append((i, rng.choice(same)))
    return out


def fact_pairs(records: list[dict]) -> list[tuple[int, int]]:
    """Every pair `(i, j)`, `i < j`, of records that ask about the same entities and get the same
    answer (`same_fact`): semantic duplicates nobody planted, grouped by what they ask.

    >>> p = load_world().people[0]
    >>> ask = lambda q: {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "42."}]}
    >>> fact_pairs([ask(f"How old is {p.name}?"), ask("Hi"), ask(f"Give me the age of {p.name}.")])
    [(0, 2)]
    """
    from itertools import combinations

    values = atlas_values(load_world())
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(records):
        if (key := fact_key(r, values)) is not None:
            groups.setdefault(key, []).append(i)
    return sorted(pair for g in groups.values() for pair in combinations(g, 2))


SEMANTIC_THRESHOLDS = tuple(round(0.80 + 0.01 * k, 2) for k in range(20))  # 0.80 ... 0.99


def semantic_dedup(records: list[dict], planted, embedder=None, seed: int = 0,
                   thresholds=SEMANTIC_THRESHOLDS) -> tuple:
    """`(result, choice)`: semantic de-duplication (`dedup.semantic_duplicates` of the user and
    assistant turns, embedded by all-MiniLM-L6-v2 unless another `embedder` is given) at a
    threshold chosen on half of the records and scored on the other half
    (`dedup.split_half_threshold`). A duplicate is a planted pair or two records asking the same
    fact (`fact_pairs`). `choice` holds the threshold, the chosen half's and the held-out half's
    precision and recall, the chosen half's curve, and `held out paraphrases`: the recall of the
    `paraphrase_pairs` on the held-out half."""
    from ..dedup import at_threshold, precision_recall, semantic_duplicates, split_half_threshold
    from ..models import sentence_embedder

    embedder = embedder or sentence_embedder()
    found = semantic_duplicates(records, embedder, threshold=min(thresholds), roles=("user", "assistant"),
                                progress=False)
    duplicates = sorted(set(map(tuple, planted)) | set(fact_pairs(records)))
    choice = split_half_threshold(found, duplicates, len(records), seed, list(thresholds))
    held = set(choice["held out records"])
    paraphrases = [p for p in paraphrase_pairs() if set(p) <= held]
    kept = [p for p in found.pairs if set(p[:2]) <= held and p[2] >= choice["threshold"]]
    choice["held out paraphrases"] = precision_recall(kept, paraphrases)
    return at_threshold(found, choice["threshold"]), choice


def semantic_name(names) -> str:
    """The semantic method's name among de-duplication set or method names ("semantic (0.94)").

    >>> semantic_name(["exact", "near (MinHash 0.8)", "semantic (0.94)"])
    'semantic (0.94)'
    """
    return next(name for name in names if name.startswith("semantic"))


def lesson_dedup(embedder=None) -> tuple[dict, dict]:
    """`(results, choice)`: the three methods on `with_paraphrases()` records, named as the tables
    name them ("exact", "near (MinHash 0.8)", "semantic (<threshold>)"), and the semantic threshold's
    `choice` (`semantic_dedup`)."""
    records, planted = with_paraphrases()
    found = deduplicated(records)
    semantic, choice = semantic_dedup(records, planted, embedder)
    return {"exact": found["exact"], "near (MinHash 0.8)": found["near"],
            f"semantic ({semantic.threshold:g})": semantic}, choice


# --- the experiments ------------------------------------------------------------------------------

def experiment_sets(seed: int = 0, dedup_results: dict | None = None, only=None) -> dict[str, dict]:
    """Every training set of the lesson (or of the groups in `only`), `{name: {"records",
    "eval_sets", "test_items", "group"}}`:

    * quality: 600 clean conversations, the same plus 1,800 noisy ones (4×, 30% bad) and what of
      those 2,400 passes `quality_filter`;
    * blind quality: what of the 2,400 passes `blind_quality_filter` (no ground truth; it trains a
      reference model, so it is a group of its own), its spec with the filter's `"filter report"`;
    * diversity: the training split, without the json family, skewed 90% knowledge / 10% the rest,
      and with narrow phrasing (`narrowed`), each scored on the test split and on `phrasing_sets`;
    * duplicates: the split plus 20 wrong-answer items ×10 and 20 ×1 (`with_repeats`, scored on
      the probes), and the split plus paraphrases raw and after each de-duplication method
      (`lesson_dedup`, unless its `dedup_results` are given).
    """
    train = load_split("train")
    clean, noisy = clean_vs_noisy(600, factor=4, seed=seed)
    filtered, _ = quality_filter(noisy)
    repeated, probes = with_repeats(train, seed=seed)
    with_dups, _ = with_paraphrases()
    if dedup_results is None:
        dedup_results, _ = lesson_dedup()
    phrasing = phrasing_sets()
    blind, blind_report = blind_quality_filter(noisy, seed) if not only or "blind quality" in only else (None, None)
    sets = {
        "quality": {"clean 600": clean, "noisy 2,400": noisy, f"filtered {len(filtered):,}": filtered},
        "blind quality": {} if blind is None else {"filtered without ground truth": blind},  # size: per seed
        "diversity": {"training split": train, "without json": without_family(train, "json"),
                      "90% knowledge": skewed(train, "knowledge", 0.9, seed), "narrow phrasing": narrowed(train)},
        "repeats": {"×10 and ×1 wrong items": repeated},
        "dedup": {"raw (split + paraphrases)": with_dups,
                  **{name: result.keep(with_dups) for name, result in dedup_results.items()}},
    }
    eval_sets = {"diversity": phrasing, "repeats": probes}
    return {name: {"records": records, "group": group, "eval_sets": eval_sets.get(group),
                   "test_items": TEST_ITEMS if group in ("quality", "blind quality", "diversity") else 120,
                   **({"filter report": blind_report} if group == "blind quality" else {})}
            for group, named in sets.items() for name, records in named.items() if not only or group in only}


def set_file(name: str, seed: int) -> str:
    """The file name `write_sets` gives a training set.

    >>> set_file("filtered 1,650", 0)
    'filtered-1650-seed0.jsonl'
    """
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace(",", "").replace("×", "x")).strip("-")
    return f"{slug}-seed{seed}.jsonl"


def write_sets(folder: str | Path, seed: int = 0) -> list[Path]:
    """Write every training set of `experiment_sets(seed)` as a JSONL file in `folder` (named by
    `set_file`), so that a row of the lesson's tables re-runs with `sft-train --train FILE`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, spec in experiment_sets(seed).items():
        path = folder / set_file(name, seed)
        with open(path, "w", encoding="utf-8") as f:
            for r in spec["records"]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def run_config_line(results: dict) -> str:
    """The `sft-train` command every training row of the tables shares (`--train` and `--seed` are
    the row's: the set as written by `write_sets`)."""
    from ..recipe import config_command
    from .hyperparameters import hp_config

    base = hp_config(steps=results["steps"], test_items=TEST_ITEMS)
    command = config_command(base).replace(" --train data/sft_train.jsonl", "")
    return (f"Each training row is `{command} --train SETS/<set>-seed<S>.jsonl --seed S` (S: the seed; "
            "the course scores the first 60 validation conversations, and 120 test ones in the repeats and "
            "dedup rows), its set written by "
            "`python -m sft_helpers.course.experiments data-sets --out SETS --seeds S`.")


def run_experiments(seeds=(0, 1, 2), steps: int = STEPS, only=None, workers: int | None = None) -> dict:
    """Train the tiny base on every set of `experiment_sets` (or those of the groups in `only`) for
    `steps` steps on each seed, side by side in worker processes; `{"seeds", group: {name: [summary
    per seed]}}` with each set's size, what `quality_filter` reports and the de-duplication scores."""
    from .runs import run_in_workers
    from .hyperparameters import _summary, run_hp
    dedup_results, choice = lesson_dedup()
    jobs, names, blind_reports = [], [], {}
    for seed in seeds:
        for name, spec in experiment_sets(seed, dedup_results, only).items():
            names.append((spec["group"], name))
            if "filter report" in spec:
                blind_reports[seed] = spec["filter report"]
            jobs.append(dict(records=spec["records"], eval_sets=spec["eval_sets"], test_items=spec["test_items"],
                             steps=steps, seed=seed))
    runs = run_in_workers(run_hp, jobs, workers, keep_models=False, desc="data-strategy runs")
    out: dict = {"seeds": list(seeds), "steps": steps}
    for (group, name), run in zip(names, runs):
        out.setdefault(group, {}).setdefault(name, []).append(_summary(run))
    records, planted = with_paraphrases()
    out["dedup scores"] = method_scores(dedup_results, planted, planted_kinds(), records)
    out["semantic threshold"] = {k: v for k, v in choice.items() if k != "held out records"}
    noisy = clean_vs_noisy(600, factor=4)[1]
    out["quality filter"] = quality_filter(noisy)[1]
    if not only or "blind quality" in only:
        out["blind quality filter"] = blind_reports.get(0) or blind_quality_filter(noisy)[1]  # seed 0's
    return out


# --- the data card --------------------------------------------------------------------------------

_ENGLISH = {"the", "is", "are", "a", "of", "and", "in", "to", "they", "has", "its", "live", "work", "as", "i"}


def reply_language(text: str) -> str:
    """A rough language tag for a reply: "non-Latin" when a letter is outside ASCII, "English" when
    it has an English function word, else "no prose" (numbers, JSON, a list of names, one word).

    >>> reply_language("They live in Velm."), reply_language('{"age": 30}'), reply_language("Ils vivent à Velm.")
    ('English', 'no prose', 'non-Latin')
    """
    if any(ch.isalpha() and not ch.isascii() for ch in text):
        return "non-Latin"
    words = set(re.findall(r"[a-z]+", text.lower()))
    return "English" if words & _ENGLISH else "no prose"


def data_report(records: list[dict], tokenizer=None, near_threshold: float = 0.8) -> dict:
    """A data card for chat records: records per task family, last-reply length per family
    (characters, or tokens with a `tokenizer`: median and 95th percentile), duplicates (exact and
    near: `diagnostics.find_duplicates`), the share of refusals (`diagnostics.is_refusal`), the
    language of replies (`reply_language`) and how many records were skipped as not valid
    conversations. `plots.plot_data_card` draws it.

    >>> card = data_report(load_split("validation"))
    >>> card["records"], card["families"]["knowledge"], card["skipped"]
    (240, 111, 0)
    """
    from ..diagnostics import find_duplicates, is_refusal, split_malformed

    good, bad = split_malformed(records)
    replies = [(r.get("task", "?"), r["messages"][-1]["content"]) for r in good]
    unit = "tokens" if tokenizer is not None else "characters"

    def size(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if tokenizer is not None else len(text)

    lengths: dict[str, list[int]] = {}
    for task, reply in replies:
        lengths.setdefault(task, []).append(size(reply))
    families = Counter(task for task, _ in replies)
    dups = Counter(kind for _, _, kind in find_duplicates(good, near_threshold))
    return {"records": len(records), "skipped": len(bad), "families": dict(families.most_common()),
            "reply_length": {t: {"median": statistics.median(n), "p95": sorted(n)[int(0.95 * (len(n) - 1))],
                                 "unit": unit} for t, n in lengths.items()},
            "lengths": lengths,
            "duplicates": {"exact": dups.get("exact", 0), "near": dups.get("near", 0) + dups.get("minhash", 0)},
            "refusal_share": sum(is_refusal(reply) for _, reply in replies) / max(len(replies), 1),
            "languages": dict(Counter(reply_language(reply) for _, reply in replies).most_common())}


# --- tables and stored results ------------------------------------------------------------------

def _items(runs_by_set: dict[str, list[dict]]) -> str:
    runs = next(iter(runs_by_set.values()))
    n = len(runs[0].get("exact_items", ()))
    return f"test split, {n} items × {len(runs)} seeds" if n else f"test split, {len(runs)} seeds"


def _delta(runs_by_set: dict[str, list[dict]], name: str, ref: str, key: str = "exact") -> str:
    """A table cell: `name` minus `ref` with its 95% interval, or "" for the reference row and for
    runs stored without per-item scores."""
    if key == "exact" and "exact_items" not in runs_by_set[name][0]:
        return ""
    return delta_cell(runs_by_set, name, ref, key)


def semantic_choice_text(choice: dict) -> str:
    """One sentence on how `semantic_dedup` chose its threshold and what it scored on pairs the
    choice never saw.

    >>> row = {"found": 10, "planted": 8, "precision": 0.75, "recall": 0.5}
    >>> semantic_choice_text({"threshold": 0.94, "chosen on": row, "held out": row,
    ...                       "held out paraphrases": {**row, "planted": 30, "recall": 0.6}})[:60]
    'Semantic threshold 0.94, chosen by F1 on half of the records'
    """
    held, para = choice["held out"], choice["held out paraphrases"]
    return (f"Semantic threshold {choice['threshold']:g}, chosen by F1 on half of the records "
            f"(a duplicate: a planted pair or the same fact asked twice); on the other half it finds "
            f"{held['found']:,} pairs, precision {held['precision']:.1%}, recall {held['recall']:.1%} of "
            f"{held['planted']:,} duplicate pairs, and {para['recall']:.0%} of its {para['planted']} "
            f"planted paraphrase pairs.")


def tables(results: dict) -> str:
    """The Markdown tables of `run_experiments` results (values per seed, "seed 0 / seed 1")."""
    from functools import partial

    from .hyperparameters import seed_values

    per_seed = partial(seed_values, fmt="{:.0%}")  # shares, unless a format is given
    lines = []
    if "quality" in results:
        runs_by_set = {**results["quality"], **results.get("blind quality", {})}
        ref = next(n for n in runs_by_set if n.startswith("noisy"))
        lines += [f"**Quality vs quantity** (same steps; {_items(runs_by_set)}, greedy; Δ: exact match minus "
                  f"the {ref} set's, points, 95% CI over items and seeds):", "",
                  "| training set | records | exact match | Δ exact match | format ok | response val loss |",
                  "|---|---|---|---|---|---|"]
        for name, runs in runs_by_set.items():
            sizes = {r.get("n_train", 0) for r in runs}
            size = f"{runs[0].get('n_train', 0):,}" if len(sizes) == 1 else per_seed(runs, "n_train", fmt="{:,}")
            lines.append(f"| {name} | {size} | {per_seed(runs, lambda r: r['exact'])} | "
                         f"{_delta(runs_by_set, name, ref)} | {per_seed(runs, lambda r: r['format_ok'])} | "
                         f"{per_seed(runs, lambda r: r['val_loss'], fmt='{:.2f}')} |")
        for key, what in (("quality filter", "Quality filter (format, length, atlas)"),
                          ("blind quality filter", "Quality filter without ground truth (format, length, "
                                                   "self-scored reply loss)")):
            if q := results.get(key):
                lines += ["", f"{what} on the noisy set of seed 0: {q['removed']:,} of {q['records']:,} removed "
                              f"({', '.join(f'{k} {v}' for k, v in q['by_check'].items())}), precision "
                              f"{q['precision']:.1%}, recall {q['recall']:.1%} ("
                              + ", ".join(f"{k.replace('_', ' ')} {v:.0%}" for k, v in q["recall_by_kind"].items())
                              + ")."]
        lines.append("")
    if "diversity" in results:
        runs_by_set = results["diversity"]
        ref = next(iter(runs_by_set))
        lines += [f"**Diversity** ({_items(runs_by_set)}; json: JSON replies well formed; knowledge: exact match; knowledge and "
                  f"one-word questions in seen and in new wordings; Δ: exact match minus the {ref}'s, points, 95% "
                  "CI over items and seeds):", "",
                  "| training set | exact match | Δ exact match | response val loss | json | knowledge | seen wordings "
                  "| new wordings |", "|---|---|---|---|---|---|---|---|"]
        for name, runs in runs_by_set.items():
            lines.append(f"| {name} | {per_seed(runs, lambda r: r['exact'])} | {_delta(runs_by_set, name, ref)} | "
                         f"{per_seed(runs, lambda r: r['val_loss'], fmt='{:.2f}')} | "
                         f"{per_seed(runs, lambda r: family_score(r, 'json', 'format_ok'))} | "
                         f"{per_seed(runs, lambda r: family_score(r, 'knowledge'))} | "
                         f"{per_seed(runs, lambda r: r['sets']['seen wordings']['exact'])} | "
                         f"{per_seed(runs, lambda r: r['sets']['new wordings']['exact'])} |")
        lines.append("")
    if "repeats" in results:
        (name, runs), = results["repeats"].items()
        lines += [f"**Repeated items** ({name}): the false answer reproduced, and the loss on it:", "",
                  "| probes | false answer reproduced | response loss |", "|---|---|---|"]
        for probe in runs[0]["sets"]:
            lines.append(f"| {probe} | {per_seed(runs, lambda r: r['sets'][probe]['exact'])} | "
                         f"{per_seed(runs, lambda r: r['sets'][probe]['loss'], fmt='{:.2f}')} |")
        lines.append(f"| validation split (held out) | | {per_seed(runs, lambda r: r['val_loss'], fmt='{:.2f}')} |")
        lines.append("")
    if "dedup scores" in results:
        lines += ["**De-duplication** of the split plus 60 paraphrases (180 planted pairs):", "",
                  "| method | removed | precision | recall | exact | near | paraphrase | pairs planted or same fact |"
                  " removed: same fact as kept |", "|---|---|---|---|---|---|---|---|---|"]
        for name, s in results["dedup scores"].items():
            k = s["by_kind"]
            lines.append(f"| {name} | {s['removed']:,} | {s['precision']:.1%} | {s['recall']:.1%} | "
                         f"{k['exact']:.0%} | {k['near']:.0%} | {k['paraphrase']:.0%} | "
                         f"{s.get('same_fact', float('nan')):.1%} | {s.get('removed_same_fact', float('nan')):.1%} |")
        if choice := results.get("semantic threshold"):
            lines += ["", semantic_choice_text(choice)]
        lines.append("")
    if "dedup" in results:
        runs_by_set = results["dedup"]
        ref = next(iter(runs_by_set))
        lines += [f"**Training on each de-duplicated set** ({_items(runs_by_set)}; Δ: minus the {ref} set's, 95% CI; "
                  "exact match over items and seeds, loss over seeds):", "",
                  "| training set | records | exact match | Δ exact match | response val loss | Δ val loss |",
                  "|---|---|---|---|---|---|"]
        for name, runs in runs_by_set.items():
            lines.append(f"| {name} | {runs[0].get('n_train', '?'):,} | {per_seed(runs, lambda r: r['exact'])} | "
                         f"{_delta(runs_by_set, name, ref)} | {per_seed(runs, lambda r: r['val_loss'], fmt='{:.2f}')} | "
                         f"{_delta(runs_by_set, name, ref, 'val_loss')} |")
    return "\n".join(lines).rstrip()


def write_docs(results: dict, docs: Path | None = None) -> None:
    """Store `results` in docs/data_strategy.json (the notebook reads them) and their tables in
    docs/experiments.md between the `<!-- data-strategy -->` markers."""
    from .runs import results_json, write_block

    docs = docs or DOCS_JSON.parent
    (docs / DOCS_JSON.name).write_text(results_json(results), encoding="utf-8")
    seeds = results["seeds"]
    body = (f"`python -m sft_helpers.course.experiments data-strategy --seeds {' '.join(map(str, seeds))}` "
            f"({results['steps']} steps of 16 conversations each run; values per seed, "
            f"\"seed {' / seed '.join(map(str, seeds))}\"). {run_config_line(results)}\n\n{tables(results)}")
    write_block(docs / "experiments.md", "data-strategy", "Lesson 06: data strategy", body)


def load_stored() -> dict:
    """The results stored by the command (docs/data_strategy.json), `stored["seeds"]` their seeds."""
    return json.loads(DOCS_JSON.read_text(encoding="utf-8"))


def family_rates(runs_by_set: dict[str, list[dict]], names=None, key: str = "exact_match") -> dict[str, dict]:
    """`{family: {set name: key averaged over seeds}}` from stored runs (`load_stored()["diversity"]`),
    for `names` (default: all), families in the order of the first run: what `plots.plot_rates` draws.

    >>> run = {"per_task": {"json": {"exact_match": 0.5}}}
    >>> family_rates({"a": [run, run]})
    {'json': {'a': 0.5}}
    """
    names = list(names or runs_by_set)
    families = list(runs_by_set[names[0]][0]["per_task"])
    return {f: {n: statistics.mean(family_score(r, f, key) for r in runs_by_set[n]) for n in names} for f in families}
