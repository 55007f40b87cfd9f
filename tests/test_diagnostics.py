"""Every detector: one case where it fires, one where it stays quiet."""

import math

import pytest

from sft_helpers.course.data import load_split
from sft_helpers.course.conversations import REFUSAL
from sft_helpers.diagnostics import (
    check_data,
    check_history,
    check_hyperparameters,
    check_labels,
    check_template,
    find_duplicates,
    format_ignored_rate,
    is_looping,
    looping_rate,
    preflight,
    refusal_rate,
)
from sft_helpers.masking import build_labels, drop_end_of_turn
from sft_helpers.models import load_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


@pytest.fixture(scope="module")
def records():
    return load_split("validation")[:40]


def checks(findings):
    return {f.check for f in findings}


def test_labels_clean_vs_all_masked_vs_no_eos_vs_unmasked(tok, records):
    good, _ = build_labels(records, tok, "completion_only")
    assert check_labels(good, tok) == []
    masked = [{**e, "labels": [-100] * len(e["labels"])} for e in good]
    assert {"all-masked examples", "end-of-turn not trained"} <= checks(check_labels(masked, tok))
    no_eos = drop_end_of_turn(good, tok)
    assert "end-of-turn not trained" in checks(check_labels(no_eos, tok))
    full, _ = build_labels(records, tok, "full")
    assert "no loss mask" in checks(check_labels(full, tok))


def test_pad_equal_to_eos_is_flagged_only_when_it_is():
    smol = load_tokenizer("smollm2-135m", verbose=False)
    smol.pad_token = smol.eos_token  # as SmolLM2 ships it (load_tokenizer gives it a distinct pad)
    ex = [{"input_ids": [1, 2, smol.eos_token_id], "labels": [-100, 2, smol.eos_token_id]}]
    assert "pad == EOS" in checks(check_labels(ex, smol))
    tiny = load_tokenizer("tiny")
    ex = [{"input_ids": [1, 2, tiny.eos_token_id], "labels": [-100, 2, tiny.eos_token_id]}]
    assert "pad == EOS" not in checks(check_labels(ex, tiny))


def test_template_mismatch_missing_template_and_unknown_tokens(tok, records):
    assert check_template(tok, inference_template=tok.chat_template, messages=records[0]["messages"]) == []
    assert checks(check_template(tok, inference_template="### Instruction:\n{q}\n### Response:\n")) == {"template mismatch"}
    import copy
    broken = copy.deepcopy(tok)
    broken.chat_template = tok.chat_template.replace("<|im_start|>", "<|turn_start|>")
    assert "template token not in vocabulary" in checks(check_template(broken))
    broken.chat_template = None
    assert checks(check_template(broken)) == {"no chat template"}


def test_duplicates_refusals_and_over_long_records(tok, records):
    assert check_data(records, tok, max_length=4096) == []
    dup = records + [records[0], {**records[1], "messages": [{**m, "content": m["content"].upper() + " please"}
                                                             for m in records[1]["messages"]]}]
    assert find_duplicates(dup)[-2:] == [(0, 40, "exact"), (1, 41, "near")]
    assert "duplicates" in checks(check_data(dup))
    refusing = [{**r, "messages": r["messages"][:-1] + [{"role": "assistant", "content": REFUSAL}]} for r in records]
    assert "refusal share" in checks(check_data(refusing))
    assert "over-long examples" in checks(check_data(records, tok, max_length=20))


def _chat(question: str, reply: str, system: str | None = None) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": msgs + [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]}


PROFILE = ("Norland has 4 cities, and its capital is Velm. Velm has a population of 120,000 and is home to Ada Brik "
           "(34, baker) and Tom Sur (51, weaver). Dora has a population of 80,000 and is home to Lia Kon (29, miner). "
           "Kadora has a population of 45,000. Tula has a population of 300,000 and is home to Bo Vin (62, sailor).")


def test_minhash_finds_a_near_duplicate_that_normalising_misses():
    """One age changed in a long profile: not equal after normalising, but 0.8+ of the 3-word shingles shared."""
    a = _chat("Write a profile of Norland.", PROFILE)
    b = _chat("Write a profile of Norland.", PROFILE.replace("(29, miner)", "(30, miner)"))
    other = _chat("Write a profile of Southland.", "Southland has 2 cities, and its capital is Pem.")
    assert find_duplicates([a, other, b]) == []
    assert find_duplicates([a, other, b], near_threshold=0.8) == [(0, 2, "minhash")]
    [finding] = [f for f in check_data([a, other, b]) if f.check == "duplicates"]
    assert finding.message == ("1 of 3 records duplicate an earlier one (0 exact, 0 near, 1 similar by MinHash: "
                               "Jaccard ≥ 0.8)")
    assert check_data([a, other, b], near_threshold=None) == []


