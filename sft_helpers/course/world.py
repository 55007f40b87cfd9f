"""A small fictional world and the two corpora the course trains on.

`make_world(seed)` draws countries, cities and people with a few attributes each.
`pretraining_corpus(world)` states every fact in many phrasings as plain text (what a base model
reads); `sft_conversations(world)` turns the same facts into chat conversations in several task
families with machine-checkable answers (what SFT teaches). Everything is seeded: the same seed
gives the same files byte for byte.

People, cities and countries are split into train / validation / test pools *by entity*: the test
split only asks about entities whose facts the base model read in pre-training but whose questions
never appear in SFT training data. So test accuracy measures whether SFT taught the *format of
answering*, not new facts.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass

SPLITS = ("train", "validation", "test")

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "k", "m"]
JOBS = ["baker", "teacher", "farmer", "doctor", "painter", "sailor", "miner", "weaver",
        "singer", "builder", "tailor", "fisher"]
WORDS = ["river", "stone", "lamp", "cloud", "bread", "garden", "window", "silver", "tiger",
         "candle", "forest", "mirror", "harbor", "pepper", "winter", "ladder", "rocket", "violet"]


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    cities: tuple[str, ...]
    split: str


@dataclass(frozen=True)
class City:
    name: str
    country: str
    population: int
    split: str


@dataclass(frozen=True)
class Person:
    name: str
    age: int
    city: str
    job: str
    split: str


@dataclass(frozen=True)
class World:
    seed: int
    countries: tuple[Country, ...]
    cities: tuple[City, ...]
    people: tuple[Person, ...]

    def city(self, name: str) -> City:
        return next(c for c in self.cities if c.name == name)

    def country(self, name: str) -> Country:
        return next(c for c in self.countries if c.name == name)

    def to_json(self) -> str:
        return json.dumps({"seed": self.seed, "countries": [asdict(c) for c in self.countries],
                           "cities": [asdict(c) for c in self.cities],
                           "people": [asdict(p) for p in self.people]}, indent=1) + "\n"


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)]
    return ("".join(parts) + rng.choice(_CODAS)).capitalize()


def _unique_words(rng: random.Random, n: int, syllables: tuple[int, ...], taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = _word(rng, rng.choice(syllables))
        if w not in taken and len(w) >= 4:
            taken.add(w)
            out.append(w)
    return out


def _split_of(i: int, n: int, shares: tuple[float, float]) -> str:
    """Deterministic split by position: first shares[0] train, next shares[1] validation, rest test."""
    if i < round(n * shares[0]):
        return "train"
    if i < round(n * (shares[0] + shares[1])):
        return "validation"
    return "test"


def make_world(seed: int = 0, n_countries: int = 12, cities_per_country: int = 4,
               n_people: int = 240) -> World:
    """Draw a fictional world: countries with capitals, cities with populations, people with
    age, home city and job. Entities are assigned to the train/validation/test pools by entity.

    >>> w = make_world(0)
    >>> len(w.countries), len(w.cities), len(w.people)
    (12, 48, 240)
    """
    rng = random.Random(seed)
    taken: set[str] = set(w.capitalize() for w in WORDS + JOBS)
    country_names = _unique_words(rng, n_countries, (2, 3), taken)
    city_names = _unique_words(rng, n_countries * cities_per_country, (2, 3), taken)
    first = _unique_words(rng, 80, (2,), taken)
    last = _unique_words(rng, 80, (2, 3), taken)

    countries, cities = [], []
    for i, cname in enumerate(country_names):
        own = tuple(city_names[i * cities_per_country:(i + 1) * cities_per_country])
        split = _split_of(i, n_countries, (0.5, 0.17))
        countries.append(Country(cname, own[0], own, split))
        for name in own:
            cities.append(City(name, cname, rng.randrange(20, 990) * 1000, split))

    names: set[str] = set()
    while len(names) < n_people:
        names.add(f"{rng.choice(first)} {rng.choice(last)}")
    ordered = sorted(names)
    rng.shuffle(ordered)
    people = [Person(n, rng.randrange(18, 90), rng.choice(cities).name, rng.choice(JOBS),
                     _split_of(i, n_people, (0.6, 0.1)))
              for i, n in enumerate(ordered)]
    return World(seed, tuple(countries), tuple(cities), tuple(people))


# ---------------------------------------------------------------------------------------------
# Pre-training corpus: facts as plain text, many phrasings, plus plain-text skills.

def fact_sentences(world: World) -> dict[str, list[str]]:
    """Every fact of the world as plain-text sentences, keyed by the entity they are about."""
    out: dict[str, list[str]] = {}
    for c in world.countries:
        others = ", ".join(c.cities[:-1]) + " and " + c.cities[-1]
        out[c.name] = [
            f"The capital of {c.name} is {c.capital}.",
            f"{c.capital} is the capital of {c.name}.",
            f"The capital city of {c.name} is {c.capital}.",
            f"The cities of {c.name} are {others}.",
            f"{c.name} has {len(c.cities)} cities: {others}.",
        ]
    for c in world.cities:
        pop = f"{c.population:,}"
        out[c.name] = [
            f"{c.name} is a city in {c.country}.",
            f"{c.name} lies in {c.country}.",
            f"The city of {c.name} is in {c.country}.",
            f"The population of {c.name} is {pop}.",
            f"{c.name} has a population of {pop}.",
            f"{pop} people live in {c.name}.",
        ]
    for p in world.people:
        country = world.city(p.city).country
        out[p.name] = [
            f"{p.name} lives in {p.city}.",
            f"The home of {p.name} is {p.city}.",
            f"{p.name} lives in {p.city}, a city in {country}.",
            f"The age of {p.name} is {p.age}.",
            f"{p.name} is {p.age} years old.",
            f"{p.name} works as a {p.job}.",
            f"{p.name} is a {p.job}.",
            f"The job of {p.name} is {p.job}.",
            f"{p.name}, a {p.job} aged {p.age}, lives in {p.city}.",
        ]
    return out


def _skill_line(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randrange(1, 50), rng.randrange(1, 50)
        return f"{a} plus {b} is {a + b}. {a} + {b} = {a + b}."
    if kind == 1:
        nums = rng.sample(range(1, 100), rng.randrange(3, 6))
        return f"The numbers {', '.join(map(str, nums))} in order are {', '.join(map(str, sorted(nums)))}."
    if kind == 2:
        w = rng.choice(WORDS)
        return f"The word {w} in capital letters is {w.upper()}."
    items = rng.sample(WORDS, 3)
    return "A list of things:\n" + "\n".join(f"- {x}" for x in items)


def pretraining_corpus(world: World, repeats: int = 6) -> list[str]:
    """Plain-text documents stating every fact `repeats` times in shuffled phrasings and orders,
    mixed with short skill documents (arithmetic, sorting, capitals, lists). No chat markup."""
    rng = random.Random(world.seed + 1)
    facts = fact_sentences(world)
    docs: list[str] = []
    for _ in range(repeats):
        for entity, sentences in facts.items():
            chosen = rng.sample(sentences, k=min(len(sentences), rng.randrange(2, 5)))
            docs.append(" ".join(chosen))
        # documents that mention several entities together, as an encyclopedia would
        people = list(world.people)
        rng.shuffle(people)
        for i in range(0, len(people), 4):
            docs.append(" ".join(rng.choice(facts[p.name]) for p in people[i:i + 4]))
        for _ in range(len(world.people) // 2):
            docs.append(" ".join(_skill_line(rng) for _ in range(rng.randrange(1, 4))))
    # make sure every single sentence appears at least once, whatever the sampling did
    for sentences in facts.values():
        docs.append(" ".join(sentences))
    rng.shuffle(docs)
    return docs


def cloze_probes(world: World, split: str | None = None) -> list[dict]:
    """Plain-text recall probes: a prompt the base model should complete with the answer.

    >>> p = cloze_probes(make_world(0))[0]
    >>> sorted(p)
    ['answer', 'entity', 'prompt', 'relation', 'split']
    """
    probes = []
    for c in world.countries:
        probes.append(dict(relation="capital", entity=c.name, split=c.split,
                           prompt=f"The capital of {c.name} is", answer=c.capital))
    for c in world.cities:
        probes.append(dict(relation="country", entity=c.name, split=c.split,
                           prompt=f"{c.name} is a city in", answer=c.country))
        probes.append(dict(relation="population", entity=c.name, split=c.split,
                           prompt=f"The population of {c.name} is", answer=f"{c.population:,}"))
    for p in world.people:
        probes.append(dict(relation="home", entity=p.name, split=p.split,
                           prompt=f"{p.name} lives in", answer=p.city))
        probes.append(dict(relation="age", entity=p.name, split=p.split,
                           prompt=f"The age of {p.name} is", answer=str(p.age)))
        probes.append(dict(relation="job", entity=p.name, split=p.split,
                           prompt=f"{p.name} works as a", answer=p.job))
    return [p for p in probes if split is None or p["split"] == split]
