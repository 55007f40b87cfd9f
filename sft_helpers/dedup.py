"""De-duplication of chat SFT data: exact (normalised hash), near (MinHash + LSH) and semantic
(cosine of sentence embeddings from a causal LM).

Every method takes records `{"messages": [{"role", "content"}, ...]}` and returns a `DedupResult`:
the clusters of duplicates, the indices kept and removed, and the records skipped because they
are not valid chat conversations (`data.conversation_problems`), counted and named in `report()`.
The policy is **keep-first**: in every cluster the record with the lowest index is kept, all
others are removed; a skipped record is neither kept nor removed (`result.keep(records)` drops it).
Clusters are transitive (A ~ B and B ~ C put A, B and C in one cluster even when A and C are
not similar themselves).

To choose a threshold: run a method at a low threshold on data with planted duplicates, then
`threshold_curve(result.pairs, planted)` gives precision and recall at each threshold above it
(`plots.plot_threshold_curve` draws it). `python -m sft_helpers.course.bench dedup` times exact and
MinHash de-duplication on 100k synthetic conversations (`synthetic_conversations`).
"""

from __future__ import annotations

import re

import array
import hashlib
import itertools
import random
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from .records import conversation_problems

Pair = tuple[int, int]

_PUNCTUATION = re.compile(r"[^\w\s]")
# the same replacement for ASCII text by str.translate, several times faster than the regex
_ASCII_PUNCTUATION = str.maketrans({c: " " for c in map(chr, range(128)) if _PUNCTUATION.fullmatch(c)})


def normalise_text(text: str) -> str:
    """Text as duplicate checks compare it: lower-cased, punctuation (anything not a word character
    or whitespace) and the word "please" dropped, whitespace collapsed (`find_duplicates` here,
    `dedup.exact_duplicates` and the shingles of `dedup.near_duplicates`).

    >>> normalise_text("  Name a city,   PLEASE?")
    'name a city'
    """
    text = text.lower()
    words = (text.translate(_ASCII_PUNCTUATION) if text.isascii() else _PUNCTUATION.sub(" ", text)).split()
    return " ".join([w for w in words if w != "please"] if "please" in words else words)



@dataclass
class DedupResult:
    """What one de-duplication found. `clusters`: sorted indices of records that duplicate each
    other (two or more; the first is the one kept); `kept` / `removed`: indices into the input;
    `skipped`: `record #i: reason` for each record that was not compared; `pairs`: `(i, j, score)`
    with `i < j` for each pair found similar (score: 1.0 for exact, Jaccard of the shingle sets for
    MinHash, cosine for semantic), what `threshold_curve` reads."""

    method: str
    threshold: float | None
    n_records: int
    clusters: list[list[int]] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pairs: list[tuple[int, int, float]] = field(default_factory=list)

    def keep(self, records: list) -> list:
        """The kept records, in input order."""
        return [records[i] for i in self.kept]

    def report(self, show: int = 5) -> str:
        """A few lines: records in, removed in how many clusters, kept, and the skipped ones (the
        first `show` named)."""
        at = "" if self.threshold is None else f" at {self.threshold:g}"
        lines = [f"{self.method}{at}: {self.n_records:,} records, {len(self.removed):,} removed as duplicates "
                 f"({len(self.clusters):,} clusters, keep-first), {len(self.kept):,} kept, "
                 f"{len(self.skipped):,} skipped"]
        if self.skipped:
            lines[0] += " (not valid conversations, neither kept nor removed):"
            lines += [f"  {s}" for s in self.skipped[:show]]
            lines += [f"  ... and {len(self.skipped) - show} more"] if len(self.skipped) > show else []
        return "\n".join(lines)

    __str__ = report


# --- shared pieces ----------------------------------------------------------------------------

def _valid(records: list, roles: tuple[str, ...] | None) -> tuple[list[int], list[str]]:
    """Indices of the records that are valid conversations, and `record #i: reason` for the others."""
    if not isinstance(records, (list, tuple)):
        raise TypeError(f"records must be a list of {{'messages': [...]}} dicts, not {type(records).__name__}")
    good, skipped = [], []
    for i, r in enumerate(records):
        problems = conversation_problems(r)
        if not problems and roles is not None and not any(m["role"] in roles for m in r["messages"]):
            problems = [f"no message with a role in {list(roles)}"]
        if problems:
            skipped.append(f"record #{i}: " + "; ".join(problems))
        else:
            good.append(i)
    return good, skipped


