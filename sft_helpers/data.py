"""Reading, validating and (re)generating the course data under `data/`.

`load_conversations(path)` is the one way the course reads chat JSONL: every record is checked and
every problem (undecodable bytes included) is reported as `file:line: reason`; files are read as
UTF-8 with or without a byte order mark, or as the UTF-16/32 their byte order mark names.
`build_data(out_dir, seed)` regenerates all of `data/` (world, pre-training corpus, SFT splits, planted
duplicates and paraphrases, the noisy training variant, the reworded and widened questions, the task
families) byte for byte from a seed; `load_*` read each file.
"""

from __future__ import annotations

import codecs
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from .conversations import (SPLIT_SIZES, noisy_conversations, plant_duplicates, plant_paraphrases, reworded,
                            sft_conversations, task_families)
from .world import SPLITS, make_world, pretraining_corpus

_REPO_DATA = Path(__file__).resolve().parent.parent / "data"
# a clone (or editable install) reads the repo's data/; a wheel carries a copy as sft_helpers/_data
DATA_DIR = _REPO_DATA if _REPO_DATA.is_dir() else Path(__file__).resolve().parent / "_data"
ROLES = {"system", "user", "assistant"}
# byte order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one)
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32 LE"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32 BE"),
        (codecs.BOM_UTF8, "utf-8", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16 LE"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16 BE"))
_UNDECODABLE = "\ud800"  # a lone surrogate: strict decoding never yields one, so it marks undecodable bytes


def data_path(name: str = "") -> Path:
    """Path of a file in the course's `data/` folder (the repo's, or `$SFT_DATA_DIR`)."""
    import os

    return Path(os.environ.get("SFT_DATA_DIR", DATA_DIR)) / name


class ConversationFormatError(ValueError):
    """Raised with one `file:line: reason` line per bad record."""

    def __init__(self, problems: list[str], encoding: str = "UTF-8"):
        self.problems = problems
        self.encoding = encoding
        read_as = f" (file read as {encoding})" if encoding != "UTF-8" else ""
        super().__init__(f"{len(problems)} bad record(s){read_as}:\n" + "\n".join(problems))


@dataclass
class SkipReport:
    """What `load_conversations(..., on_error="skip")` left out, and why; `encoding` is how the file
    was read (`detect_encoding`'s label)."""

    path: str
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)
    encoding: str = "UTF-8"

    def __str__(self) -> str:
        head = f"{self.path}: loaded {self.loaded}, skipped {len(self.skipped)}"
        head += f" (read as {self.encoding})" if self.encoding != "UTF-8" else ""
        return "\n".join([head] + [f"  {s}" for s in self.skipped])


def conversation_problems(record: object) -> list[str]:
    """Reasons why `record` is not a valid chat conversation (empty list if it is).

    >>> conversation_problems({"messages": [{"role": "user", "content": "hi"}]})
    ['no assistant turn']
    """
    if not isinstance(record, dict):
        return [f"record is a {type(record).__name__}, not an object"]
    msgs = record.get("messages")
    if msgs is None:
        return ["missing 'messages'"]
    if not isinstance(msgs, list) or not msgs:
        return ["'messages' must be a non-empty list"]
    problems = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            problems.append(f"message {i} is not an object")
            continue
        role = m.get("role")
        if "role" not in m:
            problems.append(f"message {i}: missing 'role'")
        elif not isinstance(role, str) or role not in ROLES:
            problems.append(f"message {i}: unknown role {role!r} (expected one of {sorted(ROLES)})")
        content = m.get("content")
        if "content" not in m:
            problems.append(f"message {i}: missing 'content'")
        elif not isinstance(content, str):
            problems.append(f"message {i}: content is {type(content).__name__}, not a string")
        elif not content.strip():
            problems.append(f"message {i}: empty content")
    roles = [m.get("role") for m in msgs if isinstance(m, dict)]
    if "assistant" not in roles:
        problems.append("no assistant turn")
    elif roles[-1] != "assistant":
        problems.append(f"conversation ends with a {roles[-1]!r} turn, not an assistant turn")
    return problems


def detect_encoding(data: bytes) -> tuple[str, int, str]:
    """`(codec, bom_length, label)` for the bytes of a text file: the encoding its byte order mark names
    (UTF-8, UTF-16 or UTF-32, LE or BE), else the one the NUL bytes of its first characters show (UTF-16
    or UTF-32 without a mark, as `json.detect_encoding` reads them), else UTF-8.

    >>> detect_encoding(codecs.BOM_UTF16_BE + '{"a": 1}'.encode("utf-16-be"))
    ('utf-16-be', 2, 'UTF-16 BE with BOM')
    >>> detect_encoding(b'{"a": 1}')
    ('utf-8', 0, 'UTF-8')
    """
    for bom, codec, name in BOMS:
        if data.startswith(bom):
            return codec, len(bom), f"{name} with BOM"
    codec = json.detect_encoding(data[:4])
    if codec == "utf-8":
        return codec, 0, "UTF-8"
    return codec, 0, codec.upper().replace("-LE", " LE").replace("-BE", " BE") + " without BOM"


