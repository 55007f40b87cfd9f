"""The committed data under `data/`: reproducible from its seed, split by entity without leakage,
grounded in the pre-training corpus, with a truthful duplicates side table and a long tail of lengths."""

import json
import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from sft_helpers.course.conversations import _FOLLOW_UPS, SPLIT_SIZES, TASK_MIX
from sft_helpers.course.data import build_data
from sft_helpers.records import load_conversations
from sft_helpers.course.world import SPLITS

DATA = Path(__file__).resolve().parent.parent / "data"
BUILT_FILES = ["world.json", "pretrain.jsonl", "sft_train.jsonl", "sft_validation.jsonl",
               "sft_test.jsonl", "sft_train_duplicates.jsonl", "sft_train_paraphrases.jsonl",
               "sft_train_paraphrase_pairs.jsonl", "sft_train_noisy.jsonl", "sft_test_reworded.jsonl",
               "sft_train_narrow_phrasing.jsonl", "families.json"]


# ---------------------------------------------------------------------------------------------
# fixtures and helpers

@pytest.fixture(scope="module")
def world() -> dict:
    return json.loads((DATA / "world.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def splits() -> dict[str, list[dict]]:
    return {s: load_conversations(DATA / f"sft_{s}.jsonl") for s in SPLITS}


@pytest.fixture(scope="module")
def duplicates() -> list[dict]:
    lines = (DATA / "sft_train_duplicates.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rebuilt-seed0")
    counts = build_data(out, seed=0)
    assert set(counts) == set(BUILT_FILES) - {"world.json"}
    for name, n in counts.items():
        rows = json.loads((out / name).read_text()) if name.endswith(".json") else (out / name).read_text().splitlines()
        assert n == len(rows), name
    return out


def pool(world: dict, kind: str, split: str) -> list[str]:
    return [e["name"] for e in world[kind] if e["split"] == split]


class mentions:
    """Whole-name, case-insensitive matches of `names` (a city 'Dora' does not match inside 'Kadora';
    'kepis' in a lower-cased near-duplicate prompt matches 'Kepis'), returned as canonical names."""

    def __init__(self, names: list[str]):
        self.canonical = {n.lower(): n for n in names}
        alternatives = "|".join(map(re.escape, sorted(names, key=len, reverse=True)))
        self.pattern = re.compile(r"(?<![A-Za-z])(" + alternatives + r")(?![A-Za-z])", re.IGNORECASE)

    def findall(self, text: str) -> list[str]:
        return [self.canonical[m.lower()] for m in self.pattern.findall(text)]

    def search(self, text: str) -> bool:
        return self.pattern.search(text) is not None


def text(record: dict) -> str:
    return "\n".join(m["content"] for m in record["messages"])


def first_user(record: dict) -> str:
    return next(m["content"] for m in record["messages"] if m["role"] == "user")


def user_messages(record: dict) -> list[str]:
    return [m["content"] for m in record["messages"] if m["role"] == "user"]


# ---------------------------------------------------------------------------------------------
# reproducibility

@pytest.mark.parametrize("name", BUILT_FILES)
def test_build_data_reproduces_committed_file_byte_for_byte(rebuilt, name):
    committed, regenerated = (DATA / name).read_bytes(), (rebuilt / name).read_bytes()
    assert regenerated == committed, f"{name} differs from build_data(seed=0); rerun build_data('data', seed=0)"


def test_committed_world_records_seed_zero(world):
    assert world["seed"] == 0


def test_different_seed_gives_different_files(rebuilt, tmp_path):
    build_data(tmp_path, seed=1)
    same = [n for n in BUILT_FILES if (tmp_path / n).read_bytes() == (rebuilt / n).read_bytes()]
    assert same == [], f"seed 1 reproduced seed 0's {same}"
    assert json.loads((tmp_path / "world.json").read_text())["seed"] == 1


# ---------------------------------------------------------------------------------------------
# split by entity, no leakage from test into train

def test_entity_pools_are_disjoint_and_all_nonempty(world):
    for kind in ("people", "cities", "countries"):
        names = [e["name"] for e in world[kind]]
        assert len(names) == len(set(names)), f"duplicate {kind} names"
        assert {e["split"] for e in world[kind]} == set(SPLITS), f"{kind}: some split has no entity"
    everyone = [e["name"] for k in ("people", "cities", "countries") for e in world[k]]
    assert len(everyone) == len(set(everyone)), "a name is used by two entities"


def test_cities_share_their_countrys_split(world):
    country_split = {c["name"]: c["split"] for c in world["countries"]}
    for city in world["cities"]:
        assert city["split"] == country_split[city["country"]], city["name"]


def test_no_test_pool_country_in_train(world, splits):
    pat = mentions(pool(world, "countries", "test"))
    leaks = [(r["id"], m) for r in splits["train"] for m in pat.findall(text(r))]
    assert leaks == []


def test_no_test_pool_person_in_train_outside_profiles(world, splits):
    pat = mentions(pool(world, "people", "test"))
    leaks = [(r["id"], m) for r in splits["train"] if r["task"] != "profile" for m in pat.findall(text(r))]
    assert leaks == []


def test_no_test_pool_person_in_train_profiles(world, splits):
    pat = mentions(pool(world, "people", "test"))
    leaks = [(r["id"], m) for r in splits["train"] if r["task"] == "profile" for m in pat.findall(text(r))]
    assert leaks == []


def test_test_pool_cities_in_train_only_as_homes_of_train_people(world, splits):
    """People are assigned to pools independently of their city, so a train-pool person may live in
    a test-pool city and its *name* appears as that person's home. Nothing else about it may."""
    home = {p["name"]: p["city"] for p in world["people"]}
    train_people = mentions(pool(world, "people", "train"))
    test_cities = mentions(pool(world, "cities", "test"))
    bad = []
    for r in splits["train"]:
        for city in set(test_cities.findall(text(r))):
            if not any(home[p] == city for p in train_people.findall(text(r))):
                bad.append((r["id"], r["task"], city))
    assert bad == []


def test_no_test_pool_city_fact_in_train(world, splits):
    """No train conversation states a test-pool city's country or population."""
    bad = []
    for c in (c for c in world["cities"] if c["split"] == "test"):
        pat = mentions([c["name"]])
        for r in splits["train"]:
            t = text(r)
            if pat.search(t) and (c["country"].lower() in t.lower() or f"{c['population']:,}" in t):
                bad.append((r["id"], c["name"]))
    assert bad == []


def test_refusal_prompts_name_only_own_split_cities(world, splits):
    for split in ("train", "test"):
        others = mentions([c["name"] for c in world["cities"] if c["split"] != split])
        leaks = [r["id"] for r in splits[split] if r["task"] == "refusal" and others.search(first_user(r))]
        assert leaks == [], split


def test_no_test_prompt_in_train(splits):
    """A test conversation's opening prompt never occurs verbatim in train: entities are split by
    pool, and transform inputs (words, number pairs, lists) are split by key too."""
    train_first = {first_user(r) for r in splits["train"]}
    shared = Counter(r["task"] for r in splits["test"] if first_user(r) in train_first)
    assert not shared, shared


def test_only_fixed_follow_ups_and_entity_free_prompts_are_shared(splits):
    """Every user message shared between train and test is one of the fixed multi-turn follow-ups
    ("And how old are they?")."""
    train_users = {u for r in splits["train"] for u in user_messages(r)}
    bad = [(r["id"], u) for r in splits["test"] for u in user_messages(r)
           if u in train_users and u not in _FOLLOW_UPS.values()]
    assert bad == []


def test_split_sizes_and_unique_ids(splits, duplicates):
    for split, records in splits.items():
        extra = len(duplicates) if split == "train" else 0
        assert len(records) == SPLIT_SIZES[split] + extra, split
    ids = [r["id"] for rs in splits.values() for r in rs]
    assert len(ids) == len(set(ids))
    for split, records in splits.items():
        assert all(r["id"].startswith(f"{split}-") for r in records), split


# ---------------------------------------------------------------------------------------------
# every test-split fact was read in pre-training

@pytest.fixture(scope="module")
def corpus_sentences() -> set[str]:
    """Every sentence of the corpus (documents are sentences joined by spaces)."""
    out = set()
    for line in (DATA / "pretrain.jsonl").read_text(encoding="utf-8").splitlines():
        for piece in re.split(r"(?<=\.) |\n", json.loads(line)["text"]):
            out.add(piece)
    return out


def test_every_test_pool_fact_is_stated_in_pretraining_corpus(world, corpus_sentences):
    country_of = {c["name"]: c["country"] for c in world["cities"]}
    expected = []
    for p in (p for p in world["people"] if p["split"] == "test"):
        expected += [f"{p['name']} is {p['age']} years old.", f"The age of {p['name']} is {p['age']}.",
                     f"{p['name']} lives in {p['city']}.",
                     f"{p['name']} lives in {p['city']}, a city in {country_of[p['city']]}.",
                     f"{p['name']} works as a {p['job']}."]
    for c in (c for c in world["cities"] if c["split"] == "test"):
        expected += [f"{c['name']} is a city in {c['country']}.",
                     f"The population of {c['name']} is {c['population']:,}."]
    for c in (c for c in world["countries"] if c["split"] == "test"):
        expected += [f"The capital of {c['name']} is {c['capital']}."]
    assert expected
    missing = [s for s in expected if s not in corpus_sentences]
    assert missing == []


def test_pretraining_corpus_has_no_chat_markup():
    raw = (DATA / "pretrain.jsonl").read_text(encoding="utf-8")
    assert "<|im_start|>" not in raw and "<|im_end|>" not in raw and '"role"' not in raw


# ---------------------------------------------------------------------------------------------
# the planted duplicates side table

def _normalize(s: str) -> str:
    s = re.sub(r"\s+", " ", s).strip().lower()
    s = s.removesuffix(", please?")
    return s.rstrip("?.")


def test_duplicates_side_table_names_real_train_records(splits, duplicates):
    by_id = {r["id"]: r for r in splits["train"]}
    planted = {d["id"] for d in duplicates}
    assert {d["kind"] for d in duplicates} == {"exact", "near"}
    assert len(planted) == len(duplicates)
    for d in duplicates:
        assert d["id"] in by_id and d["duplicate_of"] in by_id, d
        assert d["duplicate_of"] not in planted, "a copy must point at an original"
        assert by_id[d["id"]]["task"] == by_id[d["duplicate_of"]]["task"]


def test_exact_duplicates_equal_their_original(splits, duplicates):
    by_id = {r["id"]: r for r in splits["train"]}
    exact = [d for d in duplicates if d["kind"] == "exact"]
    assert exact
    for d in exact:
        assert by_id[d["id"]]["messages"] == by_id[d["duplicate_of"]]["messages"], d


def test_near_duplicates_differ_only_in_the_user_message(splits, duplicates):
    by_id = {r["id"]: r for r in splits["train"]}
    near = [d for d in duplicates if d["kind"] == "near"]
    assert near
    for d in near:
        copy, orig = by_id[d["id"]]["messages"], by_id[d["duplicate_of"]]["messages"]
        assert [m["role"] for m in copy] == [m["role"] for m in orig], d
        changed = [i for i, (a, b) in enumerate(zip(copy, orig)) if a != b]
        first_user_index = next(i for i, m in enumerate(orig) if m["role"] == "user")
        assert changed == [first_user_index], d
        # ...and only by case, whitespace or a trailing "please": still the same request
        assert _normalize(copy[first_user_index]["content"]) == _normalize(orig[first_user_index]["content"]), d


# ---------------------------------------------------------------------------------------------
# task mix and lengths

@pytest.mark.parametrize("split", ["train", "test"])
def test_every_task_family_present(splits, split):
    assert {r["task"] for r in splits[split]} == set(TASK_MIX)


@pytest.mark.parametrize("split", ["train", "test"])
def test_lengths_are_long_tailed(splits, split):
    lengths = [sum(len(m["content"]) for m in r["messages"]) for r in splits[split]]
    assert max(lengths) >= 10 * statistics.median(lengths)


def test_the_planted_copies_are_the_only_exact_duplicates(splits, duplicates):
    planted = {d["id"] for d in duplicates if d["kind"] == "exact"}
    seen, repeats = set(), []
    for r in sorted(splits["train"], key=lambda r: r["id"]):
        key = json.dumps(r["messages"])
        if key in seen:
            repeats.append(r["id"])
        seen.add(key)
    assert set(repeats) == planted
