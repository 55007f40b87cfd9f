"""Lesson 06 (issue 15): quality checks, data mixes, repeated items, de-duplication side by side,
the data card, and run_hp on given records."""

import math

import pytest

from sft_helpers.course.conversations import corrupt
from sft_helpers.course.data import clean_vs_noisy, load_noisy_train, load_split, load_world
from sft_helpers.course.data_strategy import (
    answer_problem,
    data_report,
    format_problem,
    method_scores,
    paraphrase_pairs,
    phrasing_sets,
    quality_filter,
    quality_problems,
    reply_language,
    skewed,
    tables,
    narrowed,
    with_paraphrases,
    with_repeats,
    without_family,
)
from sft_helpers.dedup import at_threshold, best_threshold, exact_duplicates, near_duplicates, threshold_curve


def test_quality_filter_removes_the_planted_noise_and_keeps_the_clean_records():
    clean, noisy = clean_vs_noisy(600)
    kept, report = quality_filter(noisy)
    assert report["precision"] == 1.0 and report["recall"] >= 0.98, report
    assert report["recall_by_kind"]["truncated"] == 1.0 and report["recall_by_kind"]["broken_format"] == 1.0
    bad_kept = sum(r["noise"] != "clean" for r in kept)
    assert len(kept) == report["kept"] and bad_kept == round((1 - report["recall"]) * sum(r["noise"] != "clean"
                                                                                         for r in noisy))
    # the course's own splits pass every check (no false alarm on clean data)
    for split in ("train", "validation", "test"):
        assert not any(quality_problems(load_split(split))), split


def test_each_check_catches_its_kind_of_corruption():
    import random

    world, rng = load_world(), random.Random(0)
    base = next(r for r in load_split("train") if r["task"] == "json")
    broken = corrupt(base, "broken_format", world, rng)["messages"][-1]["content"]
    assert format_problem("json", broken) is not None and format_problem("json", base["messages"][-1]["content"]) is None
    person = world.people[3]
    ask = {"role": "user", "content": f"Where does {person.name} live?"}
    other = next(c.name for c in world.cities if c.name != person.city)
    wrong = {"task": "knowledge", "messages": [ask, {"role": "assistant", "content": f"They live in {other}."}]}
    right = {"task": "knowledge", "messages": [ask, {"role": "assistant", "content": f"They live in {person.city}."}]}
    assert other in answer_problem(wrong, world) and answer_problem(right, world) is None
    adds = {"task": "transform", "messages": [{"role": "user", "content": "What is 2 plus 3?"},
                                              {"role": "assistant", "content": "6"}]}
    assert answer_problem(adds, world) == "'6' is not '5'"
    cut = [r for r in load_noisy_train() if r["noise"] == "truncated" and r["task"] == "markdown_list"][:5]
    assert all(quality_problems(cut)), "a list missing its last cities passes"


def test_mixes_keep_the_size_and_change_only_what_they_say():
    train = load_split("train")
    assert {r["task"] for r in without_family(train, "json")} == {r["task"] for r in train} - {"json"}
    mix = skewed(train, "knowledge", 0.9, seed=1)
    assert len(mix) == len(train) and sum(r["task"] == "knowledge" for r in mix) == round(0.9 * len(train))
    narrow = narrowed(train)
    changed = [(n, t) for n, t in zip(narrow, train) if n is not t]
    assert len(narrow) == len(train) and len(changed) > 1000
    assert all(n["id"] == t["id"] and n["messages"][-1] == t["messages"][-1] for n, t in changed)
    reworded = sum(n["messages"][-2]["content"] != t["messages"][-2]["content"] for n, t in changed)
    assert reworded > 0.6 * len(changed)  # the split draws the fixed wordings too
    sets = phrasing_sets()
    assert [r["messages"][-1] for r in sets["seen wordings"]] == [r["messages"][-1] for r in sets["new wordings"]]


def test_repeats_are_planted_times_over_and_probes_are_disjoint():
    train = load_split("train")[:200]
    out, probes = with_repeats(train, times=10, n_items=20, seed=3)
    ids = [r["id"] for r in out]
    assert len(out) == 200 + 20 * 10 + 20
    assert all(ids.count(r["id"]) == 10 for r in probes["×10"]) and all(ids.count(r["id"]) == 1 for r in probes["×1"])
    assert not {r["id"] for r in probes["never"]} & set(ids)
    assert all(r["noise"] == "wrong_answer" for p in probes.values() for r in p)