def test_minhash_compares_only_under_the_same_system_prompt():
    """A long shared system prompt does not make short different conversations duplicates, and the same
    exchange under another system prompt is another example (one_word vs knowledge)."""
    from sft_helpers.course.conversations import LONG_SYSTEM

    under_long = [_chat(f"What is {a} plus {b}?", str(a + b), LONG_SYSTEM) for a, b in ((3, 4), (5, 9), (12, 30))]
    assert find_duplicates(under_long, near_threshold=0.8) == []
    two_prompts = [_chat("Where does Ada live?", PROFILE, "Be brief."), _chat("Where does Ada live?", PROFILE)]
    assert find_duplicates(two_prompts, near_threshold=0.8) == []
    same_prompt = two_prompts + [_chat("Where does Ada live?", PROFILE.replace("Kadora", "Kadra"))]
    assert find_duplicates(same_prompt, near_threshold=0.8) == [(1, 2, "minhash")]


def test_find_duplicates_counts_each_duplicate_once_with_its_kind():
    a, b = _chat("Name a city.", "Velm"), _chat("Name a town.", "Dora")
    loud = _chat("NAME A CITY!", "velm")
    records = [a, b, loud, a, {"messages": "oops"}, loud, a]
    assert find_duplicates(records, near_threshold=0.8) == [(0, 2, "near"), (0, 3, "exact"), (2, 5, "exact"),
                                                            (0, 6, "exact")]


def test_duplicates_message_on_the_train_split_names_the_planted_ones_and_one_reordered_twin():
    """Lesson 04 prints this line: 120 planted (60 exact, 60 near) and one multi-turn conversation whose
    follow-ups come in another order (same facts), which only MinHash sees."""
    train = load_split("train")
    [finding] = [f for f in check_data(train) if f.check == "duplicates"]
    assert finding.message == ("121 of 2520 records duplicate an earlier one (60 exact, 60 near, 1 similar by "
                               "MinHash: Jaccard ≥ 0.8)")
    [(j, i, _)] = [d for d in find_duplicates(train, near_threshold=0.8) if d[2] == "minhash"]
    assert train[i]["task"] == train[j]["task"] == "multi_turn"
    assert sorted(m["content"] for m in train[i]["messages"]) == sorted(m["content"] for m in train[j]["messages"])
    assert [f for f in check_data(load_split("validation")) if f.check == "duplicates"] == []


def test_hyperparameters_against_the_guide():
    assert check_hyperparameters(2e-5, "full") == [] and check_hyperparameters(2e-4, "qlora", epochs=3) == []
    assert checks(check_hyperparameters(2e-4, "full", warmup=0, epochs=10)) == {"learning rate", "no warmup", "many epochs"}
    # models under 100M parameters: the ranges lesson 05 measured on the tiny base
    assert check_hyperparameters(1e-3, "full", model_params=4_000_000) == []
    assert checks(check_hyperparameters(2e-5, "full", model_params=4_000_000)) == {"learning rate"}
    # a full fine-tuning rate reused for adapters gets the hint
    assert "full fine-tuning rate" in check_hyperparameters(2e-5, "lora")[0].message
    assert "full fine-tuning rate" not in check_hyperparameters(1e-2, "lora")[0].message


def test_history_detectors():
    falling = [{"step": s, "loss": 10 / s} for s in range(1, 10)]
    assert check_history(falling) == []
    assert checks(check_history([{"step": s, "loss": 5.0 + 0.01 * (s % 2)} for s in range(1, 10)])) == {"loss not decreasing"}
    assert checks(check_history(falling + [{"step": 10, "loss": math.nan}])) == {"NaN/inf loss"}
    assert checks(check_history([{"step": s, "loss": 0.0} for s in range(1, 5)])) == {"zero loss"}
    assert "loss spike" in checks(check_history([{"step": 1, "loss": 5.0}, {"step": 2, "loss": 9.0}, {"step": 3, "loss": 1.0}]))
    evals = [{"step": s, "eval_loss": v} for s, v in ((0, 5.0), (3, 2.0), (6, 2.5), (9, 3.0))]
    found = check_history(falling + evals)
    assert checks(found) == {"overfitting"} and "step 3" in found[0].message
    assert check_history(falling + [{"step": s, "eval_loss": 5.0 - s * 0.1} for s in (0, 3, 6, 9)]) == []


def test_generation_detectors():
    good = [{"text": "Velm is the capital.", "stopped": True}, {"text": "I can't help with that.", "stopped": True}]
    bad = [{"text": "the the the the the the the the the", "stopped": True}, {"text": "Velm is", "stopped": False},
           {"text": "", "stopped": True}, {"text": "Sure <|im_start|>user", "stopped": True}]
    assert looping_rate(good) == 0 and looping_rate(bad[:2]) == 1 and not is_looping("a b c d e f")
    assert format_ignored_rate(good) == 0 and format_ignored_rate(bad[1:]) == 1
    assert refusal_rate(good) == 0.5 and refusal_rate(bad) == 0


