"""The planted data variants under `data/` (issue 15): paraphrase duplicates, the noisy training variant,
held-out and widened question wordings, the task families. Each is checked against the world's facts."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from sft_helpers.course.conversations import (
    _ANSWERS,
    HELD_OUT_QUESTIONS,
    NOISE_KINDS,
    PARAPHRASE_MIX,
    SPLIT_SIZES,
    TASK_MIX,
    WIDE_QUESTIONS,
    _QUESTIONS,
    _wording_index,
)
from sft_helpers.course.data import (
    clean_vs_noisy,
    load_duplicates,
    load_families,
    load_noisy_train,
    load_paraphrases,
    load_reworded_test,
    load_split,
    load_narrow_phrasing,
    load_world,
)
from sft_helpers.dedup import exact_duplicates, planted_pairs
from sft_helpers.dedup import normalise_text
from sft_helpers.evaluate import format_ok

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def world():
    return load_world()


@pytest.fixture(scope="module")
def index(world):
    return _wording_index(world)


@pytest.fixture(scope="module")
def train():
    return load_split("train")


@pytest.fixture(scope="module")
def noisy():
    return load_noisy_train()


@pytest.fixture(scope="module")
def training_files(train, noisy):
    """Every file a model is trained on (the test split's reworded questions must be in none)."""
    return {"train": train, "paraphrases": load_paraphrases()[0], "noisy": noisy, "narrow": load_narrow_phrasing()}


def first_user(record: dict) -> str:
    return next(m["content"] for m in record["messages"] if m["role"] == "user")


def truth(record: dict, index: dict, world) -> tuple[str, str] | None:
    """`(relation, true value)` of a record's first question, from the world (None if not a fact question)."""
    wording, entity = index.get(normalise_text(first_user(record)), (None, None))
    rel = wording and wording.split("/")[0]
    if rel not in _QUESTIONS:
        return None
    if rel == "capital":
        return rel, world.country(entity).capital
    if rel in ("country", "population"):
        city = world.city(entity)
        return rel, city.country if rel == "country" else f"{city.population:,}"
    person = next(p for p in world.people if p.name == entity)
    return rel, {"home": person.city, "age": str(person.age), "job": person.job}[rel]


def leaks(records: list[dict], world) -> list[tuple[str, str]]:
    """Validation- or test-pool entities named in training records: any person or country, and any city
    except as the home of a train-pool person named in the same record."""
    other = [e.name for kind in ("people", "countries") for e in getattr(world, kind) if e.split != "train"]
    cities = [c.name for c in world.cities if c.split != "train"]
    homes = {p.name: p.city for p in world.people if p.split == "train"}
    pattern = re.compile(r"(?<![A-Za-z])(" + "|".join(map(re.escape, other + cities)) + r")(?![A-Za-z])",
                         re.IGNORECASE)
    out = []
    for r in records:
        text = "\n".join(m["content"] for m in r["messages"]).lower()  # near copies are lower-cased
        allowed = {homes[p].lower() for p in homes if p.lower() in text}
        out += [(r["id"], m) for m in pattern.findall(text) if m not in allowed]
    return out


# ---------------------------------------------------------------------------------------------
# every variant: valid, unique ids, no entity of another pool in training files

@pytest.mark.parametrize("name", ["train", "paraphrases", "noisy", "narrow"])
def test_training_variants_name_no_validation_or_test_entity(training_files, world, name):
    assert leaks(training_files[name], world) == []


def test_leak_check_catches_a_test_pool_person(world, train):
    person = next(p for p in world.people if p.split == "test")
    record = {"id": "x", "messages": [{"role": "user", "content": f"Where does {person.name} live?"},
                                      {"role": "assistant", "content": "They live in Velm."}]}
    assert leaks([record], world) == [("x", person.name.lower())]


@pytest.mark.parametrize("records", [lambda: load_paraphrases()[0], load_noisy_train, load_reworded_test,
                                     load_narrow_phrasing])
def test_variant_ids_are_unique(records):
    ids = [r["id"] for r in records()]
    assert len(ids) == len(set(ids)) > 0


# ---------------------------------------------------------------------------------------------
# paraphrase duplicates

def test_paraphrases_reword_the_question_and_keep_every_answer(train):
    records, table = load_paraphrases()
    by_id = {r["id"]: r for r in train}
    assert [t["kind"] for t in table] == ["paraphrase"] * 60 and [t["id"] for t in table] == [r["id"] for r in records]
    assert Counter(r["task"] for r in records) == Counter(PARAPHRASE_MIX)
    copies = {d["id"] for d in load_duplicates()}
    for t, r in zip(table, records):
        src = by_id[t["duplicate_of"]]
        assert t["duplicate_of"] not in copies and r["task"] == src["task"]
        assert [m for m in r["messages"] if m["role"] != "user"] == [m for m in src["messages"] if m["role"] != "user"]
        assert normalise_text(first_user(r)) != normalise_text(first_user(src)), r["id"]


def test_paraphrases_are_not_string_duplicates_but_planted_pairs_find_them(train):
    records, table = load_paraphrases()
    together = train + records
    pairs = planted_pairs(together, table)
    assert len(pairs) == 60 and all(i < len(train) <= j for i, j in pairs)
    found = {(i, j) for i, j, _ in exact_duplicates(together).pairs}
    assert found.isdisjoint(pairs)
    assert not {normalise_text(first_user(r)) for r in records} & {normalise_text(first_user(r)) for r in train}


# ---------------------------------------------------------------------------------------------
# the noisy training variant

def test_noisy_variant_has_exactly_forty_percent_labelled_noise(noisy):
    counts = Counter(r["noise"] for r in noisy)
    assert len(noisy) == 3 * SPLIT_SIZES["train"] and set(counts) == {"clean", *NOISE_KINDS}
    assert sum(counts[k] for k in NOISE_KINDS) == round(0.4 * len(noisy))
    assert {r["task"] for r in noisy if r["noise"] == "broken_format"} == {"json", "markdown_list", "one_word"}
    assert {r["task"] for r in noisy} == set(TASK_MIX)


def test_noisy_formats_break_exactly_where_labelled(noisy):
    """Broken formats and truncations fail `format_ok` (a list cut between items keeps its shape, and
    transform's shape is read from the reference itself); clean records and wrong answers pass it."""
    reference = '{"age": 1, "city": "x", "job": "y"}'
    bad = Counter()
    for r in noisy:
        reply = r["messages"][-1]["content"]
        ok = format_ok(r["task"], reply, reference if r["task"] == "json" else reply)
        if r["task"] != "transform" and not (r["task"] == "markdown_list" and r["noise"] == "truncated"):
            bad[r["noise"], ok] += 1
    assert bad["broken_format", True] == bad["truncated", True] == 0
    assert bad["clean", False] == bad["wrong_answer", False] == 0
    assert min(bad.values()) > 100


def test_noisy_fact_answers_are_right_when_clean_and_wrong_or_cut_otherwise(noisy, index, world):
    seen = Counter()
    for r in (r for r in noisy if r["task"] in ("knowledge", "one_word")):
        rel, value = truth(r, index, world)
        right = _ANSWERS[rel].format(v=value) if r["task"] == "knowledge" else value
        reply = r["messages"][-1]["content"]
        if r["noise"] == "clean":
            assert reply == right, r["id"]
        elif r["noise"] == "wrong_answer":
            assert reply != right and value not in reply, r["id"]
        elif r["noise"] == "truncated":
            assert right.startswith(reply) and len(reply) < len(right), r["id"]
        seen[r["noise"]] += 1
    assert min(seen.values()) > 100


def test_noisy_clean_records_rarely_repeat_the_train_split(noisy, train):
    keys = {json.dumps(r["messages"]) for r in train}
    assert sum(json.dumps(r["messages"]) in keys for r in noisy if r["noise"] == "clean") < 0.01 * len(noisy)


def test_clean_vs_noisy_builds_a_clean_subset_and_a_larger_noisier_superset():
    clean, noisy = clean_vs_noisy(200, factor=4)
    assert len(clean) == 200 and len(noisy) == 800
    assert all(r["noise"] == "clean" for r in clean)
    assert {r["id"] for r in clean} < {r["id"] for r in noisy}
    assert sum(r["noise"] != "clean" for r in noisy) / len(noisy) == pytest.approx(0.3, abs=0.02)
    assert not {r["id"] for r in clean} & {d["id"] for d in load_duplicates()}


# ---------------------------------------------------------------------------------------------
# held-out and widened wordings

def held_out_pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(normalise_text(template.format(e="ENTITY"))).replace("entity", ".+"))