def _messages(record: dict, roles: tuple[str, ...] | None) -> list[dict]:
    return [m for m in record["messages"] if roles is None or m["role"] in roles]


def _normalised(record: dict, roles: tuple[str, ...] | None) -> list[tuple[str, str]]:
    """`(role, normalise_text(content))` for each message compared."""
    return [(m["role"], normalise_text(m["content"])) for m in _messages(record, roles)]


def _key(normalised: list[tuple[str, str]]) -> bytes:
    text = "\x1e".join(f"{role}\x1f{content}" for role, content in normalised)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def clusters_from_pairs(n: int, pairs) -> list[list[int]]:
    """Connected components (union-find) of the graph on `range(n)` whose edges are `pairs`
    (`(i, j)` or `(i, j, score)`): each component of two or more, sorted, in order of its first index.

    >>> clusters_from_pairs(6, [(4, 1), (1, 2), (0, 5, 0.9)])
    [[0, 5], [1, 2, 4]]
    """
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, *_ in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the lowest index stays the root
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _result(method: str, threshold: float | None, n: int, good: list[int], skipped: list[str],
            pairs: list[tuple[int, int, float]]) -> DedupResult:
    """Clusters, kept and removed (keep-first) from the pairs found among the valid records."""
    clusters = clusters_from_pairs(n, pairs)
    removed = sorted(i for c in clusters for i in c[1:])
    drop = set(removed)
    kept = [i for i in good if i not in drop]
    return DedupResult(method, threshold, n, clusters, kept, removed, skipped, sorted(pairs))


# --- exact --------------------------------------------------------------------------------------

def exact_key(record: dict, roles: tuple[str, ...] | None = None) -> bytes:
    """A 16-byte hash of a conversation's roles and normalised contents (`normalise_text`:
    case, punctuation, "please" and extra whitespace do not count).

    >>> a = {"messages": [{"role": "user", "content": "Name a city."}]}
    >>> exact_key(a) == exact_key({"messages": [{"role": "user", "content": "name a  city, please"}]})
    True
    """
    return _key(_normalised(record, roles))


def exact_duplicates(records: list[dict], roles: tuple[str, ...] | None = None) -> DedupResult:
    """Records whose roles and normalised contents (`exact_key`) are equal; `roles` (e.g. `("user",)`)
    compares only those turns. Keep-first; invalid records are skipped and reported.

    >>> def chat(q, a): return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
    >>> r = exact_duplicates([chat("Name a city.", "Velm"), "oops", chat("name a city  please", "velm!")])
    >>> r.clusters, r.kept, r.removed, r.skipped
    ([[0, 2]], [0], [2], ['record #1: record is a str, not an object'])
    """
    good, skipped = _valid(records, roles)
    first: dict[bytes, int] = {}
    pairs = []
    for i in good:
        j = first.setdefault(exact_key(records[i], roles), i)
        if j != i:
            pairs.append((j, i, 1.0))
    return _result("exact", None, len(records), good, skipped, pairs)


# --- near: MinHash + LSH ----------------------------------------------------------------------

class _WordHashes(dict):
    """CRC32 of each word, computed once per distinct word."""

    def __missing__(self, word: str) -> int:
        h = self[word] = zlib.crc32(word.encode())
        return h


