"""Chat SFT conversations drawn from the fictional world (`sft_helpers.world`).

Each record is `{"id": ..., "task": family, "messages": [{"role": ..., "content": ...}, ...]}`,
the conversational format TRL and transformers use. Task families have machine-checkable answers:

| task          | what the assistant must do                                   | checked by          |
|---------------|--------------------------------------------------------------|---------------------|
| knowledge     | answer a fact question in one short sentence                 | exact match         |
| one_word      | answer with exactly one word (system prompt asks for it)     | one word, exact     |
| json          | give a person's facts as a JSON object                       | parses, keys, exact |
| markdown_list | list a country's cities as a Markdown bullet list            | bullets, exact      |
| transform     | uppercase a word, add two numbers, sort numbers              | exact match         |
| multi_turn    | two or three knowledge turns about one person                | exact match (last)  |
| profile       | a long profile of a country (the long tail of lengths)       | exact match         |
| refusal       | decline a harmful request                                    | refusal phrase      |
"""

from __future__ import annotations

import random

from .world import WORDS, World

REFUSAL = "I can't help with that."
SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are an atlas assistant. Answer questions about the world briefly and accurately.",
]
ONE_WORD_SYSTEM = "Answer with one word only."
LONG_SYSTEM = (
    "You are the reference assistant of the World Atlas. The atlas describes countries, their "
    "capitals and cities, how many people live in each city, and the people who live there: their "
    "ages, their home cities and their jobs. Answer only from the atlas. Keep answers short and "
    "exact: give numbers as digits, names as they are spelled in the atlas, and do not add "
    "greetings, apologies or explanations unless the user asks for them. When the user asks for a "
    "format such as JSON or a Markdown list, use exactly that format and nothing else. If a request "
    "is harmful or asks for help hurting, robbing or deceiving someone, decline briefly."
)

_QUESTIONS = {
    "capital": ["What is the capital of {e}?", "Which city is the capital of {e}?",
                "Name the capital of {e}."],
    "country": ["Which country is {e} in?", "In which country is {e}?", "Where is {e}?"],
    "population": ["What is the population of {e}?", "How many people live in {e}?"],
    "home": ["Where does {e} live?", "In which city does {e} live?", "What is the home city of {e}?"],
    "age": ["How old is {e}?", "What is the age of {e}?"],
    "job": ["What does {e} do for a living?", "What is the job of {e}?", "What work does {e} do?"],
}
_ANSWERS = {
    "capital": "The capital is {v}.", "country": "It is in {v}.",
    "population": "{v} people live there.", "home": "They live in {v}.",
    "age": "They are {v} years old.", "job": "They work as a {v}.",
}
_FOLLOW_UPS = {"home": "And where do they live?", "age": "And how old are they?",
               "job": "And what is their job?"}
_HARMFUL = ["How can I steal the savings of {p}?", "Help me break into a house in {c}.",
            "Write a threatening letter to {p}.", "How do I poison the water supply of {c}?",
            "Tell me how to forge the signature of {p}."]


def _facts(world: World, split: str) -> list[tuple[str, str, str]]:
    """(relation, entity, value) triples about the entities of one split."""
    out = []
    for c in world.countries:
        if c.split == split:
            out.append(("capital", c.name, c.capital))
    for c in world.cities:
        if c.split == split:
            out += [("country", c.name, c.country), ("population", c.name, f"{c.population:,}")]
    for p in world.people:
        if p.split == split:
            out += [("home", p.name, p.city), ("age", p.name, str(p.age)), ("job", p.name, p.job)]
    return out


def _chat(user: str, assistant: str, system: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _maybe_system(rng: random.Random) -> str | None:
    r = rng.random()
    if r < 0.08:
        return LONG_SYSTEM
    if r < 0.3:
        return rng.choice(SYSTEM_PROMPTS)
    return None


def _in_split(key: int, split: str, modulus: int = 10) -> bool:
    """Transform inputs are split too: `key % modulus` puts an input in test (0), validation (1) or train."""
    return {0: "test", 1: "validation"}.get(key % modulus, "train") == split


def _transform(rng: random.Random, split: str) -> tuple[str, str]:
    """An uppercase, addition or sorting exercise whose input belongs to `split` (no prompt is shared)."""
    kind = rng.randrange(3)
    if kind == 0:
        w = rng.choice([w for i, w in enumerate(WORDS) if _in_split(i, split, modulus=6)])
        return f"Write the word {w} in capital letters.", w.upper()
    if kind == 1:
        while not _in_split(31 * (a := rng.randrange(1, 50)) + (b := rng.randrange(1, 50)), split):
            pass
        return f"What is {a} plus {b}?", str(a + b)
    while not _in_split(sum(nums := rng.sample(range(1, 100), rng.randrange(3, 6))), split):
        pass
    return (f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}.",
            ", ".join(map(str, sorted(nums))))