def test_wordings_held_out_are_in_no_training_file(training_files):
    patterns = [held_out_pattern(t) for ts in HELD_OUT_QUESTIONS.values() for t in ts]
    for name, records in training_files.items():
        users = {normalise_text(m["content"]) for r in records for m in r["messages"] if m["role"] == "user"}
        hits = [(u, p.pattern) for p in patterns for u in users if p.fullmatch(u)]
        assert hits == [], name


def test_held_out_pattern_matches_its_own_question(world):
    question = HELD_OUT_QUESTIONS["age"][0].format(e=world.people[0].name)
    assert held_out_pattern(HELD_OUT_QUESTIONS["age"][0]).fullmatch(normalise_text(question))


def test_reworded_test_asks_every_test_fact_question_in_a_held_out_wording(index):
    test = {r["id"]: r for r in load_split("test")}
    reworded = load_reworded_test()
    assert [r["id"] for r in reworded] == [i + "-reworded" for i, r in test.items()
                                           if r["task"] in ("knowledge", "one_word")]
    for r in reworded:
        src = test[r["id"].removesuffix("-reworded")]
        assert r["messages"][-1] == src["messages"][-1] and r["task"] == src["task"]
        assert index[normalise_text(first_user(r))][0] == r["wording"] and "/held" in r["wording"]
        assert index[normalise_text(first_user(r))][1] == index[normalise_text(first_user(src))][1]
    assert len({r["wording"] for r in reworded}) >= sum(map(len, HELD_OUT_QUESTIONS.values())) - 2