def test_dedup_methods_side_by_side_on_the_planted_pairs():
    records, planted = with_paraphrases()
    from sft_helpers.course.data_strategy import planted_kinds
    from sft_helpers.dedup import near_duplicates_per_system_prompt

    kinds = planted_kinds()
    scores = method_scores({"exact": exact_duplicates(records),
                            "near": near_duplicates_per_system_prompt(records, 0.8)}, planted, kinds)
    assert scores["exact"]["precision"] == 1.0 and scores["exact"]["by_kind"] == {"exact": 1.0, "near": 1.0,
                                                                                    "paraphrase": 0.0}
    assert scores["near"]["precision"] >= 0.99 and scores["near"]["by_kind"]["paraphrase"] <= 0.05
    assert len(paraphrase_pairs()) == 60


def test_at_threshold_equals_finding_at_that_threshold():
    records = load_split("train")[:400]
    low = near_duplicates(records, 0.5)
    for t in (0.6, 0.8):
        high, cut = near_duplicates(records, t), at_threshold(low, t)
        assert {(i, j) for i, j, _ in cut.pairs} >= {(i, j) for i, j, _ in high.pairs}
        assert cut.kept == sorted(set(cut.kept)) and len(cut.kept) + len(cut.removed) == len(low.kept) + len(low.removed)
    with pytest.raises(ValueError, match="cannot lower"):
        at_threshold(low, 0.4)
    curve = threshold_curve(low, [(0, 1)], [0.5, 0.9])
    assert best_threshold(curve) in curve


def test_data_card_counts_the_training_split():
    card = data_report(load_split("train") + [{"messages": "not a list"}])
    assert card["skipped"] == 1 and sum(card["families"].values()) == card["records"] - 1
    assert card["duplicates"]["exact"] + card["duplicates"]["near"] == 121  # check_data's count, lesson 04
    assert 0.04 < card["refusal_share"] < 0.07
    assert set(card["languages"]) <= {"English", "no prose", "non-Latin"} and "non-Latin" not in card["languages"]
    assert reply_language("Москва.") == "non-Latin"


def test_run_hp_trains_on_given_records_and_scores_eval_sets():
    from sft_helpers.course.hyperparameters import _summary, run_hp

    records = load_split("train")[:40]
    _, probes = with_repeats(records, n_items=3)
    run = run_hp(records=records, eval_sets=probes, steps=2, samples_per_step=4, eval_items=4, test_items=4)
    assert run["n_train"] == 40 and set(run["sets"]) == {"×10", "×1", "never"}
    assert all(s["n"] == 3 and math.isfinite(s["loss"]) and 0 <= s["exact"] <= 1 for s in run["sets"].values())
    summary = _summary(run)
    text = tables({"seeds": [0], "steps": 2, "repeats": {"probes": [summary]}})
    assert "| ×10 |" in text and "validation split" in text


def test_same_fact_pairs_count_as_right_and_distinct_questions_do_not():
    from sft_helpers.dedup import DedupResult
    from sft_helpers.course.data_strategy import atlas_values, same_fact

    world = load_world()
    values = atlas_values(world)
    a, b = world.people[0], world.people[1]

    def ask(question, reply):
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]}

    records = [ask(f"How old is {a.name}?", "They are 40 years old."),
               ask(f"What is the age of {a.name}?", "They are 40 years old."),  # the same fact, reworded
               ask(f"How old is {b.name}?", "They are 40 years old."),  # same answer, another person
               ask(f"How old is {b.name}?", "They are 41 years old.")]
    assert same_fact(records[0], records[1], values) and not same_fact(records[0], records[2], values)
    assert not same_fact(records[2], records[3], values)
    merged = DedupResult("semantic", 0.9, 4, clusters=[[0, 1, 2, 3]], kept=[0], removed=[1, 2, 3],
                         pairs=[(0, 1, 0.99), (0, 2, 0.98), (2, 3, 0.97)])
    row = method_scores({"semantic": merged}, planted=[], records=records)["semantic"]
    assert row["same_fact"] == 1 / 3 and row["removed_same_fact"] == 1 / 3


