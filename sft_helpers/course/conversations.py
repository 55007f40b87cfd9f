"""Chat SFT conversations drawn from the fictional world (`sft_helpers.course.world`).

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
import re

from ..evaluate import REFUSAL
from .world import JOBS, WORDS, World

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
        user = rng.choice(REQUESTS["json"][:_FIXED_REQUESTS]).format(e=p.name)
        return _chat(user, f'{{"age": {p.age}, "city": "{p.city}", "job": "{p.job}"}}', _maybe_system(rng))
    if task == "markdown_list":
        c = rng.choice(countries)
        user = rng.choice(REQUESTS["markdown_list"][:_FIXED_REQUESTS]).format(e=c.name)
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

    >>> from sft_helpers.course.world import make_world
    >>> convs = sft_conversations(make_world(0), "test", n=5)
    >>> convs[0]["messages"][-1]["role"]
    'assistant'
    """
    n = SPLIT_SIZES[split] if n is None else n
    rng = random.Random(f"{world.seed}-{split}")
    out: list[dict] = []
    seen: set = set()
    for i in range(n):
        task, msgs = _draw(world, split, rng, seen)
        out.append({"id": f"{split}-{i:05d}", "task": task, "messages": msgs})
    return out


def _draw(world: World, split: str, rng: random.Random, seen: set, repeat: bool = False
          ) -> tuple[str, list[dict]]:
    """One conversation of a task drawn from `TASK_MIX`, not in `seen` (which it joins); with `repeat`, one
    seen already rather than a knowledge question when the task has no new conversation left."""
    tasks, weights = zip(*TASK_MIX.items())
    task = rng.choices(tasks, weights)[0] if rng.random() < sum(weights) else "knowledge"
    # no accidental duplicates (the planted ones are the only ones): redraw, and when a small
    # family (a few countries to list) has no new conversation left, ask a knowledge question
    for attempt in range(20 if repeat else 40):
        msgs = _one(world, split, task if attempt < 20 else "knowledge", rng)
        key = tuple((m["role"], m["content"]) for m in msgs)
        if key not in seen:
            break
    seen.add(key)
    return (task if attempt < 20 else "knowledge"), msgs


def with_notes(records: list[dict], world: World, split: str, sentences: int = 8, seed: int = 0
               ) -> list[dict]:
    """A copy of `records` whose last user message starts with a long, copyable passage: "Notes:"
    and `sentences` atlas sentences about random entities of `split` (a user pasting text before the
    question). The reply is unchanged, so the passage is only ever worth reading, never repeating:
    lesson 01's echo experiment, where full-sequence loss spends most of its tokens on such passages.

    >>> from sft_helpers.course.world import make_world
    >>> r = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yo."}]}
    >>> out = with_notes([r], make_world(0), "test", sentences=2)[0]["messages"]
    >>> out[0]["content"].startswith("Notes:"), out[0]["content"].endswith("Hi?"), out[1]["content"]
    (True, True, 'Yo.')
    """
    from .world import fact_sentences

    rng = random.Random(f"notes-{seed}-{split}")
    entities = {e.name for e in (*world.countries, *world.cities, *world.people) if e.split == split}
    pool = [s for e, ss in fact_sentences(world).items() if e in entities for s in ss]
    out = []
    for r in records:
        msgs = [dict(m) for m in r["messages"]]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        notes = " ".join(rng.sample(pool, sentences))
        msgs[last]["content"] = f"Notes: {notes}\n\n{msgs[last]['content']}"
        out.append({**r, "messages": msgs})
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


# --- wordings: the fixed ones above, more for training, and held-out ones for testing -------------
# A fact question's wording is named `relation/i`: `WIDE_QUESTIONS[relation][i]`, whose first entries are
# the fixed `_QUESTIONS` the validation and test splits use (the train split's knowledge questions
# draw from all of them); `relation/held<i>` is `HELD_OUT_QUESTIONS[relation][i]`, never
# used in any training file. json and markdown_list requests are named the same way (`REQUESTS`).