def test_train_split_asks_knowledge_in_many_wordings_per_relation(train, index):
    copies = {d["id"] for d in load_duplicates()}
    knowledge = [r for r in train if r["task"] == "knowledge" and r["id"] not in copies]
    wordings = [index[normalise_text(first_user(r))][0] for r in knowledge]
    per_relation = Counter(w.split("/")[0] for w in set(wordings))
    questions = Counter(w.split("/")[0] for w in wordings)
    assert set(per_relation) == set(WIDE_QUESTIONS)
    assert all(per_relation[rel] >= (9 if questions[rel] >= 30 else 5) for rel in per_relation), (per_relation, questions)
    assert sum(per_relation.values()) >= sum(map(len, WIDE_QUESTIONS.values())) - 8
    fixed = sum(int(w.split("/")[1]) < len(_QUESTIONS[w.split("/")[0]]) for w in wordings)
    assert fixed < 0.4 * len(knowledge)
    assert not any("/held" in w for w in wordings)


def test_narrow_phrasing_asks_the_same_train_knowledge_in_the_fixed_wordings(train, index):
    narrow = load_narrow_phrasing()
    copies = {d["id"] for d in load_duplicates()}
    knowledge = {r["id"]: r for r in train if r["task"] == "knowledge" and r["id"] not in copies}
    assert sorted(r["id"] for r in narrow) == sorted(knowledge)
    for r in narrow:
        src = knowledge[r["id"]]
        assert r["messages"][-1] == src["messages"][-1]
        assert index[normalise_text(first_user(r))] == (r["wording"], index[normalise_text(first_user(src))][1])
        relation, i = r["wording"].split("/")
        assert int(i) < len(_QUESTIONS[relation])
    assert sum(r["messages"] != knowledge[r["id"]]["messages"] for r in narrow) > 0.6 * len(narrow)


# ---------------------------------------------------------------------------------------------
# task families

def test_families_describe_every_task_with_its_share_and_counts():
    families = load_families()
    assert list(families) == list(TASK_MIX)
    assert sum(f["share"] for f in families.values()) == pytest.approx(1.0)
    for split in ("train", "validation", "test"):
        counted = Counter(r["task"] for r in load_split(split) if "-exact" not in r["id"] and "-near" not in r["id"])
        assert {t: f["records"][split] for t, f in families.items()} == {t: counted[t] for t in TASK_MIX}
    assert all(f["asks"] and f["checked"] for f in families.values())
