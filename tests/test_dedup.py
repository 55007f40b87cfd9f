"""De-duplication (issue 15): exact, MinHash and semantic duplicates, keep-first, skips, precision/recall."""

import json
import random
import re

import pytest

from sft_helpers.paths import data_path
from sft_helpers.course.data import load_split
from sft_helpers.dedup import (
    DedupResult,
    clusters_from_pairs,
    cosine_pairs,
    embed_texts,
    exact_duplicates,
    near_duplicates,
    planted_pairs,
    precision_recall,
    semantic_duplicates,
    synthetic_conversations,
    threshold_curve,
)
from sft_helpers.dedup import normalise_text

REPLY = ("The old harbour of Velm was built in stone by the first settlers, who came from the southern hills "
         "with their boats and their goats; today it holds a fish market every morning, a small museum about "
         "the settlers, two bakeries that open before dawn and a ferry that crosses to the island of Drau twice "
         "a day in summer and once a day in winter, weather permitting.")


def chat(user: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def partition_ok(r: DedupResult, n: int) -> bool:
    """kept, removed and skipped records together are every record, each once."""
    skipped = [int(re.match(r"record #(\d+)", s).group(1)) for s in r.skipped]
    return sorted(r.kept + r.removed + skipped) == list(range(n))


# --- exact --------------------------------------------------------------------------------------

def test_exact_finds_every_planted_copy_of_the_course_data():
    records = load_split("train")
    side = [json.loads(line) for line in data_path("sft_train_duplicates.jsonl").read_text().splitlines()]
    planted = planted_pairs(records, side)
    assert len(planted) == 120  # 60 exact copies and 60 "near" (case, spacing, "please") copies
    r = exact_duplicates(records)
    assert precision_recall(r.pairs, planted)["recall"] == 1.0
    assert len(r.removed) >= 120 and partition_ok(r, len(records))


def test_exact_finds_planted_exact_copies_and_no_near_ones():
    records, planted = synthetic_conversations(400, seed=3)
    r = exact_duplicates(records)
    assert precision_recall(r.pairs, planted["exact"])["recall"] == 1.0
    assert precision_recall(r.pairs, planted["exact"] + planted["near"])["precision"] == 1.0
    assert precision_recall(r.pairs, planted["near"])["recall"] < 0.5  # a replaced word is not an exact copy


def test_normalisation_ignores_case_spacing_punctuation_and_please():
    a = chat("Name a city.", "Velm")
    variants = [chat("name a city", "velm!"), chat("  NAME a city, please?", "Velm."), chat("Name a city.", "Velm")]
    r = exact_duplicates([a, *variants, chat("Name a town.", "Velm")])
    assert r.clusters == [[0, 1, 2, 3]] and r.kept == [0, 4] and r.removed == [1, 2, 3]
    assert exact_duplicates([chat("hi", "a"), {"messages": [{"role": "system", "content": "hi"},
                                                            {"role": "assistant", "content": "a"}]}]).clusters == []


def test_normalise_text_is_the_regex_definition():
    """The ASCII fast path of `normalise_text` gives what the regex definition gives, on ASCII and not."""
    def reference(text: str) -> str:
        text = re.sub(r"[^\w\s]", " ", text.lower())
        return " ".join(re.sub(r"\bplease\b", " ", text).split())

    rng = random.Random(0)
    alphabet = [chr(c) for c in range(128)] + list("éÉßı\u00a0\u2003½٣—«»")
    alphabet += ["please", "Please", "pleased", "_please"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert normalise_text(text) == reference(text), repr(text)


# --- near (MinHash) -----------------------------------------------------------------------------

def test_minhash_finds_a_one_word_change_that_exact_misses():
    a = chat("Tell me about the harbour of Velm.", REPLY)
    b = chat("Tell me about the harbour of Velm.", REPLY.replace("museum", "library"))
    c = chat("What is the capital of Norland?", "The capital of Norland is Ost, a city of bridges and towers, "
             "built on seven islands in the delta of the river Mar, famous for its glass.")
    records = [a, c, b]
    assert exact_duplicates(records).clusters == []
    r = near_duplicates(records, threshold=0.7)
    assert r.clusters == [[0, 2]] and r.kept == [0, 1] and r.removed == [2]
    assert [(i, j) for i, j, _ in r.pairs] == [(0, 2)] and 0.85 < r.pairs[0][2] < 1


def test_minhash_on_synthetic_data_finds_planted_pairs_and_nothing_else():
    records, planted = synthetic_conversations(1000, seed=1)
    r = near_duplicates(records, threshold=0.5)
    pr = precision_recall(r.pairs, planted["exact"] + planted["near"])
    assert pr["precision"] == 1.0 and pr["recall"] >= 0.98
    assert precision_recall(r.pairs, planted["exact"])["recall"] == 1.0  # exact copies: Jaccard 1
    assert all(0.5 <= s <= 1 for _, _, s in r.pairs) and partition_ok(r, len(records))


def test_minhash_is_deterministic_and_roles_restrict_the_comparison():
    records, _ = synthetic_conversations(200, seed=2)
    assert near_duplicates(records).pairs == near_duplicates(records).pairs
    same_question = [chat("Where does Ada live?", "In Velm, by the sea, in a house with a red door and a garden."),
                     chat("Where does Ada live?", "She is 40 years old and works as a baker in the old town.")]
    assert near_duplicates(same_question).clusters == []
    assert near_duplicates(same_question, roles=("user",)).clusters == [[0, 1]]


# --- keep-first, skips, empty input ---------------------------------------------------------

def test_keep_first_with_transitive_clusters():
    assert clusters_from_pairs(7, [(5, 3), (3, 1), (6, 4)]) == [[1, 3, 5], [4, 6]]
    records = [chat("q", "x"), chat("Q", "y"), chat("q!", "x"), chat("q", "y"), chat("q", "X")]
    r = exact_duplicates(records)
    assert r.clusters == [[0, 2, 4], [1, 3]] and r.kept == [0, 1] and r.removed == [2, 3, 4]
    assert r.keep(records) == [records[0], records[1]]


def test_empty_input_gives_an_empty_result():
    for r in (exact_duplicates([]), near_duplicates([])):
        assert (r.n_records, r.clusters, r.kept, r.removed, r.skipped) == (0, [], [], [], [])
        assert "0 records" in r.report()


def test_invalid_records_are_skipped_counted_and_reported():
    good = chat("Name a city.", "Velm")
    records = [good, "not a dict", {"text": "no messages"}, good, {"messages": [{"role": "user", "content": "hi"}]}]
    for method in (exact_duplicates, near_duplicates):
        r = method(records)
        assert r.kept == [0] and r.removed == [3] and len(r.skipped) == 3
        assert r.skipped[0] == "record #1: record is a str, not an object"
        assert r.skipped[2] == "record #4: no assistant turn"
        assert "3 skipped (not valid conversations" in str(r) and partition_ok(r, len(records))


def test_clear_errors_for_wrong_arguments():
    with pytest.raises(TypeError, match="list of"):
        exact_duplicates({"messages": []})
    with pytest.raises(ValueError, match="threshold"):
        near_duplicates([chat("a", "b")], threshold=1.5)
    with pytest.raises(ValueError, match="shingle"):
        near_duplicates([chat("a", "b")], shingle=0)


# --- precision / recall and the threshold curve ----------------------------------------------

def test_precision_recall_by_hand():
    planted = [(0, 1), (0, 2), (3, 4)]  # 0, 1, 2 are one group: (1, 2) is a duplicate pair too
    assert precision_recall([(1, 2), (3, 4, 0.9)], planted) == {"found": 2, "planted": 3, "precision": 1.0,
                                                                 "recall": 1 / 3}
    found = [(0, 1), (1, 2), (3, 4), (5, 6)]  # (5, 6) is wrong; clusters {0,1,2} and {3,4} recall everything
    assert precision_recall(found, planted) == {"found": 4, "planted": 3, "precision": 0.75, "recall": 1.0}
    assert precision_recall([], planted)["precision"] == 1.0 and precision_recall([], planted)["recall"] == 0.0
    assert precision_recall([(0, 1)], [])["recall"] == 1.0


def test_threshold_curve_trades_recall_for_precision():
    pairs = [(0, 1, 0.95), (2, 3, 0.8), (4, 5, 0.6), (6, 7, 0.55)]
    curve = threshold_curve(pairs, planted=[(0, 1), (2, 3), (8, 9)], thresholds=[0.5, 0.7, 0.9, 0.99])
    assert [(c["found"], c["precision"], c["recall"]) for c in curve] == [
        (4, 0.5, 2 / 3), (2, 1.0, 2 / 3), (1, 1.0, 1 / 3), (0, 1.0, 0.0)]
    default = threshold_curve(DedupResult("x", 0.5, 10, pairs=pairs), [(0, 1)])
    assert len(default) == 21 and default[0]["threshold"] == 0.55 and default[-1]["threshold"] == 0.95


def test_plot_threshold_curve():
    from matplotlib.figure import Figure

    from sft_helpers.course.plots import plot_threshold_curve

    curve = threshold_curve([(0, 1, 0.9), (2, 3, 0.6)], [(0, 1)], thresholds=[0.5, 0.7, 0.9])
    fig = plot_threshold_curve({"minhash": curve, "semantic": curve}, chosen=0.7)
    assert isinstance(fig, Figure) and len(fig.axes[0].lines) == 5  # 2 curves x 2 lines + the chosen one


# --- semantic ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from sft_helpers.models import load_model

    return load_model("tiny")


def test_embeddings_are_unit_length_mask_aware_and_batch_independent(tiny):
    model, tok = tiny
    texts = ["Where does Ada live?", "What is the capital of Norland? " * 8, "Where does Ada live?", "a"]
    together = embed_texts(texts, model, tok, batch_size=4, progress=False)
    alone = embed_texts(texts, model, tok, batch_size=1, progress=False)  # no padding at all
    assert (together.norm(dim=1) - 1).abs().max() < 1e-5
    assert (together - alone).abs().max() < 1e-4  # padding does not change an embedding
    assert float(together[0] @ together[2]) > 0.9999 and float(together[0] @ together[1]) < 0.999


def test_cosine_pairs_blocks_give_the_same_pairs(tiny):
    model, tok = tiny
    records, _ = synthetic_conversations(40, seed=4)
    emb = embed_texts([m["messages"][-1]["content"] for m in records], model, tok, progress=False)
    whole, blocked = cosine_pairs(emb, -1.0), cosine_pairs(emb, -1.0, block_rows=3)
    assert len(whole) == 40 * 39 // 2 and [p[:2] for p in blocked] == [p[:2] for p in whole]
    assert max(abs(a[2] - b[2]) for a, b in zip(whole, blocked)) < 1e-5
    assert all(i < j for i, j, _ in whole)
    with pytest.raises(ValueError, match="raise the threshold"):
        cosine_pairs(emb, -1.0, max_pairs=100)


def test_semantic_finds_identical_and_ranks_a_paraphrase_above_unrelated(tiny):
    model, tok = tiny
    records = [chat("Where does Ada Velm live?", "They live in Ostrin."),
               chat("What is the home city of Ada Velm?", "They live in Ostrin."),  # a paraphrase of 0
               chat("Give me three colours as a Markdown list.", "- red\n- green\n- blue"),
               chat("Where does Ada Velm live?", "They live in Ostrin."),  # a copy of 0
               "skipped"]
    r = semantic_duplicates(records, model, tok, threshold=0.9999, progress=False)
    assert r.clusters == [[0, 3]] and r.kept == [0, 1, 2] and len(r.skipped) == 1
    low = semantic_duplicates(records, model, tok, threshold=-1, progress=False)
    score = {(i, j): s for i, j, s in low.pairs}
    assert score[(0, 1)] > score[(0, 2)] and score[(0, 1)] > score[(1, 2)]


# --- the benchmark command ----------------------------------------------------------------

def test_bench_dedup_writes_its_section(tmp_path):
    from sft_helpers.course.bench import main

    out = tmp_path / "benchmarks.md"
    main(["dedup", "--n", "300", "--out", str(out)])
    text = out.read_text()
    assert "<!-- bench:dedup -->" in text and "<!-- /bench:dedup -->" in text
    assert "300 synthetic conversations" in text and "| 100.0% | 100.0% |" in text


def test_a_real_sentence_embedder_tells_a_paraphrase_from_the_same_question_about_another_entity():
    """all-MiniLM-L6-v2 (offline wheel): the planted paraphrase pairs score above the hard negatives
    (the source's own wording about another entity) on most pairs; the tiny base cannot tell them apart."""
    from sft_helpers.course.data_strategy import hard_negatives, paraphrase_pairs, with_paraphrases
    from sft_helpers.dedup import embed_records
    from sft_helpers.models import sentence_embedder

    records, _ = with_paraphrases()
    pos, neg = paraphrase_pairs()[:20], hard_negatives()[:20]
    used = sorted({i for pair in pos + neg for i in pair})
    emb = dict(zip(used, embed_records([records[i] for i in used], sentence_embedder(), progress=False)))
    cos = {p: float(emb[p[0]] @ emb[p[1]]) for p in pos + neg}
    assert len(neg) == 20 and all(records[i]["task"] == records[k]["task"] for i, k in neg)
    above = sum(cos[p] > cos[n] for p in pos for n in neg) / (len(pos) * len(neg))
    assert above > 0.9, above  # AUC of paraphrase vs hard-negative cosines


def test_split_half_threshold_keeps_planted_groups_whole_and_scores_only_the_other_half():
    from sft_helpers.dedup import clusters_from_pairs, split_half_threshold

    rng = random.Random(0)
    n = 200
    planted = [(i, i + 1) for i in range(0, 100, 2)] + [(1, 150)]  # one group of three
    pairs = [(i, j, 0.9 + rng.random() / 20) for i, j in planted[:-1]]
    pairs += [(i, j, 0.79 * rng.random()) for i in range(100, 200) for j in range(i + 1, min(i + 4, 200))]
    out = split_half_threshold(pairs, planted, n, seed=3, thresholds=[0.5, 0.8, 0.95])
    held = set(out["held out records"])
    for group in clusters_from_pairs(n, planted):
        assert len({i in held for i in group}) == 1, group  # a group never straddles the halves
    held_pairs = [p for p in pairs if set(p[:2]) <= held and p[2] >= out["threshold"]]
    assert out["held out"]["found"] == len(held_pairs)
    assert out["held out"]["planted"] == sum(set(p) <= held for p in planted)
    assert out["threshold"] == 0.8 and out["held out"]["precision"] == 1.0
    assert 0.3 < len(held) / n < 0.7


def test_a_real_embedder_finds_most_planted_paraphrases_at_a_stated_precision_on_held_out_pairs():
    """all-MiniLM-L6-v2 on the split plus paraphrases: the threshold is chosen on half of the
    records; on the other half it still finds most planted paraphrases, and most of the pairs it
    flags are real duplicates (planted, or the same fact asked twice), about as on the chosen half."""
    from sft_helpers.course.data_strategy import semantic_dedup, with_paraphrases

    records, planted = with_paraphrases()
    result, choice = semantic_dedup(records, planted)
    held, chosen = choice["held out"], choice["chosen on"]
    assert choice["held out paraphrases"]["planted"] >= 20
    assert choice["held out paraphrases"]["recall"] > 0.5, choice["held out paraphrases"]
    assert held["precision"] > 0.5 and abs(held["precision"] - chosen["precision"]) < 0.15, (held, chosen)
    assert result.threshold == choice["threshold"]