def test_phrasing_gap_pairs_each_question_with_itself_in_both_wordings():
    """Seen wordings right on 60 of 100 questions, new wordings on the first 40 of those (a paired gap
    of -20 points, no noise): the interval is the pairing's; half the seen accuracy is 30%, below 40%."""
    from sft_helpers.course.data_strategy import phrasing_gap

    seen = [1] * 60 + [0] * 40
    new = [1] * 40 + [0] * 60
    wide_new = [1] * 55 + [0] * 45

    def run(seen_items, new_items):
        return {"sets": {"seen wordings": {"exact_items": seen_items}, "new wordings": {"exact_items": new_items}}}

    gap = phrasing_gap({"narrow phrasing": [run(seen, new)] * 3, "training split": [run(seen, wide_new)] * 3})
    split = gap["narrow phrasing"]
    assert split["new vs seen"].supports("<") and split["new vs seen"].delta == pytest.approx(-0.2)
    assert split["new vs half seen"].supports(">") and split["new vs half seen"].delta == pytest.approx(0.1)
    assert gap["new wordings"].supports(">") and gap["seen wordings"].supports("~")
    assert gap["new wordings"].names == ("training split", "narrow phrasing")


def test_compare_sets_scores_one_family_on_its_own_test_items():
    """Set a gets exactly the json test items right, set b none: over json items a > b by 100 points,
    over knowledge items no difference; the split's families decide which items count."""
    from sft_helpers.course.data import load_split
    from sft_helpers.course.data_strategy import compare_sets, item_scores

    tasks = [r["task"] for r in load_split("test")[:300]]
    a = {"exact_items": [int(t == "json") for t in tasks], "val_loss": 1.0}
    b = {"exact_items": [0] * len(tasks), "val_loss": 2.0}
    runs = {"a": [a, a, a], "b": [b, b, b]}
    json_items = item_scores(runs["a"], family="json")
    assert json_items[0] == [1] * tasks.count("json") and len(json_items) == 3
    on_json = compare_sets(runs, "a", "b", family="json")
    assert on_json.supports(">") and on_json.delta == 1.0 and on_json.n_items == tasks.count("json")
    assert compare_sets(runs, "a", "b", family="knowledge").supports("~")
    whole = compare_sets(runs, "a", "b")
    assert whole.delta == pytest.approx(tasks.count("json") / len(tasks))
    runs["b"] = [{**b, "val_loss": v} for v in (2.0, 2.5, 3.0)]  # loss: one number per seed
    loss = compare_sets(runs, "a", "b", "val_loss")
    assert loss.supports("<") and loss.n_seeds == 3 and loss.delta == pytest.approx(-1.5)


def test_a_filter_without_ground_truth_flags_wrong_facts_by_their_self_scored_loss(one_thread):
    """After one pass over a noisy set, the model finds its wrong knowledge answers more surprising
    than its right ones; the blind filter (format, length, loss outliers; no atlas) removes mostly
    bad records and more of them than format and length alone."""
    import statistics

    from sft_helpers.course.data_strategy import loss_outliers, self_scored_losses

    _, noisy = clean_vs_noisy(600, factor=4)  # lesson 06's noisy set and reference run (about a minute)
    losses = self_scored_losses(noisy)
    by_kind = {kind: statistics.median(x for r, x in zip(noisy, losses) if r["task"] == "knowledge" and
                                       r["noise"] == kind) for kind in ("clean", "wrong_answer")}
    assert by_kind["wrong_answer"] > 2 * by_kind["clean"], by_kind
    assert sum(bool(x) for x in loss_outliers(noisy, losses)) > 0
    problems = quality_problems(noisy, atlas=False, losses=losses)
    assert not any(p.startswith("atlas") for ps in problems for p in ps)
    _, blind = quality_filter(noisy, atlas=False, losses=losses)
    _, shape_only = quality_filter(noisy, atlas=False)
    assert blind["precision"] >= 0.8 and blind["recall"] > shape_only["recall"], (blind, shape_only)
    assert blind["recall_by_kind"]["wrong_answer"] > shape_only["recall_by_kind"]["wrong_answer"]