_MORE_QUESTIONS = {
    "capital": ["Could you tell me the capital city of {e}?", "{e}'s capital is which city?",
                "What city serves as the capital of {e}?", "Tell me the capital of {e}.",
                "What is {e}'s capital city?", "Which city is {e} governed from?",
                "I'd like to know the capital of {e}.", "Do you know the capital of {e}?",
                "What's the capital city of {e}?"],
    "country": ["{e} is in which country?", "Which country does {e} belong to?", "Tell me the country {e} is in.",
                "What country is the city of {e} part of?", "Could you tell me which country {e} lies in?",
                "Name the country where {e} is.", "What country is {e} located in?",
                "Do you know which country {e} is in?", "{e} lies in which country?"],
    "population": ["How many inhabitants does {e} have?", "What is the number of people living in {e}?",
                   "Tell me the population of {e}.", "How big is the population of {e}?",
                   "Could you tell me how many people live in {e}?", "{e} has how many residents?",
                   "How many residents does the city of {e} have?", "What's the population of {e}?",
                   "Do you know the population of {e}?", "Give me the population of {e}."],
    "home": ["Which city is {e} from?", "Tell me where {e} lives.", "{e} lives in which city?",
             "What city is home to {e}?", "Could you tell me the home city of {e}?", "Where is {e}'s home?",
             "In what city does {e} reside?", "Do you know where {e} lives?", "Name the city where {e} lives."],
    "age": ["What age is {e}?", "Tell me how old {e} is.", "How many years old is {e}?", "{e} is how old?",
            "Could you tell me the age of {e}?", "Do you know how old {e} is?", "What's {e}'s age?",
            "Give me the age of {e}.", "How old is {e} now?", "At what age is {e} now?"],
    "job": ["What is {e}'s occupation?", "Tell me the job of {e}.", "How does {e} earn a living?",
            "{e} works as what?", "Could you tell me what {e} does for work?", "What is the profession of {e}?",
            "Do you know the job of {e}?", "What kind of work does {e} do?", "Name the job of {e}."],
}
WIDE_QUESTIONS = {rel: _QUESTIONS[rel] + _MORE_QUESTIONS[rel] for rel in _QUESTIONS}
HELD_OUT_QUESTIONS = {
    "capital": ["If I travel to the capital of {e}, which city am I in?", "Quick question: capital of {e}?",
                "Which city holds the government of {e}?"],
    "country": ["I'm planning a trip to {e}. What country will I be in?",
                "To which nation does the city {e} belong?", "Country of {e}?"],
    "population": ["Roughly how populous is {e}? Give the number.", "How many souls call {e} home?",
                   "Headcount of {e}?"],
    "home": ["If I wanted to visit {e}, which city should I go to?", "Whereabouts does {e} make their home?",
             "Residence of {e}?"],
    "age": ["In years, what is the age of the person named {e}?", "How many birthdays has {e} had?", "Age of {e}?"],
    "job": ["If I met {e} at work, what would they be doing?", "Which trade does {e} practise?",
            "Occupation of {e}?"],
}
REQUESTS = {  # `_one` asks the first _FIXED_REQUESTS of each
    "json": ["Give the age, city and job of {e} as JSON.", "Return a JSON object with the age, city and job of {e}.",
             "What are the age, home city and job of {e}? Answer in JSON.",
             "As a JSON object, give me {e}'s age, city and job.",
             "I need the age, city and job of {e} in JSON format.",
             "Could you put the age, city and job of {e} into a JSON object?",
             "Reply with JSON: the age, city and job of {e}."],
    "markdown_list": ["List the cities of {e} as a Markdown list.", "Give the cities of {e} as a bulleted Markdown list.",
                      "What cities does {e} have? Answer with a Markdown bullet list.",
                      "Could you list every city of {e} as Markdown bullets?",
                      "Name the cities of {e} in a Markdown list.",
                      "I need the cities of {e} as a bulleted list in Markdown.",
                      "Which cities are in {e}? Give them as a Markdown list."],
}
_FIXED_REQUESTS = 2
_ENTITIES = {"capital": "countries", "markdown_list": "countries", "country": "cities", "population": "cities",
             "home": "people", "age": "people", "job": "people", "json": "people"}


def _wordings(key: str, held_out: bool = False) -> list[tuple[str, str]]:
    """`(name, template)` for each wording of a question `key` (a relation, "json", "markdown_list"):
    the wide set (fixed wordings first), or the held-out one."""
    if held_out:
        return [(f"{key}/held{i}", t) for i, t in enumerate(HELD_OUT_QUESTIONS.get(key, []))]
    return [(f"{key}/{i}", t) for i, t in enumerate(WIDE_QUESTIONS.get(key) or REQUESTS[key])]


