"""`format_ok` (shape of a reply, per task family) and `summarize` (per-row booleans -> rates)."""

import itertools
import json

import pytest

from sft_helpers.course.conversations import REFUSAL, TASK_MIX
from sft_helpers.evaluate import format_ok, summarize

JSON_REF = '{"age": 34, "city": "Velmora", "job": "baker"}'
SENTENCE_TASKS = ["knowledge", "multi_turn", "profile"]

GOOD = {
    "json": [JSON_REF, '{"age": 99, "city": "Wrong", "job": "liar"}',  # shape, not content
             '  {"job": "baker", "age": 34, "city": "Velmora"}\n', '{"age": "34", "city": null, "job": 1}'],
    "markdown_list": ["- Velmora\n- Dratou\n- Kepis", "- one", "\n- Velmora\n- Dratou\n"],
    "one_word": ["Velmora", "34", "baker", "  Velmora\n"],
    "refusal": [REFUSAL, f"  {REFUSAL}\n"],
    # transform: (reply, reference) - the reply must have the reference's shape
    "transform": [("RIVER", "LAMP"), ("42", "7"), ("3, 17, 58, 90", "1, 2, 3"), ("  RIVER  ", "LAMP"),
                  ("99", "12")],
    "knowledge": ["They live in Velmora.", "It is in Norland.", "The capital is Velmora.  "],
    "multi_turn": ["They are 34 years old.", "They work as a baker."],
    "profile": ["Norland has 4 cities, and its capital is Velmora. Velmora has a population of 120,000."],
}
BAD = {
    "json": ["", "not json", '{"age": 34, "city": "Velmora"}',                       # missing key
             '{"age": 34, "city": "Velmora", "job": "baker", "name": "Ana"}',          # extra key
             '["age", "city", "job"]', '"age city job"', '{"age": 34, "city": "Velmora", "job": "baker"',
             'Here you go: {"age": 34, "city": "Velmora", "job": "baker"}'],
    "markdown_list": ["", "Velmora, Dratou, Kepis", "* Velmora\n* Dratou", "-Velmora\n-Dratou",
                      "- Velmora\nDratou", "- Velmora\n\n- Dratou", "1. Velmora\n2. Dratou"],
    "one_word": ["", "   ", "It is Velmora.", "Velmora Dratou", "The answer is 34", "Velmora."],
    "refusal": ["", "Sure, here is how.", "I can't help with that", "I cannot help with that.",
                f"{REFUSAL} Sorry."],
    "transform": [("", "LAMP"), ("   ", "7"), ("RIVER\nRIVER", "LAMP"), ("3,\n17", "3, 17"), ("river", "RIVER"),
                  ("42", "LAMP"), ("The answer is 42", "42"), ("3 17 58", "3, 17, 58"), ("RIVER.", "LAMP")],
    "knowledge": ["", "They live in Velmora", "They live in Velmora.<|im_end|>",
                  "<|im_start|>assistant\nThey live in Velmora.", "Velmora!"],
    "multi_turn": ["", "They are 34 years old", "They are 34 years old.<|im_end|>"],
    "profile": ["", "Norland has 4 cities", "Norland has 4 cities.<|endoftext|>"],
}


def test_cases_cover_every_task_family():
    assert set(GOOD) == set(BAD) == set(TASK_MIX)


def _cases(table):
    return [(t, *(r if isinstance(r, tuple) else (r, JSON_REF))) for t, rs in table.items() for r in rs]


@pytest.mark.parametrize("task,reply,reference", _cases(GOOD))
def test_format_ok_accepts(task, reply, reference):
    assert format_ok(task, reply, reference) is True


@pytest.mark.parametrize("task,reply,reference", _cases(BAD))
def test_format_ok_rejects(task, reply, reference):
    assert format_ok(task, reply, reference) is False


def test_json_keys_come_from_the_reference():
    reply = '{"name": "Ana", "age": 34}'
    assert not format_ok("json", reply, JSON_REF)
    assert format_ok("json", reply, json.dumps({"age": 1, "name": "x"}))


def test_format_ignores_correctness():
    """The reference is only used for the JSON keys: a wrong but well-shaped reply passes."""
    for task in SENTENCE_TASKS:
        assert format_ok(task, "Something entirely different.", "They live in Velmora.")
    assert format_ok("one_word", "Dratou", "Velmora")
    assert format_ok("markdown_list", "- a\n- b", "- Velmora\n- Dratou")


def test_unknown_task_falls_back_to_sentence_rule():
    assert format_ok("?", "A sentence.", "")
    assert not format_ok("?", "no full stop", "")


_ids = itertools.count()


def _row(task, exact, fmt, stopped, echo=False):
    return {"id": f"r{next(_ids)}", "task": task, "reply": "x", "reference": "y",
            "exact": exact, "format_ok": fmt, "stopped": stopped, "echo": echo}