def test_preflight_reports_every_problem_of_a_broken_dataset(tok, records, capsys):
    clean = preflight(records, tok, lr=2e-5, method="full", max_length=4096, verbose=False)
    assert clean == []
    broken = records + records[:10]
    broken = [{**r, "messages": r["messages"][:-1] + [{"role": "assistant", "content": REFUSAL}]} if i % 3 == 0 else r
              for i, r in enumerate(broken)]
    found = preflight(broken, tok, lr=1e-2, method="full", warmup=0, epochs=8, max_length=20,
                      inference_template="### Instruction:", log_history=[{"step": s, "loss": 4.0} for s in range(1, 9)])
    assert {"duplicates", "refusal share", "over-long examples", "template mismatch", "learning rate", "no warmup",
            "many epochs", "loss not decreasing"} <= checks(found)
    assert [f.severity for f in found] == sorted((f.severity for f in found), key=("error", "warning", "info").index)
    assert "errors" in capsys.readouterr().out


# --- bad input: findings, never a crash -------------------------------------------------------

def _bad_records(records):
    """Four malformed records around good ones; the first ends with a user turn."""
    user = {"role": "user", "content": "And?"}
    ends_with_user = {"id": "ends-user", "messages": records[0]["messages"] + [user]}
    no_content = {"id": "no-content", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant"}]}
    return [ends_with_user] + records[:20] + [no_content, ["not", "a", "dict"]] + records[20:] + [7]


def test_preflight_reports_malformed_records_as_findings(tok, records, capsys):
    bad = _bad_records(records)
    found = preflight(bad, tok, lr=2e-5, method="full", max_length=4096)
    assert checks(found) == {"malformed records"}, "the valid records alone are clean (see the test above)"
    (f,) = found
    assert f.severity == "error" and f.message.startswith(f"4 of {len(bad)} records are not valid")
    for expected in ("record #0 (id 'ends-user'): conversation ends with a 'user' turn",
                     "record #21 (id 'no-content'): message 1: missing 'content'",
                     "record #22: record is a list, not an object",
                     f"record #{len(bad) - 1}: record is a int"):
        assert expected in f.message
    out = capsys.readouterr().out
    assert f"preflight: {len(bad)} records, 1 errors" in out and "record #21 (id 'no-content')" in out
    # the other checks still run on the valid records
    dup = preflight(bad + records[:3], tok, max_length=20, inference_template="### Instruction:",
                    verbose=False)
    assert {"malformed records", "duplicates", "over-long examples", "template mismatch"} <= checks(dup)


def test_check_data_on_no_records_and_records_without_content(tok, records):
    assert checks(check_data([], tok, max_length=10)) == {"no records"}
    assert checks(preflight([], tok, max_length=10, verbose=False)) == {"no records"}
    no_content = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant"}]}
                  for i in range(7)]
    many = records + no_content
    found = check_data(many, tok, max_length=4096)
    assert checks(found) == {"malformed records"}
    assert found[0].message.count("missing 'content'") == 5 and "... and 2 more" in found[0].message
    assert check_data(records, tok, max_length=4096) == []


def test_build_labels_counts_non_dict_records_as_bad(tok, records):
    out, report = build_labels(records[:3] + [["a", "list"], "text", None], tok)
    assert len(out) == 3 and report.kept == 3
    assert report.dropped == ["#3: bad conversation: record is a list, not an object",
                              "#4: bad conversation: record is a str, not an object",
                              "#5: bad conversation: record is a NoneType, not an object"]


def test_prompt_weighted_labels_are_a_loss_mask(tok, records):
    weighted, _ = build_labels(records, tok, prompt_weight=0.1)
    assert all(lab != -100 for e in weighted for lab in e["labels"]), "every token labelled"
    assert "no loss mask" not in checks(check_labels(weighted, tok))
    unweighted, _ = build_labels(records, tok, prompt_weight=1.0)  # weight 1: the full loss, no mask at all
    assert "no loss mask" in checks(check_labels(unweighted, tok))
    assert checks(check_labels([], tok)) == {"no examples"}


def test_per_item_detectors_add_up_to_their_rates():
    """The 0/1 items behind each generation-side rate, one per reply in order (what an interval
    between two models resamples)."""
    from sft_helpers.diagnostics import (format_ignored_items, format_ignored_rate, looping_items,
                                         looping_rate, refusal_items, refusal_rate)

    replies = [{"text": "a b c a b c a b c", "stopped": True}, {"text": "Velm.", "stopped": True},
               {"text": "I can't help with that.", "stopped": True}, {"text": "user: hi", "stopped": False},
               {"text": "", "stopped": True}]
    assert looping_items(replies) == [1, 0, 0, 1, 0]
    assert format_ignored_items(replies) == [0, 0, 0, 1, 1]
    assert refusal_items(replies) == [0, 0, 1, 0, 0]
    for items, rate in ((looping_items, looping_rate), (format_ignored_items, format_ignored_rate),
                        (refusal_items, refusal_rate)):
        assert rate(replies) == sum(items(replies)) / len(replies)