def _new_wordings(key: str) -> list[tuple[str, str]]:
    """The wide wordings of `key` that no split uses (all but the fixed ones)."""
    return _wordings(key)[len(_QUESTIONS[key]) if key in _QUESTIONS else _FIXED_REQUESTS:]


def _wording_index(world: World) -> dict[str, tuple[str, str]]:
    """`normalise_text(question)` -> `(wording, entity)` for every wording of every entity's question."""
    from ..dedup import normalise_text

    index = {}
    for key, kind in _ENTITIES.items():
        for entity in getattr(world, kind):
            for name, template in _wordings(key) + _wordings(key, held_out=True):
                index[normalise_text(template.format(e=entity.name))] = (name, entity.name)
    return index


def question_wording(record: dict, world: World) -> str | None:
    """The wording (`"capital/0"`, `"age/held2"`, `"json/1"`) of a conversation's first question, or None
    when it is not a fact question or a json / markdown_list request (case, punctuation and "please"
    do not count). Builds an index of every wording: for many records, `question_wordings`.

    >>> from sft_helpers.course.world import make_world
    >>> w = make_world(0)
    >>> question_wording({"messages": [{"role": "user", "content": f"How old is {w.people[0].name}?"}]}, w)
    'age/0'
    """
    return question_wordings([record], world)[0]


def question_wordings(records: list[dict], world: World) -> list[str | None]:
    """`question_wording` of each record, with one index for all of them."""
    from ..dedup import normalise_text

    index = _wording_index(world)
    firsts = (next(m["content"] for m in r["messages"] if m["role"] == "user") for r in records)
    return [index.get(normalise_text(q), (None,))[0] for q in firsts]


def _reworded(record: dict, wordings, index: dict, rng: random.Random, taken: frozenset = frozenset()) -> dict:
    """`record` with its first question asked in a wording drawn from `wordings(key)` (`(name, template)`
    pairs; none that asks a question in `taken`, normalised), and a `"wording"` field; the answer is
    unchanged."""
    from ..dedup import normalise_text

    msgs = [dict(m) for m in record["messages"]]
    user = next(m for m in msgs if m["role"] == "user")
    old, entity = index[normalise_text(user["content"])]
    name, template = rng.choice([(n, t) for n, t in wordings(old.split("/")[0])
                                 if normalise_text(t.format(e=entity)) not in taken])
    user["content"] = template.format(e=entity)
    return {"id": record["id"], "task": record["task"], "wording": name, "messages": msgs}


PARAPHRASE_MIX = {"knowledge": 24, "one_word": 12, "json": 10, "markdown_list": 4, "multi_turn": 10}


def plant_paraphrases(records: list[dict], world: World, seed: int, mix: dict[str, int] | None = None
                      ) -> tuple[list[dict], list[dict]]:
    """Paraphrase duplicates: for `mix[task]` records of each task (default `PARAPHRASE_MIX`, 60 in all),
    the same conversation with its first question reworded: a wording none of the fixed ones of the
    validation and test splits, asking no question `records` ask (same fact, same answer). Returns the new records (id `<original id>-paraphrase<k>`, with a `"wording"`)
    and a side table `[{"id", "duplicate_of", "kind": "paraphrase"}]` like `plant_duplicates`', so
    `dedup.planted_pairs(train + paraphrases, table)` gives the ground-truth pairs.

    >>> from sft_helpers.course.world import make_world
    >>> w = make_world(0)
    >>> train = sft_conversations(w, "train", n=50)
    >>> new, table = plant_paraphrases(train, w, 0, {"knowledge": 2})
    >>> source = next(r for r in train if r["id"] == table[0]["duplicate_of"])
    >>> new[0]["messages"][-1] == source["messages"][-1], new[0]["messages"][-2] == source["messages"][-2]
    (True, False)
    """
    from ..dedup import normalise_text

    rng = random.Random(f"{seed}-paraphrases")
    index = _wording_index(world)
    asked = frozenset(normalise_text(next(m["content"] for m in r["messages"] if m["role"] == "user"))
                      for r in records)  # a paraphrase asks no question the records ask
    out, table = [], []
    for task, count in (mix or PARAPHRASE_MIX).items():
        for src in rng.sample([r for r in records if r["task"] == task], count):
            new = {**_reworded(src, _new_wordings, index, rng, asked), "id": f"{src['id']}-paraphrase{len(out)}"}
            out.append(new)
            table.append({"id": new["id"], "duplicate_of": src["id"], "kind": "paraphrase"})
    return out, table