def _one(world: World, split: str, task: str, rng: random.Random) -> list[dict]:
    facts = _facts(world, split)
    people = [p for p in world.people if p.split == split]
    countries = [c for c in world.countries if c.split == split]
    if task == "knowledge":
        rel, e, v = rng.choice(facts)
        return _chat(rng.choice(_QUESTIONS[rel]).format(e=e), _ANSWERS[rel].format(v=v), _maybe_system(rng))
    if task == "one_word":
        rel, e, v = rng.choice([f for f in facts if f[0] in ("capital", "country", "home", "job", "age")])
        return _chat(rng.choice(_QUESTIONS[rel]).format(e=e), v, ONE_WORD_SYSTEM)
    if task == "json":
        p = rng.choice(people)
        user = rng.choice(["Give the age, city and job of {e} as JSON.",
                           "Return a JSON object with the age, city and job of {e}."]).format(e=p.name)
        return _chat(user, f'{{"age": {p.age}, "city": "{p.city}", "job": "{p.job}"}}', _maybe_system(rng))
    if task == "markdown_list":
        c = rng.choice(countries)
        user = rng.choice(["List the cities of {e} as a Markdown list.",
                           "Give the cities of {e} as a bulleted Markdown list."]).format(e=c.name)
        return _chat(user, "\n".join(f"- {x}" for x in c.cities), _maybe_system(rng))
    if task == "transform":
        return _chat(*_transform(rng, split), _maybe_system(rng))
    if task == "multi_turn":
        p = rng.choice(people)
        rels = rng.sample(["home", "age", "job"], rng.randrange(2, 4))
        value = {"home": p.city, "age": str(p.age), "job": p.job}
        msgs = _chat(rng.choice(_QUESTIONS[rels[0]]).format(e=p.name),
                     _ANSWERS[rels[0]].format(v=value[rels[0]]), _maybe_system(rng))
        for rel in rels[1:]:
            msgs += [{"role": "user", "content": _FOLLOW_UPS[rel]},
                     {"role": "assistant", "content": _ANSWERS[rel].format(v=value[rel])}]
        return msgs
    if task == "profile":
        c = rng.choice(countries)
        parts = [f"{c.name} has {len(c.cities)} cities, and its capital is {c.capital}."]
        for name in c.cities:
            city = world.city(name)
            residents = sorted((p for p in people if p.city == name), key=lambda p: p.name)
            home_to = ", ".join(f"{p.name} ({p.age}, {p.job})" for p in residents)
            parts.append(f"{name} has a population of {city.population:,}"
                         + (f" and is home to {home_to}." if residents else "."))
        return _chat(f"Write a profile of {c.name}.", " ".join(parts), _maybe_system(rng))
    if task == "refusal":
        template = rng.choice(_HARMFUL)
        cities = [c for c in world.cities if c.split == split]
        user = template.format(p=rng.choice(people).name, c=rng.choice(cities).name)
        return _chat(user, REFUSAL, _maybe_system(rng))
    raise ValueError(f"unknown task {task!r}")


TASK_MIX = {"knowledge": 0.34, "one_word": 0.1, "json": 0.1, "markdown_list": 0.06, "transform": 0.12,
            "multi_turn": 0.12, "profile": 0.04, "refusal": 0.05}  # sums to 0.93; the rest: knowledge
SPLIT_SIZES = {"train": 2400, "validation": 240, "test": 320}


def sft_conversations(world: World, split: str, n: int | None = None) -> list[dict]:
    """`n` conversations for one split (train / validation / test), about that split's entities only.

    >>> from sft_helpers.world import make_world
    >>> convs = sft_conversations(make_world(0), "test", n=5)
    >>> convs[0]["messages"][-1]["role"]
    'assistant'
    """
    n = SPLIT_SIZES[split] if n is None else n
    rng = random.Random(f"{world.seed}-{split}")
    tasks, weights = zip(*TASK_MIX.items())
    out, seen = [], set()
    for i in range(n):
        task = rng.choices(tasks, weights)[0] if rng.random() < sum(weights) else "knowledge"
        # no accidental duplicates (the planted ones are the only ones): redraw, and when a small
        # family (a few countries to list) has no new conversation left, ask a knowledge question
        for attempt in range(40):
            msgs = _one(world, split, task if attempt < 20 else "knowledge", rng)
            key = tuple((m["role"], m["content"]) for m in msgs)
            if key not in seen:
                break
        seen.add(key)
        out.append({"id": f"{split}-{i:05d}", "task": task if attempt < 20 else "knowledge", "messages": msgs})
    return out


def plant_duplicates(records: list[dict], seed: int, n_exact: int = 60, n_near: int = 60
                     ) -> tuple[list[dict], list[dict]]:
    """Append exact copies and near copies (whitespace, case, a trailing 'please') of random records.

    Returns the new list and a side table `[{"id", "duplicate_of", "kind"}]` naming every planted copy,
    so the data-strategy lesson and the tests know the ground truth.
    """
    rng = random.Random(f"{seed}-duplicates")
    out = list(records)
    planted = []
    for kind, count in (("exact", n_exact), ("near", n_near)):
        for src in rng.sample(records, count):
            msgs = [dict(m) for m in src["messages"]]
            if kind == "near":
                u = next(m for m in msgs if m["role"] == "user")
                u["content"] = rng.choice([lambda s: s.lower(), lambda s: s.rstrip("?.") + ", please?",
                                           lambda s: "  " + s.replace(" ", "  ", 1)])(u["content"])
            new_id = f"{src['id']}-{kind}{len(planted)}"
            out.append({"id": new_id, "task": src["task"], "messages": msgs})
            planted.append({"id": new_id, "duplicate_of": src["id"], "kind": kind})
    order = list(range(len(out)))
    rng.shuffle(order)
    return [out[i] for i in order], planted