def shingle_hashes(docs: Iterable[list[str]], k: int) -> list[np.ndarray]:
    """For each document (a list of words) the 32-bit hashes of its `k`-word shingles, in order, with
    repeats (a document shorter than `k` words is one shingle); computed for all documents at once,
    each document's array a view into one array. `docs` may be a generator: it is read once.

    >>> a, b = shingle_hashes([["the", "cat", "sat", "down"], ["the", "cat", "sat", "up"]], k=3)
    >>> len(a), len(b), len(np.intersect1d(a, b))
    (2, 2, 1)
    """
    if k < 1:
        raise ValueError(f"shingle must be at least 1 word, not {k}")
    cache, flat, lengths = _WordHashes(), array.array("Q"), []
    for words in docs:
        words = words + [""] * (k - len(words))  # pad a short document to one full shingle
        flat.extend(map(cache.__getitem__, words))
        lengths.append(len(words))
    words = np.frombuffer(flat, dtype=np.uint64) if flat else np.zeros(0, dtype=np.uint64)
    n = len(words)
    acc = np.zeros(max(n - k + 1, 0), dtype=np.uint64)
    for t in range(k):  # FNV-style mix of the k word hashes starting at each position
        acc = (acc * np.uint64(1099511628211)) ^ words[t:n - k + 1 + t]
    hashes = ((acc ^ (acc >> np.uint64(32))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    ends = np.cumsum(lengths).tolist()
    return [hashes[end - length:end - k + 1] for end, length in zip(ends, lengths)]


def jaccard(a, b) -> float:
    """Jaccard similarity of two collections of numbers taken as sets (1.0 for two empty ones).

    >>> jaccard([1, 2, 3], [2, 3, 4, 4])
    0.5
    """
    union = len(np.union1d(a, b))
    return len(np.intersect1d(a, b)) / union if union else 1.0


def near_duplicates(records: list[dict], threshold: float = 0.7, num_perm: int = 128, shingle: int = 3,
                    roles: tuple[str, ...] | None = None, seed: int = 1) -> DedupResult:
    """Records whose sets of `shingle`-word shingles (normalised words, role markers included) have a
    Jaccard similarity of at least `threshold`: `datasketch` MinHash signatures (`num_perm`
    permutations, built in bulk by `MinHash.generator` from precomputed shingle hashes) inserted
    in a `MinHashLSH`: records that share a bucket in any band are candidates, and each candidate
    pair is checked with the exact Jaccard of the two shingle sets (so no false positive
    passes; LSH may miss a pair just above the threshold). Records with equal `exact_key`s are one
    entry in the index. One changed word removes up to `shingle` of a text's shingles: on a 60-word
    conversation with 3-word shingles Jaccard is about 0.9.

    >>> reply = "Velm is a harbour city in the north, known for its grey stone bridges and its fish market"
    >>> a = {"messages": [{"role": "user", "content": "Tell me about Velm."}, {"role": "assistant", "content": reply}]}
    >>> b = {"messages": [a["messages"][0], {"role": "assistant", "content": reply.replace("grey", "red")}]}
    >>> near_duplicates([a, b], threshold=0.6).pairs
    [(0, 1, 0.76)]
    """
    from datasketch import MinHash, MinHashLSH

    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], not {threshold}")
    good, skipped = _valid(records, roles)
    pairs, first, unique, texts = [], {}, [], []
    for i in good:  # equal exact keys: one entry in the index, the others pair with it at 1.0
        normalised = _normalised(records[i], roles)
        j = first.setdefault(_key(normalised), i)
        if j != i:
            pairs.append((j, i, 1.0))
            continue
        unique.append(i)
        texts.append(" ".join(f"<{role}> {content}" for role, content in normalised))
    shingles = shingle_hashes((t.split() for t in texts), shingle)
    del texts
    lsh = MinHashLSH(threshold=min(threshold, 0.99), num_perm=num_perm)
    signatures = MinHash.generator((s.tolist() for s in shingles), num_perm=num_perm, seed=seed, hashfunc=int)
    with lsh.insertion_session() as session:
        for pos, m in enumerate(signatures):
            session.insert(pos, m, check_duplication=False)
    candidates = set()  # records sharing a bucket in any band
    for table in lsh.hashtables:
        for bucket in (table.get(k) for k, count in table.itemcounts().items() if count > 1):
            candidates.update(itertools.combinations(sorted(bucket), 2))
    for a, b in sorted(candidates):
        score = jaccard(shingles[a], shingles[b])
        if score >= threshold:
            pairs.append((unique[a], unique[b], score))
    return _result("minhash", threshold, len(records), good, skipped, pairs)


def near_duplicates_per_system_prompt(records: list[dict], threshold: float = 0.8, **kw) -> DedupResult:
    """`near_duplicates` on the user and assistant turns, run separately within each group of
    records that share a system prompt (normalised; no system prompt is a group too): a long shared
    system prompt would make short conversations look alike, and records under different system
    prompts are not duplicates. Pairs and clusters index `records`; `kw` goes to `near_duplicates`.

    >>> ask = [{"role": "user", "content": "Where does Ada live?"}, {"role": "assistant", "content": "In Velm."}]
    >>> sys = {"role": "system", "content": "Answer in one word."}
    >>> near_duplicates_per_system_prompt([{"messages": ask}, {"messages": [sys] + ask}, {"messages": ask}]).clusters
    [[0, 2]]
    """
    good, skipped = _valid(records, None)
    groups: dict[str, list[int]] = {}
    for i in good:
        system = " ".join(normalise_text(m["content"]) for m in records[i]["messages"] if m["role"] == "system")
        groups.setdefault(system, []).append(i)
    pairs = []
    for members in groups.values():
        found = near_duplicates([records[i] for i in members], threshold, roles=("user", "assistant"), **kw)
        pairs += [(members[i], members[j], score) for i, j, score in found.pairs]
    return _result("minhash per system prompt", threshold, len(records), good, skipped, pairs)


# --- semantic: embeddings of a causal LM ------------------------------------------------------

def conversation_text(record: dict, roles: tuple[str, ...] | None = None) -> str:
    """A conversation as one plain text, `role: content` per line (what `embed_texts` embeds).

    >>> conversation_text({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    'user: Hi\\nassistant: Hello'
    """
    return "\n".join(f"{m['role']}: {m['content']}" for m in _messages(record, roles))


def embed_texts(texts: list[str], model, tokenizer, batch_size: int = 32, max_length: int = 256,
                layer: int = 1, progress: bool = True):
    """Unit-length sentence embeddings (a float32 CPU tensor, one row per text): the hidden states
    of `layer` (0: the token embeddings, 1: the output of the first block, -1: of the last) averaged
    over each text's real tokens (the attention mask excludes padding), in batches of texts of
    similar length, without gradients.

    The default is layer 1 because it separated paraphrases best on the course's knowledge questions
    (150 paraphrase pairs against the same question about another entity / an unrelated question,
    AUC): tiny base 0.85 / 0.99 at layer 1, 0.52 / 0.93 at the last layer; SmolLM2-135M 1.00 / 1.00
    at layer 1, 0.95 / 1.00 at the last, while its middle layers put every cosine near 1.

    >>> from sft_helpers.models import load_model
    >>> model, tok = load_model("tiny")
    >>> e = embed_texts(["Where does Velm live?", "Where does Velm live?", "a b c"], model, tok, progress=False)
    >>> e.shape[0], round(float(e[0] @ e[1]), 4), bool(e[0] @ e[2] < 1)
    (3, 1.0, True)
    """
    import torch

    from .progress import progress_bar

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together
    out = torch.zeros(len(texts), model.config.hidden_size)
    starts = range(0, len(texts), batch_size)
    with torch.no_grad():
        for s in progress_bar(starts, disable=not progress, desc="embedding", unit="batch"):
            idx = order[s:s + batch_size]
            batch = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                              max_length=max_length).to(model.device)
            positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # the same on either padding side
            hidden = model(**batch, position_ids=positions, output_hidden_states=True).hidden_states[layer].float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[idx] = torch.nn.functional.normalize(mean, dim=-1).cpu()
    return out