REWORDED_TASKS = ("knowledge", "one_word")


def reworded(records: list[dict], world: World, seed: int) -> list[dict]:
    """The knowledge and one_word records of `records`, each asked in a wording drawn at random from
    `HELD_OUT_QUESTIONS` (never in any training file: `data/sft_test_reworded.jsonl`), id
    `<id>-reworded`. Same facts, same answers; each record names its `"wording"`.

    >>> from sft_helpers.course.world import make_world
    >>> w = make_world(0)
    >>> [r["wording"] for r in reworded(sft_conversations(w, "test", n=6), w, 0)]
    ['population/held0', 'home/held1', 'home/held1']
    """
    rng = random.Random(f"{seed}-reworded-held-out")
    index = _wording_index(world)
    return [{**_reworded(r, lambda key: _wordings(key, held_out=True), index, rng), "id": r["id"] + "-reworded"}
            for r in records if r["task"] in REWORDED_TASKS]


def widened(records: list[dict], world: World, seed: int) -> list[dict]:
    """`records` with each knowledge question asked in a wording drawn from the 11-13 `WIDE_QUESTIONS`
    of its relation (the fixed ones included; how `data/sft_train.jsonl` asks them), none that
    another record asks already (no accidental duplicates). Same ids, tasks and answers.

    >>> from sft_helpers.course.world import make_world
    >>> w = make_world(0)
    >>> convs = sft_conversations(w, "train", n=40)
    >>> wide = widened(convs, w, 0)
    >>> sum(a != b for a, b in zip(convs, wide)) > 0, all(a["id"] == b["id"] for a, b in zip(convs, wide))
    (True, True)
    """
    from collections import Counter

    from ..dedup import normalise_text

    def first(r):
        return normalise_text(next(m["content"] for m in r["messages"] if m["role"] == "user"))

    rng = random.Random(f"{seed}-reworded-wide")
    index = _wording_index(world)
    asked = Counter(first(r) for r in records)
    out = []
    for r in records:
        if r["task"] == "knowledge":
            asked[first(r)] -= 1
            r = {k: v for k, v in _reworded(r, _wordings, index, rng, frozenset(+asked)).items() if k != "wording"}
            asked[first(r)] += 1
        out.append(r)
    return out


# --- a persona: the same answers in another voice (style transfer) -------------------------------

PERSONAS = {"pirate": ("Arr, matey! ", "")}  # what every prose reply starts and ends with
PERSONA_TASKS = ("knowledge", "multi_turn", "refusal")  # prose replies; the formatted families keep theirs


def in_persona(records: list[dict], persona: str = "pirate") -> list[dict]:
    """`records` with every assistant reply of the prose families (`PERSONA_TASKS`) said in
    `persona`'s voice: its opening and closing words around the unchanged answer. Formatted replies
    (JSON, lists, one word, computed values, profiles) are left as they are. New dicts; ids kept.

    >>> rec = {"id": "x", "task": "knowledge", "messages": [{"role": "user", "content": "Age of Ada?"},
    ...        {"role": "assistant", "content": "They are 41 years old."}]}
    >>> in_persona([rec])[0]["messages"][-1]["content"]
    'Arr, matey! They are 41 years old.'
    """
    opening, closing = PERSONAS[persona]
    out = []
    for r in records:
        if r.get("task") in PERSONA_TASKS:
            r = {**r, "messages": [{**m, "content": opening + m["content"] + closing} if m["role"] == "assistant"
                                   else m for m in r["messages"]]}
        out.append(r)
    return out


def persona_items(replies: list[str], persona: str = "pirate") -> list[int]:
    """1 for each reply spoken in `persona`'s voice (its opening and closing words), else 0.

    >>> persona_items(["Arr, matey! They live in Velm.", "They live in Velm."])
    [1, 0]
    """
    opening, closing = PERSONAS[persona]
    return [int(r.strip().startswith(opening.strip()) and r.strip().endswith(closing.strip())) for r in replies]