def test_summarize_aggregates_overall_and_per_task():
    # the three columns have different rates overall and per task, so a mixed-up column shows
    rows = [
        _row("json", True, True, True),
        _row("json", False, True, True),
        _row("json", False, False, False, echo=True),
        _row("json", False, True, False),
        _row("refusal", False, True, False),
        _row("knowledge", False, False, True),
        _row("knowledge", True, True, True),
        _row("knowledge", False, True, True),
    ]
    s = summarize(rows)
    assert s["n"] == 8
    assert s["exact_match"] == pytest.approx(2 / 8)
    assert s["format_ok"] == pytest.approx(6 / 8)
    assert s["stop_rate"] == pytest.approx(5 / 8)
    assert s["echo_rate"] == pytest.approx(1 / 8)
    assert list(s["per_task"]) == ["json", "knowledge", "refusal"]  # sorted
    assert s["per_task"]["json"] == pytest.approx({"n": 4, "exact_match": 1 / 4, "format_ok": 3 / 4,
                                                   "stop_rate": 2 / 4, "echo_rate": 1 / 4})
    assert s["per_task"]["knowledge"] == pytest.approx({"n": 3, "exact_match": 1 / 3, "format_ok": 2 / 3,
                                                        "stop_rate": 3 / 3, "echo_rate": 0.0})
    assert s["per_task"]["refusal"] == {"n": 1, "exact_match": 0.0, "format_ok": 1.0, "stop_rate": 0.0,
                                        "echo_rate": 0.0}
    assert s["rows"] is rows
    # per-task counts add up to the total, and overall rates are the n-weighted per-task rates
    assert sum(t["n"] for t in s["per_task"].values()) == s["n"]
    for key in ("exact_match", "format_ok", "stop_rate", "echo_rate"):
        weighted = sum(t[key] * t["n"] for t in s["per_task"].values()) / s["n"]
        assert s[key] == pytest.approx(weighted)


def test_summarize_single_task_all_false():
    s = summarize([_row("transform", False, False, False), _row("transform", False, False, False)])
    assert (s["n"], s["exact_match"], s["format_ok"], s["stop_rate"]) == (2, 0.0, 0.0, 0.0)
    assert s["per_task"] == {"transform": {"n": 2, "exact_match": 0.0, "format_ok": 0.0, "stop_rate": 0.0,
                                           "echo_rate": 0.0}}


def test_summarize_refuses_an_empty_evaluation():
    with pytest.raises(ValueError, match="no rows"):
        summarize([])


def test_echo_detection_ignores_case_and_punctuation():
    from sft_helpers.evaluate import echoes_prompt

    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How old is Gigun Rulebus?"}]
    assert echoes_prompt(prompt, "how old is gigun rulebus. They are 19 years old.")
    assert not echoes_prompt(prompt, "They are 19 years old.")
    assert not echoes_prompt(prompt, "Be brief.")  # the system prompt is not the question


def test_cloze_recall_gives_one_hit_per_probe_in_order():
    """`hits` are the probes in the order given (so two models pair up probe by probe): the recall
    and every relation's share are their means; the base model knows most facts."""
    from sft_helpers import cloze_recall, load_model
    from sft_helpers.course.data import load_world
    from sft_helpers.course.world import cloze_probes

    model, tok = load_model("tiny")
    probes = cloze_probes(load_world())[::40]
    got = cloze_recall(model, tok, probes)
    assert len(got["hits"]) == len(probes) == got["n"] and set(got["hits"]) <= {0, 1}
    assert got["recall"] == sum(got["hits"]) / len(probes) > 0.5
    for relation, share in got["per_relation"].items():
        mine = [h for p, h in zip(probes, got["hits"]) if p["relation"] == relation]
        assert share == sum(mine) / len(mine)


def test_copies_prompt_counts_a_copied_stretch_of_the_prompt_but_not_what_the_answer_needs():
    from sft_helpers.evaluate import copies_prompt

    notes = "Notes: Ada Bell lives in Velm, a city in Orsk. Tom Reed is 41 years old.\n\nWhere is Velm?"
    user = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": notes}]
    assert copies_prompt(user, "Ada Bell lives in Velm, a city")  # six words of the notes
    assert copies_prompt(user, "notes ada bell lives in velm")  # case and punctuation ignored
    assert not copies_prompt(user, "Ada Bell lives in Velm.")  # five words: a short answer may share
    assert not copies_prompt(user, "It is a city in Orsk. Tom Reed is 41", "It is a city in Orsk. Tom Reed is 41")
    assert not copies_prompt([{"role": "system", "content": notes}], notes)  # only the user's words


def test_per_item_mean_averages_runs_item_by_item_and_refuses_runs_of_other_items():
    from sft_helpers.evaluate import per_item_mean

    rows = [{"task": "refusal", "exact": e} for e in (True, False, True)]
    other = [{"task": "refusal", "exact": e} for e in (False, False, True)]
    assert per_item_mean([{"rows": rows}, {"rows": other}]) == [0.5, 0.0, 1.0]
    with pytest.raises(ValueError, match="same items"):
        per_item_mean([{"rows": rows}, {"rows": other[:2]}])