def embed_records(records: list[dict], model, tokenizer=None, roles: tuple[str, ...] | None = None,
                  batch_size: int = 32, max_length: int = 256, layer: int = 1, progress: bool = True):
    """Unit-length embeddings of `records` (`conversation_text`), one row each: with a `tokenizer`,
    `embed_texts` of a causal LM's hidden states; without, `model.encode` of a sentence-transformers
    model (e.g. `models.sentence_embedder()`, all-MiniLM-L6-v2)."""
    import torch

    texts = [conversation_text(r, roles) for r in records]
    if tokenizer is not None:
        return embed_texts(texts, model, tokenizer, batch_size, max_length, layer, progress)
    if not hasattr(model, "encode"):
        raise TypeError("embed_records: pass a causal LM with its tokenizer, or a sentence-transformers model")
    emb = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_tensor=True,
                       show_progress_bar=progress)
    return emb.detach().to("cpu", torch.float32)


def cosine_pairs(embeddings, threshold: float, block_rows: int | None = None,
                 max_pairs: int = 2_000_000) -> list[tuple[int, int, float]]:
    """`(i, j, cosine)` for every pair `i < j` of unit-length rows with cosine ≥ `threshold`, computed
    a block of rows at a time (`block_rows`, by default as many as keep a block near 16M scores, 64 MB).
    More than `max_pairs` pairs is an error (a threshold too low for these embeddings), not a
    list that fills the memory.

    >>> import torch
    >>> e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=-1)
    >>> [(i, j, round(c, 3)) for i, j, c in cosine_pairs(e, 0.9, block_rows=1)]
    [(0, 1, 0.995)]
    """
    import torch

    n = len(embeddings)
    block_rows = block_rows or max(1, 2**24 // max(n, 1))
    pairs = []
    for start in range(0, n, block_rows):
        sims = embeddings[start:start + block_rows] @ embeddings.T
        rows, cols = torch.nonzero(sims >= threshold, as_tuple=True)
        for r, c, score in zip(rows.tolist(), cols.tolist(), sims[rows, cols].tolist()):
            if c > start + r:  # each pair once, never a row with itself
                pairs.append((start + r, c, score))
        if len(pairs) > max_pairs:
            raise ValueError(f"more than {max_pairs:,} pairs have a cosine of at least {threshold}: raise the "
                             "threshold (or max_pairs)")
    return pairs


def semantic_duplicates(records: list[dict], model, tokenizer=None, threshold: float = 0.97,
                        roles: tuple[str, ...] | None = None, batch_size: int = 32, max_length: int = 256,
                        layer: int = 1, progress: bool = True) -> DedupResult:
    """Records whose embeddings (`embed_records`: a sentence-transformers model, or with a
    `tokenizer` the mask-aware mean of a causal LM's hidden states, e.g. `load_model("tiny")`) have a
    cosine similarity of at least `threshold`;
    pairs from a blocked cosine matrix (`cosine_pairs`), clusters by union-find, keep-first. Finds
    paraphrases that share few words, as far as the model's embeddings separate them. The tiny base
    does not separate them from the same kind of question about another entity: on 300 of the
    course's knowledge conversations (150 paraphrase pairs), at 0.97 99% of paraphrase pairs, 31% of
    same-kind pairs and 3% of unrelated pairs score above it, and precision over all pairs stays
    under 20% at thresholds 0.95-0.99, so with it semantic de-duplication over-merges. SmolLM2-135M
    nearly separates them (paraphrase pairs 0.977 or more, same-kind pairs at most 0.979, unrelated
    at most 0.942).

    >>> from sft_helpers.models import load_model
    >>> model, tok = load_model("tiny")
    >>> q = [{"messages": [{"role": "user", "content": c}, {"role": "assistant", "content": "Velm."}]}
    ...      for c in ("Where does Ada live?", "Where does Ada live?", "Give me three colours as a list.")]
    >>> semantic_duplicates(q, model, tok, threshold=0.999, progress=False).clusters
    [[0, 1]]
    """
    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold must be a cosine in [-1, 1], not {threshold}")
    good, skipped = _valid(records, roles)
    emb = embed_records([records[i] for i in good], model, tokenizer, roles, batch_size, max_length, layer,
                        progress)
    pairs = [(good[i], good[j], c) for i, j, c in cosine_pairs(emb, threshold)]
    return _result("semantic", threshold, len(records), good, skipped, pairs)


# --- choosing a threshold ---------------------------------------------------------------------

def precision_recall(found, planted) -> dict:
    """Precision and recall of found duplicate pairs against planted ones (`(i, j)` or `(i, j, score)`).
    Duplicates are counted as groups: a found pair is right when its two records are in one
    planted group (planted pairs joined transitively: two copies of one record are duplicates of
    each other too); a planted pair is recalled when its two records end in one found cluster.
    With nothing found precision is 1.0; with nothing planted recall is 1.0.

    >>> precision_recall(found=[(0, 1), (1, 2), (3, 4)], planted=[(0, 1), (0, 2), (5, 6)])
    {'found': 3, 'planted': 3, 'precision': 0.6666666666666666, 'recall': 0.6666666666666666}
    """
    found = [(i, j) for i, j, *_ in found]
    planted = [(i, j) for i, j, *_ in planted]
    n = 1 + max((max(p) for p in found + planted), default=0)
    planted_group = {i: g for g, c in enumerate(clusters_from_pairs(n, planted)) for i in c}
    found_group = {i: g for g, c in enumerate(clusters_from_pairs(n, found)) for i in c}
    right = sum(i in planted_group and planted_group.get(i) == planted_group.get(j) for i, j in found)
    recalled = sum(i in found_group and found_group.get(i) == found_group.get(j) for i, j in planted)
    return {"found": len(found), "planted": len(planted), "precision": right / len(found) if found else 1.0,
            "recall": recalled / len(planted) if planted else 1.0}


def at_threshold(result: DedupResult, threshold: float) -> DedupResult:
    """`result` (found at a lower threshold) as if found at `threshold`: its pairs scoring at least
    that, re-clustered (keep-first). Saves re-embedding when choosing a threshold from a curve.

    >>> r = _result("semantic", 0.5, 3, [0, 1, 2], [], [(0, 1, 0.9), (1, 2, 0.6)])
    >>> at_threshold(r, 0.8).clusters, at_threshold(r, 0.8).kept
    ([[0, 1]], [0, 2])
    """
    if result.threshold is not None and threshold < result.threshold:
        raise ValueError(f"pairs were found at {result.threshold}: cannot lower the threshold to {threshold}")
    good = sorted(result.kept + result.removed)  # every record that was compared
    return _result(result.method, threshold, result.n_records, good, result.skipped,
                   [p for p in result.pairs if p[2] >= threshold])


def best_threshold(curve: list[dict]) -> dict:
    """The row of a `threshold_curve` with the highest F1 (harmonic mean of precision and recall;
    ties: the higher threshold, which removes less).

    >>> best_threshold([{"threshold": 0.5, "precision": 0.1, "recall": 1.0},
    ...                 {"threshold": 0.9, "precision": 0.8, "recall": 0.6}])["threshold"]
    0.9
    """
    def f1(row):
        p, r = row["precision"], row["recall"]
        return 2 * p * r / (p + r) if p + r else 0.0
    return max(curve, key=lambda row: (f1(row), row["threshold"]))


def threshold_curve(pairs, planted, thresholds=None) -> list[dict]:
    """Precision and recall (`precision_recall`) of the scored pairs `(i, j, score)` (a
    `DedupResult` or its `.pairs`) kept at each threshold: one row `{"threshold", "found",
    "planted", "precision", "recall"}` per threshold (by default 21 evenly spaced from the lowest
    score to the highest). Only thresholds at or above the one the pairs were found with mean
    anything: run the method at a low threshold first.

    >>> curve = threshold_curve([(0, 1, 0.9), (2, 3, 0.6)], planted=[(0, 1)], thresholds=[0.5, 0.8])
    >>> [(r["threshold"], r["precision"], r["recall"]) for r in curve]
    [(0.5, 0.5, 1.0), (0.8, 1.0, 1.0)]
    """
    pairs = pairs.pairs if isinstance(pairs, DedupResult) else list(pairs)
    if thresholds is None:
        scores = [p[2] for p in pairs] or [0.0]
        thresholds = np.linspace(min(scores), max(scores), 21).tolist()
    return [{"threshold": t, **precision_recall([p for p in pairs if p[2] >= t], planted)} for t in thresholds]


def split_half_threshold(pairs, planted, n_records: int, seed: int = 0, thresholds=None) -> dict:
    """A threshold chosen on one half of the records and scored on the other, so that its precision
    and recall are measured on pairs the choice never saw. The records are split in two at random
    (`seed`), each planted group whole in one half; pairs across the halves are dropped. Half A's
    pairs choose the threshold (`best_threshold` of their `threshold_curve` against A's planted
    pairs); `held out` is `precision_recall` of half B's pairs at that threshold, `held out curve`
    half B's curve at the same thresholds, and `held out records` the records of half B.

    >>> pairs = [(0, 1, 0.9), (2, 3, 0.8), (4, 5, 0.6), (6, 7, 0.5), (0, 4, 0.7), (2, 6, 0.7)]
    >>> r = split_half_threshold(pairs, [(0, 1), (2, 3)], 8, thresholds=[0.5, 0.75])
    >>> r["threshold"], r["held out"]["precision"], r["held out"]["recall"]
    (0.75, 1.0, 1.0)
    """
    pairs = pairs.pairs if isinstance(pairs, DedupResult) else list(pairs)
    rng = random.Random(f"{seed}-split-half")
    grouped = clusters_from_pairs(n_records, planted)
    in_group = {i for g in grouped for i in g}
    units = grouped + [[i] for i in range(n_records) if i not in in_group]
    half = {i: h for unit in units for h in [rng.random() < 0.5] for i in unit}

    def side(items, h):
        return [p for p in items if half[p[0]] == h and half[p[1]] == h]

    curve = threshold_curve(side(pairs, True), side(planted, True), thresholds)
    held_curve = threshold_curve(side(pairs, False), side(planted, False), [r["threshold"] for r in curve])
    chosen = best_threshold(curve)
    held = next(r for r in held_curve if r["threshold"] == chosen["threshold"])
    return {"threshold": chosen["threshold"], "chosen on": chosen, "held out": held, "curve": curve,
            "held out curve": held_curve, "held out records": sorted(i for i, h in half.items() if not h)}


def planted_pairs(records: list[dict], planted: list[dict]) -> list[Pair]:
    """Index pairs `(original, copy)` from a side table `[{"id", "duplicate_of", ...}]` that names
    planted copies by the records' `"id"`s (`conversations.plant_duplicates`,
    `data/sft_train_duplicates.jsonl`).

    >>> planted_pairs([{"id": "a"}, {"id": "b"}, {"id": "a-copy"}], [{"id": "a-copy", "duplicate_of": "a"}])
    [(0, 2)]
    """
    index = {r["id"]: i for i, r in enumerate(records) if isinstance(r, dict) and "id" in r}
    return sorted(tuple(sorted((index[p["duplicate_of"]], index[p["id"]]))) for p in planted)


# --- synthetic data with planted duplicates ---------------------------------------------------

def _vocabulary(rng: random.Random, size: int) -> list[str]:
    syllables = ["ka", "lo", "mi", "ve", "dru", "sa", "ten", "po", "rin", "gal", "u", "ex", "bor", "thi", "an"]
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def synthetic_conversations(n: int, seed: int = 0, exact_share: float = 0.05, near_share: float = 0.05,
                            vocabulary: int = 5000) -> tuple[list[dict], dict[str, list[Pair]]]:
    """`n` conversations (a user question of 5-25 words, a reply of 30-120 words, a system prompt in a
    third of them; words drawn from a Zipf-like vocabulary) of which `exact_share` are copies of
    another record differing only in case, spacing and punctuation, and `near_share` copies with
    1-3 words of the reply replaced; in shuffled order. Returns the records and the planted pairs
    `{"exact": [(i, j), ...], "near": [...]}`. Deterministic for a seed.

    >>> records, planted = synthetic_conversations(100, seed=0)
    >>> len(records), len(planted["exact"]), len(planted["near"])
    (100, 5, 5)
    """
    rng = random.Random(f"{seed}-synthetic-dedup")
    words = _vocabulary(rng, vocabulary)
    cum = np.cumsum(1 / np.arange(1, vocabulary + 1)).tolist()  # Zipf weights

    def sentence(lo: int, hi: int) -> str:
        text = " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(lo, hi)))
        return text[0].upper() + text[1:] + rng.choice(".?!")

    n_exact, n_near = round(n * exact_share), round(n * near_share)
    base = []
    for _ in range(n - n_exact - n_near):
        msgs = [{"role": "user", "content": sentence(5, 25)}, {"role": "assistant", "content": sentence(30, 120)}]
        if rng.random() < 1 / 3:
            msgs.insert(0, {"role": "system", "content": sentence(5, 15)})
        base.append({"messages": msgs})
    records, sources = list(base), [None] * len(base)
    for kind, count in (("exact", n_exact), ("near", n_near)):
        for _ in range(count):
            src = rng.randrange(len(base))
            msgs = [dict(m) for m in base[src]["messages"]]
            if kind == "exact":
                for m in msgs:
                    m["content"] = rng.choice([str.lower, str.upper, lambda s: s.replace(" ", "  "),
                                               lambda s: s.rstrip(".?!") + " !"])(m["content"])
            else:
                reply = msgs[-1]["content"].split(" ")
                for _ in range(rng.randint(1, 3)):
                    reply[rng.randrange(1, len(reply) - 1)] = rng.choice(words)
                msgs[-1]["content"] = " ".join(reply)
            records.append({"messages": msgs})
            sources.append((src, kind))
    order = list(range(len(records)))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    planted: dict[str, list[Pair]] = {"exact": [], "near": []}
    for old, source in enumerate(sources):
        if source:
            a, b = where[source[0]], where[old]
            planted[source[1]].append((min(a, b), max(a, b)))
    return [records[i] for i in order], {k: sorted(v) for k, v in planted.items()}