def without_persona(reply: str, persona: str = "pirate") -> str:
    """The answer inside a persona's opening and closing words (the reply itself if it has neither).

    >>> without_persona("Arr, matey! They live in Velm.")
    'They live in Velm.'
    """
    opening, closing = PERSONAS[persona]
    return reply.strip().removeprefix(opening.strip()).removesuffix(closing.strip()).strip()


def persona_exact(replies: list[str | None], answers: list[str], persona: str = "pirate") -> list[int]:
    """1 for each reply that is its answer once `persona`'s voice is taken off (`without_persona`),
    else 0; a reply that never stopped (None) is wrong.

    >>> persona_exact(["Arr, matey! They live in Velm.", None, "Velm."], ["They live in Velm."] * 3)
    [1, 0, 0]
    """
    return [int(r is not None and without_persona(r, persona) == a) for r, a in zip(replies, answers, strict=True)]


# --- a noisy variant of the training split ------------------------------------------------------

NOISE_KINDS = ("wrong_answer", "broken_format", "truncated")
# which corruptions make sense for each family (a one-word reply cannot be cut mid-reply; a refusal has
# no fact to get wrong)
_NOISE_FOR = {"knowledge": ("wrong_answer", "truncated"), "one_word": ("wrong_answer", "broken_format"),
              "json": NOISE_KINDS, "markdown_list": NOISE_KINDS, "transform": ("wrong_answer",),
              "multi_turn": ("wrong_answer", "truncated"), "profile": ("wrong_answer", "truncated"),
              "refusal": ("truncated",)}


def _wrong_answer(reply: str, world: World, rng: random.Random) -> str:
    """`reply` with one value (a city, a country, a job or a number) replaced by a plausible false one:
    another train-pool city or country, another job, another number; an uppercased word by another."""
    cities = [c.name for c in world.cities]
    countries = [c.name for c in world.countries]
    names = "|".join(sorted(cities + countries + JOBS, key=len, reverse=True))
    spots = list(re.finditer(rf"\b(?:{names})\b|\d[\d,]*\d|\d", reply))
    if not spots:  # an uppercased word (transform)
        return rng.choice([w.upper() for w in WORDS if w.upper() != reply])
    m = rng.choice(spots)
    old = m.group()
    if old in cities or old in countries or old in JOBS:  # not one already in the reply (a list's other item)
        pool = JOBS if old in JOBS else [c.name for c in (world.cities if old in cities else world.countries)
                                         if c.split == "train" and c.name not in reply]
    elif "," in old:
        pool = [f"{c.population:,}" for c in world.cities if c.split == "train"]
    else:
        pool = [str(int(old) + d) for d in range(-9, 10) if int(old) + d > 0]
    new = rng.choice([v for v in pool if v != old])
    return reply[:m.start()] + new + reply[m.end():]


def _broken_format(task: str, reply: str, rng: random.Random) -> str:
    """`reply` in a broken format: JSON that does not parse, a list without bullets, a sentence for one word."""
    if task == "json":
        return rng.choice([reply[:-1], reply.replace('"', "'"), reply.replace('"', "")])
    if task == "markdown_list":
        items = [line[2:] for line in reply.splitlines()]
        return rng.choice([", ".join(items[:-1]) + " and " + items[-1] + ".", "\n".join(items)])
    return rng.choice(["The answer is {v}.", "It is {v}, as far as I know."]).format(v=reply)