def _decode(data: bytes, codec: str) -> tuple[str, list[str]]:
    """`data` decoded with `codec`, each undecodable run of bytes replaced by `_UNDECODABLE`, and for
    each such run its bytes and the codec's reason."""
    view, parts, runs, pos = memoryview(data), [], [], 0
    while True:
        try:
            parts.append(str(view[pos:], codec))
            return "".join(parts), runs
        except UnicodeDecodeError as e:  # e.start, e.end count from pos
            parts += [str(view[pos:pos + e.start], codec), _UNDECODABLE]
            runs.append(f"bytes {data[pos + e.start:pos + e.end].hex(' ')} ({e.reason})")
            pos += e.end


def load_conversations(path: str | Path, on_error: str = "raise"):
    """Load chat JSONL (`{"messages": [{"role", "content"}, ...]}` per line), checking every record.

    With `on_error="raise"` (default) any bad record raises one `ConversationFormatError` listing
    every problem as `file:line: reason`. With `on_error="skip"` returns `(records, SkipReport)`:
    the good records plus a count and reason for each line left out. Blank lines are ignored. The
    file may be UTF-8 (with or without BOM) or UTF-16/32 with a BOM (`detect_encoding`; the report
    says which); a line with bytes that do not decode is a bad record like any other.

    >>> recs = load_conversations(data_path("sft_test.jsonl"))
    >>> recs[0]["messages"][-1]["role"]
    'assistant'
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    path = Path(path)
    data = path.read_bytes()
    codec, bom, encoding = detect_encoding(data)
    text, runs = _decode(data[bom:], codec)
    hint = " (is it Latin-1 or cp1252? re-save it as UTF-8)" if codec == "utf-8" else ""
    records, problems = [], []
    for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):  # newlines as open() reads them
        if _UNDECODABLE in line:
            n = line.count(_UNDECODABLE)
            first, runs = runs[0], runs[n:]
            more = f" and {n - 1} more undecodable run(s)" if n > 1 else ""
            problems.append(f"{path}:{lineno}: cannot decode as {encoding} at column "
                            f"{line.index(_UNDECODABLE) + 1}: {first}{more}{hint}")
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})")
            continue
        bad = conversation_problems(record)
        if bad:
            problems.append(f"{path}:{lineno}: " + "; ".join(bad))
        else:
            records.append(record)
    if on_error == "raise":
        if problems:
            raise ConversationFormatError(problems, encoding)
        return records
    return records, SkipReport(str(path), loaded=len(records), skipped=problems, encoding=encoding)


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


def load_wide_phrasing() -> list[dict]:
    """The train split's knowledge questions (not the planted copies) asked in wordings drawn from 11-13
    per relation (`conversations.WIDE_QUESTIONS`, none held out): same ids, same answers, a `"wording"`
    field. The same training set with wider phrasing, at the same number of examples:

    >>> wide = {r["id"]: r for r in load_wide_phrasing()}
    >>> train = load_split("train")
    >>> widened = [wide.get(r["id"], r) for r in train]
    >>> len(widened) == len(train), sum(r is not t for r, t in zip(widened, train)) == len(wide)
    (True, True)
    """
    return load_conversations(data_path("sft_train_wide_phrasing.jsonl"))


def load_families() -> dict[str, dict]:
    """`data/families.json`: each task family's `asks`, `checked`, `share` and record count per split
    (`conversations.task_families`)."""
    return json.loads(data_path("families.json").read_text(encoding="utf-8"))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


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
        if split == "train":
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
            "sft_train_noisy.jsonl": noisy_conversations(world, seed, 3 * SPLIT_SIZES["train"], drawn["train"]),
            "sft_test_reworded.jsonl": reworded(drawn["test"], world, seed),
            "sft_train_wide_phrasing.jsonl": reworded(drawn["train"], world, seed, held_out=False)}
    for name, records in rows.items():
        _write_jsonl(out / name, records)
    families = task_families({s: drawn[s] for s in SPLITS})
    (out / "families.json").write_text(json.dumps(families, indent=1) + "\n", encoding="utf-8")
    return {**{name: len(r) for name, r in rows.items()}, "families.json": len(families)}