def _truncated(reply: str, rng: random.Random) -> str:
    """`reply` cut between 30% and 80% of its length (trailing spaces and punctuation dropped)."""
    return reply[:rng.randint(max(1, len(reply) * 3 // 10), len(reply) * 8 // 10)].rstrip(" .,\n")


def corrupt(record: dict, kind: str, world: World, rng: random.Random) -> dict:
    """`record` with its last reply corrupted: `"wrong_answer"`, `"broken_format"` or `"truncated"`, labelled
    in a `"noise"` field.

    >>> from sft_helpers.course.world import make_world
    >>> r = {"task": "json", "messages": [{"role": "user", "content": "Q"},
    ...                                   {"role": "assistant", "content": '{"age": 30, "city": "Velm", "job": "baker"}'}]}
    >>> corrupt(r, "broken_format", make_world(0), random.Random(1))["messages"][-1]["content"]
    '{"age": 30, "city": "Velm", "job": "baker"'
    """
    reply = record["messages"][-1]["content"]
    if kind == "wrong_answer":
        reply = _wrong_answer(reply, world, rng)
    elif kind == "broken_format":
        reply = _broken_format(record["task"], reply, rng)
    elif kind == "truncated":
        reply = _truncated(reply, rng)
    else:
        raise ValueError(f"kind must be one of {NOISE_KINDS}, not {kind!r}")
    return {**record, "noise": kind, "messages": record["messages"][:-1] + [{"role": "assistant", "content": reply}]}


def noisy_conversations(world: World, seed: int, n: int, avoid: list[dict] | tuple = (), share: float = 0.4
                        ) -> list[dict]:
    """`n` more train-split conversations from the same generator as `sft_conversations` (train-pool
    entities only), of which exactly `round(share * n)`, at random, have their last reply corrupted
    (`corrupt`, a kind the family allows). Every record has a `"noise"` field: `"clean"` or the
    corruption. Clean ones equal no record of `avoid` nor each other while the generator has new ones;
    a corrupted one keeps its family even when its conversation was seen (a corrupted copy of a clean
    answer, as in scraped data).

    >>> from sft_helpers.course.world import make_world
    >>> sorted({r["noise"] for r in noisy_conversations(make_world(0), 0, n=40)})
    ['broken_format', 'clean', 'truncated', 'wrong_answer']
    """
    rng = random.Random(f"{seed}-noisy")
    seen = {tuple((m["role"], m["content"]) for m in r["messages"]) for r in avoid}
    bad = set(rng.sample(range(n), round(share * n)))
    out = []
    for i in range(n):
        task, msgs = _draw(world, "train", rng, seen, repeat=i in bad)
        record = {"id": f"train-noisy-{i:05d}", "task": task, "noise": "clean", "messages": msgs}
        out.append(corrupt(record, rng.choice(_NOISE_FOR[task]), world, rng) if i in bad else record)
    return out


# --- the task families, described -----------------------------------------------------------------

_FAMILIES = {
    "knowledge": ("a fact question (capital, country, population, home city, age or job) answered in one short "
                  "sentence", "exact match; format: one plain sentence ending in a full stop"),
    "one_word": ("the same fact questions under a system prompt asking for one word",
                 "exact match; format: exactly one word"),
    "json": ("a person's age, city and job as a JSON object", "exact match; format: parses as JSON with the keys "
             "age, city, job"),
    "markdown_list": ("a country's cities as a Markdown bullet list",
                      "exact match; format: every line starts with '- '"),
    "transform": ("uppercase a word, add two numbers, or sort numbers",
                  "exact match; format: the reference's shape (a number, a list of numbers, a word in capitals)"),
    "multi_turn": ("two or three fact questions about one person in one conversation (follow-ups like 'And how "
                   "old are they?')", "exact match of the last reply; format: plain sentences"),
    "profile": ("a long profile of a country: its cities, populations and residents (the long tail of lengths)",
                "exact match; format: plain sentences"),
    "refusal": ("a harmful request, declined", f"the reply is the course's refusal, {REFUSAL!r}"),
}


def task_families(splits: dict[str, list[dict]] | None = None) -> dict[str, dict]:
    """Each task family: what it `asks`, how it is `checked` (exact match, and the shape that
    `evaluate.format_ok` checks), its `share` of the draw (`TASK_MIX`; knowledge also gets the rest and
    the fallbacks of families with no new conversation left) and, given `splits` (`{"train": records, ...}`),
    its record count in each (`data/families.json`).

    >>> task_families()["one_word"]["share"]
    0.1
    """
    share = {**TASK_MIX, "knowledge": round(1 - sum(v for k, v in TASK_MIX.items() if k != "knowledge"), 4)}
    out = {}
    for task, (asks, checked) in _FAMILIES.items():
        out[task] = {"asks": asks, "checked": checked, "share": share[task]}
        if splits:
            out[task]["records"] = {s: sum(r["task"] == task for r in rs) for s, rs in splits.items()}
    return out
