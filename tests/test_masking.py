"""SFT loss masks (`sft_helpers.masking`): what is trained, checked by decoding the trained tokens and
against TRL's own masks (sft_helpers/reference.py) on the whole test split, for the course tokenizer
(ChatML with `{% generation %}` markers, pad != EOS) and SmolLM2's (no markers, pad == EOS)."""

import copy
import re

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sft_helpers import data_path
from sft_helpers.course.data import load_split
from sft_helpers.collators import PaddedCollator
from sft_helpers.masking import (
    IGNORE,
    AllMaskedError,
    MaskError,
    add_generation_markers,
    assistant_mask_problems,
    assistant_mask_from_markers,
    assistant_only_labels,
    build_labels,
    completion_only_labels,
    drop_end_of_turn,
    full_labels,
    has_generation_markers,
    mask_report,
    prompt_weighted_labels,
    render_ids,
    same_rendering,
    show_mask,
    truncate,
    weighted_lm_loss,
)
from sft_helpers.models import smollm2_folder, smollm2_gguf_path
from sft_helpers.reference import trl_assistant_masks, trl_completion_masks


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def tok():
    """The committed course tokenizer."""
    return AutoTokenizer.from_pretrained(str(data_path("tiny-base")))


@pytest.fixture(scope="module")
def smol():
    try:
        smollm2_gguf_path()
    except RuntimeError as e:
        pytest.skip(str(e))
    return AutoTokenizer.from_pretrained(str(smollm2_folder()))


@pytest.fixture(scope="module")
def smol_patched(smol):
    """A copy of SmolLM2's tokenizer whose template carries `{% generation %}` markers."""
    t = copy.deepcopy(smol)
    t.chat_template = add_generation_markers(smol.chat_template)
    return t


@pytest.fixture(scope="module")
def test_split():
    records = load_split("test")
    assert len(records) == 320
    return records


@pytest.fixture(scope="module")
def conversations(test_split):
    return [r["messages"] for r in test_split]


def record_with_roles(records, roles):
    return next(r for r in records if tuple(m["role"] for m in r["messages"]) == tuple(roles))


def runs(values: list[int], on: list[bool]) -> list[list[int]]:
    """Maximal runs of `values` where `on` is true."""
    out, cur = [], []
    for v, o in zip(values, on):
        if o:
            cur.append(v)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def trained_texts(t, ex) -> list[str]:
    return [t.decode(r) for r in runs(ex["input_ids"], [lab != IGNORE for lab in ex["labels"]])]


def masked_texts(t, ex) -> list[str]:
    return [t.decode(r) for r in runs(ex["input_ids"], [lab == IGNORE for lab in ex["labels"]])]


def as_mask(ex) -> list[int]:
    return [int(lab != IGNORE) for lab in ex["labels"]]


def chatml(role, content):
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


# ---------------------------------------------------------------- what is trained, decoded

def test_single_turn_trains_exactly_the_reply(tok, test_split):
    msgs = record_with_roles(test_split, ["system", "user", "assistant"])["messages"]
    system, user, reply = (m["content"] for m in msgs)
    prompt_text = chatml("system", system) + chatml("user", user) + "<|im_start|>assistant\n"

    full = full_labels(tok, msgs)
    assert full["labels"] == full["input_ids"]
    assert tok.decode(full["input_ids"]) == prompt_text + reply + "<|im_end|>\n"

    comp = completion_only_labels(tok, msgs)
    assert comp["prefix_ok"] and comp["input_ids"] == full["input_ids"]
    # completion-only (TRL's prompt/completion split) also trains the newline after <|im_end|>
    assert trained_texts(tok, comp) == [reply + "<|im_end|>\n"]
    assert masked_texts(tok, comp) == [prompt_text]

    for method in ("markers", "offsets"):
        asst = assistant_only_labels(tok, msgs, method=method)
        assert asst["input_ids"] == full["input_ids"]
        assert trained_texts(tok, asst) == [reply + "<|im_end|>"], method
        assert masked_texts(tok, asst) == [prompt_text, "\n"], method


@pytest.mark.parametrize("method", ["markers", "offsets", "auto"])
def test_multi_turn_trains_every_assistant_turn_with_its_end_of_turn(tok, test_split, method):
    msgs = record_with_roles(test_split, ["system", "user", "assistant"] + ["user", "assistant"] * 2)["messages"]
    ex = assistant_only_labels(tok, msgs, method=method)
    assert ex["input_ids"] == render_ids(tok, msgs)
    assistant = [m["content"] for m in msgs if m["role"] == "assistant"]
    assert len(assistant) == 3
    assert trained_texts(tok, ex) == [a + "<|im_end|>" for a in assistant]
    # the system prompt and every user turn (with its template scaffolding) are masked
    users = [m["content"] for m in msgs if m["role"] == "user"]
    assert masked_texts(tok, ex) == [
        chatml("system", msgs[0]["content"]) + chatml("user", users[0]) + "<|im_start|>assistant\n",
        "\n" + chatml("user", users[1]) + "<|im_start|>assistant\n",
        "\n" + chatml("user", users[2]) + "<|im_start|>assistant\n",
        "\n",
    ]
    eos = tok.eos_token_id
    assert sum(lab == eos for lab in ex["labels"]) == 3  # every turn's <|im_end|> is a target

    # completion-only on the same chat trains the last turn only
    comp = completion_only_labels(tok, msgs)
    assert trained_texts(tok, comp) == [assistant[-1] + "<|im_end|>\n"]


def test_system_prompt_is_masked_including_smollm2_default_one(tok, smol, test_split):
    msgs = record_with_roles(test_split, ["system", "user", "assistant"])["messages"]
    system = msgs[0]["content"]
    ex = assistant_only_labels(tok, msgs)
    assert system in masked_texts(tok, ex)[0]
    assert all(system not in s for s in trained_texts(tok, ex))

    # SmolLM2's template inserts its own system prompt when there is none: still masked (offsets)
    no_system = record_with_roles(test_split, ["user", "assistant"])["messages"]
    ex = assistant_only_labels(smol, no_system)
    masked = masked_texts(smol, ex)
    assert masked[0].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert trained_texts(smol, ex) == [no_system[-1]["content"] + "<|im_end|>"]


# ---------------------------------------------------------------- against TRL, whole test split

def test_completion_only_equals_trl_completion_mask_on_test_split(tok, test_split, conversations):
    oracle = trl_completion_masks(tok, conversations)
    assert len(oracle) == 320
    for rec, (ids, mask) in zip(test_split, oracle):
        ex = completion_only_labels(tok, rec["messages"])
        assert ex["prefix_ok"], rec["id"]
        assert ex["input_ids"] == ids, rec["id"]
        assert as_mask(ex) == mask, rec["id"]
        # TRL's completion mask runs to the end: it includes the newline after <|im_end|>
        assert tok.decode(ids[-2:]) == "<|im_end|>\n" and mask[-2:] == [1, 1]


def test_assistant_only_equals_trl_assistant_masks_on_test_split(tok, test_split, conversations):
    assert has_generation_markers(tok.chat_template)
    oracle = trl_assistant_masks(tok, conversations)
    assert len(oracle) == 320
    for rec, (ids, mask) in zip(test_split, oracle):
        markers = assistant_only_labels(tok, rec["messages"], method="markers")
        offsets = assistant_only_labels(tok, rec["messages"], method="offsets")
        assert markers["input_ids"] == ids == offsets["input_ids"], rec["id"]
        assert as_mask(markers) == mask == as_mask(offsets), rec["id"]
        # TRL's assistant mask stops at <|im_end|>: the newline after it is not trained
        assert tok.decode(ids[-1:]) == "\n" and mask[-2:] == [1, 0]


def test_trl_refuses_smollm2_template_without_generation_markers(smol, conversations):
    assert not has_generation_markers(smol.chat_template)
    assert smol.pad_token_id == smol.eos_token_id
    with pytest.raises(ValueError, match="not training-compatible"):
        trl_assistant_masks(smol, conversations[:2])
    # ours refuses the markers method too, and points at the fallbacks
    with pytest.raises(ValueError, match="add_generation_markers"):
        assistant_only_labels(smol, conversations[0], method="markers")


def test_smollm2_patched_template_renders_byte_identically(smol, smol_patched, conversations):
    patched = smol_patched.chat_template
    assert has_generation_markers(patched) and patched != smol.chat_template
    assert same_rendering(smol, patched, conversations) == 320
    assert add_generation_markers(patched) == patched  # already marked: unchanged


def test_smollm2_offsets_equal_markers_and_trl_on_test_split(smol, smol_patched, test_split, conversations):
    oracle = trl_assistant_masks(smol_patched, conversations)
    assert len(oracle) == 320
    for rec, (ids, mask) in zip(test_split, oracle):
        msgs = rec["messages"]
        offsets = assistant_only_labels(smol, msgs)  # auto: no markers in SmolLM2's template
        assert offsets == assistant_only_labels(smol, msgs, method="offsets")
        m_ids, m_mask = assistant_mask_from_markers(smol, msgs, chat_template=smol_patched.chat_template)
        assert offsets["input_ids"] == m_ids == ids, rec["id"]
        assert as_mask(offsets) == m_mask == mask, rec["id"]
        assert assistant_only_labels(smol_patched, msgs, method="markers") == offsets
        n_turns = sum(m["role"] == "assistant" for m in msgs)
        assert trained_texts(smol, offsets) == [m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant"]
        assert len(trained_texts(smol, offsets)) == n_turns


def test_smollm2_completion_only_equals_trl_on_test_split(smol, test_split, conversations):
    oracle = trl_completion_masks(smol, conversations)
    for rec, (ids, mask) in zip(test_split, oracle):
        ex = completion_only_labels(smol, rec["messages"])
        assert ex["input_ids"] == ids and as_mask(ex) == mask, rec["id"]


# ---------------------------------------------------------------- the naive prompt-length mask

def naive_labels(t, msgs, add_generation_prompt):
    prompt_text = t.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=add_generation_prompt)
    n = len(t(prompt_text, add_special_tokens=False)["input_ids"])
    ids = render_ids(t, msgs)
    return {"input_ids": ids, "labels": [IGNORE] * n + ids[n:]}


def test_naive_prefix_without_generation_prompt_trains_the_assistant_header(tok, test_split, conversations):
    oracle = trl_completion_masks(tok, conversations)
    for rec, (ids, mask) in zip(test_split, oracle):
        naive = naive_labels(tok, rec["messages"], add_generation_prompt=False)
        assert naive["input_ids"] == ids
        assert as_mask(naive) != mask, rec["id"]
        assert trained_texts(tok, naive)[0].startswith("<|im_start|>assistant\n")
        assert as_mask(completion_only_labels(tok, rec["messages"])) == mask


@pytest.mark.parametrize("lead", ["\n\n", "  "])
def test_bpe_merge_across_the_prompt_boundary(smol, test_split, lead):
    """SmolLM2's BPE merges the generation prompt's final newline with a reply that starts with a blank
    line or an indent ('\\n\\n' -> 'ĊĊ', '\\n ' -> 'ĊĠ'): the tokenised prompt is no longer a prefix."""
    msgs = copy.deepcopy(record_with_roles(test_split, ["system", "user", "assistant"])["messages"])
    msgs[-1]["content"] = lead + msgs[-1]["content"]
    prompt_ids = render_ids(smol, msgs[:-1], add_generation_prompt=True)
    ex = completion_only_labels(smol, msgs)
    assert not ex["prefix_ok"]
    ids = ex["input_ids"]
    assert ids[:len(prompt_ids) - 1] == prompt_ids[:-1] and ids[len(prompt_ids) - 1] != prompt_ids[-1]
    assert smol.convert_ids_to_tokens(ids[len(prompt_ids) - 1]).startswith("Ċ")  # the merged token

    [(trl_ids, trl_mask)] = trl_completion_masks(smol, [msgs])
    assert ids == trl_ids and as_mask(ex) == trl_mask
    naive = naive_labels(smol, msgs, add_generation_prompt=True)
    assert as_mask(naive) != trl_mask
    # the naive mask skips the merged token, so the reply's first characters are never trained
    assert not trained_texts(smol, naive)[0].startswith(lead)
    assert trained_texts(smol, ex)[0].startswith("\n" + lead)


# ---------------------------------------------------------------- prompt weights

def test_prompt_weight_zero_is_completion_only_loss_and_one_is_full_loss(tok, test_split):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=64))
    model.eval()
    records = [r for r in test_split if r["task"] in ("knowledge", "multi_turn", "json")][:6]
    msgs = [r["messages"] for r in records]
    assert len({len(render_ids(tok, m)) for m in msgs}) > 1  # the batch really is padded
    collate = PaddedCollator(pad_token_id=tok.pad_token_id)

    w0 = collate([prompt_weighted_labels(tok, m, 0.0) for m in msgs])
    w1 = collate([prompt_weighted_labels(tok, m, 1.0) for m in msgs])
    wh = collate([prompt_weighted_labels(tok, m, 0.5) for m in msgs])
    comp = collate([completion_only_labels(tok, m) for m in msgs])
    full = collate([full_labels(tok, m) for m in msgs])
    for b in (w1, wh, comp, full):
        assert torch.equal(b["input_ids"], w0["input_ids"]) and torch.equal(b["attention_mask"], w0["attention_mask"])
    assert (w0["loss_weights"][w0["attention_mask"] == 0] == 0).all()

    with torch.no_grad():
        logits = model(input_ids=w0["input_ids"], attention_mask=w0["attention_mask"]).logits
        loss_comp_hf = model(input_ids=comp["input_ids"], attention_mask=comp["attention_mask"],
                             labels=comp["labels"]).loss
        loss_full_hf = model(input_ids=full["input_ids"], attention_mask=full["attention_mask"],
                             labels=full["labels"]).loss

    loss0 = weighted_lm_loss(logits, w0["labels"], w0["loss_weights"])
    loss_comp = weighted_lm_loss(logits, comp["labels"])
    assert torch.equal(loss0, loss_comp)
    torch.testing.assert_close(loss_comp, loss_comp_hf, rtol=1e-6, atol=1e-6)  # the standard causal-LM loss

    loss1 = weighted_lm_loss(logits, w1["labels"], w1["loss_weights"])
    loss_full = weighted_lm_loss(logits, full["labels"])
    assert torch.equal(loss1, loss_full)
    torch.testing.assert_close(loss_full, loss_full_hf, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(loss0, loss1)

    lh = weighted_lm_loss(logits, wh["labels"], wh["loss_weights"])
    assert min(loss0, loss1) < lh < max(loss0, loss1)
    # num_items: the weighted sum over an explicit count
    n = float(wh["loss_weights"][:, 1:][wh["labels"][:, 1:] != IGNORE].sum())
    torch.testing.assert_close(weighted_lm_loss(logits, wh["labels"], wh["loss_weights"], num_items=2 * n), lh / 2)

    with pytest.raises(ValueError):
        prompt_weighted_labels(tok, msgs[0], 1.5)


# ---------------------------------------------------------------- truncation and build_labels

def test_truncate_policies():
    ex = {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, -100, 4, 5], "loss_weights": [0, 0, 0, 1, 1], "id": "x"}
    assert truncate(ex, 5) is ex
    assert truncate(ex, 3, "keep_start") == {"input_ids": [1, 2, 3], "labels": [-100, -100, -100],
                                             "loss_weights": [0, 0, 0], "id": "x"}
    assert truncate(ex, 3, "keep_end") == {"input_ids": [3, 4, 5], "labels": [-100, 4, 5],
                                           "loss_weights": [0, 1, 1], "id": "x"}
    assert truncate(ex, 3, "drop") is None
    assert truncate(ex, 5, "drop") is ex
    with pytest.raises(ValueError, match="truncation policy"):
        truncate(ex, 3, "middle")


@pytest.fixture(scope="module")
def short_and_long(tok, test_split):
    """A short chat and a long one whose prompt alone is longer than the short chat."""
    short = min((r for r in test_split if r["messages"][0]["role"] != "system"),
                key=lambda r: len(render_ids(tok, r["messages"])))
    max_length = len(render_ids(tok, short["messages"]))
    long = next(r for r in test_split if r["messages"][0]["role"] == "system"
                and len(render_ids(tok, r["messages"][:-1], add_generation_prompt=True)) > max_length + 5)
    return short, long, max_length


def test_build_labels_drops_or_raises_when_truncation_cuts_the_response(tok, short_and_long):
    short, long, max_length = short_and_long
    out, report = build_labels([short, long], tok, "completion_only", max_length=max_length, truncation="keep_start")
    assert [e["id"] for e in out] == [short["id"]]
    assert out[0]["task"] == short["task"] and "prefix_ok" not in out[0]
    assert out[0]["input_ids"] == render_ids(tok, short["messages"])  # exactly max_length: untouched
    assert report.kept == 1 and report.truncated == 0 and len(report.dropped) == 1
    assert report.dropped[0].startswith(f"{long['id']}: no trained token left after truncation to {max_length}")
    assert str(report).startswith("kept 1, truncated 0, dropped 1")

    with pytest.raises(AllMaskedError, match=long["id"]):
        build_labels([short, long], tok, "completion_only", max_length=max_length, on_all_masked="raise")

    out, report = build_labels([short, long], tok, "completion_only", max_length=max_length, truncation="keep_end")
    assert [e["id"] for e in out] == [short["id"], long["id"]]
    assert report.kept == 2 and report.truncated == 1 and report.dropped == []
    assert len(out[1]["input_ids"]) == max_length
    assert trained_texts(tok, out[1]) == [long["messages"][-1]["content"] + "<|im_end|>\n"]

    out, report = build_labels([short, long], tok, "assistant_only", max_length=max_length, truncation="drop")
    assert [e["id"] for e in out] == [short["id"]]
    assert report.kept == 1 and report.truncated == 0
    assert report.dropped == [f"{long['id']}: longer than max_length={max_length} (policy 'drop')"]

    # the first token is never predicted: a one-token example trains nothing, even with full labels
    out, report = build_labels([short], tok, "full", max_length=1)
    assert out == [] and report.truncated == 0
    assert report.dropped == [f"{short['id']}: no trained token left after truncation to 1"]

    # without a limit nothing is truncated or dropped
    out, report = build_labels([short, long], tok, "full")
    assert report.kept == 2 and report.truncated == 0 and report.dropped == []
    assert all(e["labels"] == e["input_ids"] for e in out)


def test_build_labels_counts_zero_weight_prompts_as_all_masked(tok, short_and_long):
    short, long, max_length = short_and_long
    # with prompt weight 0 the labels are all set but every kept target weighs 0: nothing is trained
    out, report = build_labels([long], tok, max_length=max_length, prompt_weight=0.0)
    assert out == [] and report.truncated == 0 and len(report.dropped) == 1
    out, report = build_labels([long], tok, max_length=max_length, prompt_weight=0.1)
    assert len(out) == 1 and set(out[0]["loss_weights"]) == {0.1}


def test_build_labels_rejects_bad_arguments(tok, short_and_long):
    short, _, _ = short_and_long
    with pytest.raises(ValueError, match="mode"):
        build_labels([short], tok, "prompt_only")
    with pytest.raises(ValueError, match="on_all_masked"):
        build_labels([short], tok, on_all_masked="ignore")
    with pytest.raises(ValueError, match="ends with an assistant turn"):
        completion_only_labels(tok, short["messages"][:-1])


# ---------------------------------------------------------------- mask_report

def test_mask_report_finds_all_masked_rows_and_spans_without_end_of_turn(tok, test_split):
    records = test_split[:4]
    good = [{"id": r["id"], **completion_only_labels(tok, r["messages"])} for r in records]
    rep = mask_report(good, tok)
    assert rep["examples"] == 4 and rep["all_masked"] == [] and rep["spans_without_end_of_turn"] == []
    assert rep["end_of_turn_trained"] is True and rep["pad_is_eos"] is False
    trained = sum(lab != IGNORE for e in good for lab in e["labels"][1:])
    assert rep["trained_share"] == pytest.approx(trained / sum(len(e["input_ids"]) for e in good))

    eos = tok.eos_token_id
    all_masked = {**good[0], "id": "all-masked", "labels": [IGNORE] * len(good[0]["labels"])}
    no_eot = {**good[1], "id": "no-eot", "labels": [IGNORE if t == eos else lab
                                                    for t, lab in zip(good[1]["input_ids"], good[1]["labels"])]}
    # multi-turn: only the middle turn's <|im_end|> hidden
    multi = assistant_only_labels(tok, record_with_roles(test_split, ["user", "assistant"] * 3)["messages"])
    eos_at = [j for j, lab in enumerate(multi["labels"]) if lab == eos]
    assert len(eos_at) == 3
    multi_bad = {**multi, "id": "multi-bad", "labels": [IGNORE if j == eos_at[1] else lab
                                                        for j, lab in enumerate(multi["labels"])]}
    rep = mask_report(good + [all_masked, no_eot, {**multi, "id": "multi-ok"}, multi_bad], tok)
    assert rep["all_masked"] == ["all-masked"]
    assert rep["spans_without_end_of_turn"] == ["no-eot", "multi-bad"]
    assert rep["end_of_turn_trained"] is True

    rep = mask_report([no_eot], tok)
    assert rep["end_of_turn_trained"] is False and rep["spans_without_end_of_turn"] == ["no-eot"]
    # rows without an id are reported by position
    assert mask_report([{"input_ids": [1, 2], "labels": [IGNORE, IGNORE]}], tok)["all_masked"] == [0]


def test_pad_equal_to_eos_keeps_eos_trained_when_labels_are_padded_by_position(smol, test_split):
    assert mask_report([], smol)["pad_is_eos"] is True
    records = [r for r in test_split if r["task"] in ("multi_turn", "knowledge")][:5]
    examples = [assistant_only_labels(smol, r["messages"]) for r in records]
    assert len({len(e["input_ids"]) for e in examples}) > 1
    batch = PaddedCollator(pad_token_id=smol.pad_token_id)(examples)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == smol.eos_token_id).all()  # pads are EOS ids

    eos = smol.eos_token_id
    for row, e in zip(batch["labels"].tolist(), examples):
        n = len(e["input_ids"])
        assert row[:n] == e["labels"] and all(lab == IGNORE for lab in row[n:])
        assert row[n - 2] == eos  # the last turn's <|im_end|> (before the final newline) is a target
    rep = mask_report(batch, smol)
    assert rep["end_of_turn_trained"] is True
    assert rep["all_masked"] == [] and rep["spans_without_end_of_turn"] == []
    # the masked <|im_end|> of system/user turns are real tokens, not padding, though pad == EOS
    share = sum(lab != IGNORE for e in examples for lab in e["labels"][1:]) / sum(len(e["input_ids"]) for e in examples)
    assert rep["trained_share"] == pytest.approx(share)
    assert mask_report(examples, smol)["trained_share"] == pytest.approx(share)

    # a collator that masks by token id (labels[input_ids == pad] = -100) hides every EOS: caught
    bad = dict(batch, labels=batch["labels"].masked_fill(batch["input_ids"] == smol.pad_token_id, IGNORE))
    rep = mask_report(bad, smol)
    assert rep["end_of_turn_trained"] is False
    assert rep["spans_without_end_of_turn"] == list(range(len(examples)))


# ---------------------------------------------------------------- show_mask

def test_show_mask_marks_exactly_the_trained_spans(tok, test_split):
    msgs = record_with_roles(test_split, ["user", "assistant"] * 3)["messages"]
    ex = assistant_only_labels(tok, msgs)
    view = show_mask(tok, ex)
    text = str(view)
    assert repr(view) == text
    assistant = [m["content"] for m in msgs if m["role"] == "assistant"]
    assert re.findall(r"\[\[(.*?)\]\]", text, flags=re.S) == [a + "<|im_end|>" for a in assistant]
    assert text.replace("[[", "").replace("]]", "") == tok.apply_chat_template(msgs, tokenize=False)

    comp = completion_only_labels(tok, msgs)
    assert str(show_mask(tok, comp)).endswith("[[" + assistant[-1] + "<|im_end|>\n]]")

    page = view._repr_html_()
    assert "<|im_end|>" not in page and "&lt;|im_end|&gt;" in page
    assert page.count("background:#b6f2b6") == sum(as_mask(ex))
    assert page.count("<span") == len(ex["input_ids"])


# ---------------------------------------------------------------- add_generation_markers

LLAMA2_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def test_add_generation_markers_rejects_templates_that_are_not_chatml_shaped(tok, smol):
    with pytest.raises(ValueError, match="found 0"):
        add_generation_markers(LLAMA2_TEMPLATE)
    twice = smol.chat_template + smol.chat_template
    with pytest.raises(ValueError, match="found 2"):
        add_generation_markers(twice)
    assert add_generation_markers(tok.chat_template) == tok.chat_template  # already has markers


def test_same_rendering_raises_on_a_template_that_renders_differently(smol, conversations):
    changed = add_generation_markers(smol.chat_template).replace("{{ '\n' }}", "{{ '\n\n' }}")
    with pytest.raises(AssertionError, match="conversation 0"):
        same_rendering(smol, changed, conversations[:3])


def test_bad_conversations_are_dropped_and_counted_or_raise(tok):
    good = {"id": "ok", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    no_assistant = {"id": "no-assistant", "messages": [{"role": "user", "content": "Hi"}]}
    empty_reply = {"id": "empty", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}
    for mode in ("completion_only", "assistant_only", "full"):
        out, report = build_labels([good, no_assistant, empty_reply], tok, mode)
        assert [e["id"] for e in out] == ["ok"]
        assert report.kept == 1 and len(report.dropped) == 2
        assert report.dropped[0].startswith("no-assistant: bad conversation: no assistant turn")
        assert report.dropped[1].startswith("empty: bad conversation: message 1: empty content")
    with pytest.raises(AllMaskedError, match="no-assistant"):
        build_labels([good, no_assistant], tok, "assistant_only", on_all_masked="raise")


def test_label_builders_work_inside_datasets_map(tok, test_split):
    import datasets

    rows = test_split[:6]
    ds = datasets.Dataset.from_list([{"messages": r["messages"]} for r in rows])
    mapped = ds.map(lambda r: assistant_only_labels(tok, r["messages"]), remove_columns=["messages"])
    assert mapped["labels"] == [assistant_only_labels(tok, r["messages"])["labels"] for r in rows]


# ---------------------------------------------------------------- the self-check (issue 11)

def with_chat_template(t, template):
    t = copy.deepcopy(t)
    t.chat_template = template
    return t


def test_self_check_rejects_markers_that_leave_the_end_of_turn_out(tok, test_split):
    # the same render, but {% generation %} stops before <|im_end|>: the model would never learn to stop
    no_eot = with_chat_template(tok, tok.chat_template.replace(
        "{{- '<|im_end|>' }}{%- endgeneration %}", "{%- endgeneration %}{{- '<|im_end|>' }}"))
    assert no_eot.chat_template != tok.chat_template
    rec = record_with_roles(test_split, ["system", "user", "assistant", "user", "assistant"])
    assert same_rendering(tok, no_eot.chat_template, [rec["messages"]]) == 1
    with pytest.raises(MaskError, match=rf"^{rec['id']}: turn 2: the end-of-turn is not trained.*turn 4: "):
        build_labels([rec], no_eot, "assistant_only")
    out, report = build_labels([rec], no_eot, "assistant_only", on_error="skip")
    assert out == [] and report.kept == 0 and len(report.dropped) == 1
    assert report.dropped[0].startswith(f"{rec['id']}: turn 2: the end-of-turn is not trained")
    # unchecked, the same mask comes out silently: content only (what drop_end_of_turn builds on purpose)
    ex = assistant_only_labels(no_eot, rec["messages"], check=False)
    assert ex == drop_end_of_turn([assistant_only_labels(tok, rec["messages"])], tok)[0]
    assert len(assistant_mask_problems(tok, rec["messages"], ex)) == 2
    with pytest.raises(ValueError, match="on_error"):
        build_labels([rec], tok, "assistant_only", on_error="ignore")


def test_self_check_rejects_masks_that_train_other_messages(tok, test_split):
    rec = record_with_roles(test_split, ["system", "user", "assistant"])
    user_too = with_chat_template(tok, tok.chat_template.replace(
        "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}",
        "{%- else %}{%- generation %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>\\n' }}{%- endgeneration %}"))
    assert user_too.chat_template != tok.chat_template
    with pytest.raises(MaskError, match="text outside assistant turns is trained: '<|im_start|>system"):
        assistant_only_labels(user_too, rec["messages"])
    full = full_labels(tok, rec["messages"])
    problems = assistant_mask_problems(tok, rec["messages"], full)
    assert problems == ["turn 2: the mask also trains a neighbouring message: " + repr(
        tok.apply_chat_template(rec["messages"], tokenize=False)[:80])]


def test_replies_a_template_rewrites_are_refused_per_conversation(tok):
    import trl.chat_template_utils as ctu

    qwen3 = with_chat_template(tok, ctu.qwen3_chat_template)
    plain = {"id": "plain", "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                                         {"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "6"}]}
    # Qwen3's templates re-render a reply that carries its own think block: its trained text cannot equal it
    thought = {"id": "thought", "messages": [*plain["messages"][:1],
                                             {"role": "assistant", "content": "<think>easy</think>4"},
                                             *plain["messages"][2:]]}
    with pytest.raises(MaskError, match=r"^thought: turn 1: the template rewrites this reply"):
        build_labels([plain, thought], qwen3, "assistant_only")
    out, report = build_labels([plain, thought], qwen3, "assistant_only", on_error="skip")
    assert [e["id"] for e in out] == ["plain"] and report.kept == 1
    assert report.dropped[0].startswith("thought: turn 1: the template rewrites this reply")


def test_templates_that_cannot_render_a_conversation_give_a_clear_error(tok, test_split):
    import trl.chat_template_utils as ctu

    gemma = with_chat_template(tok, ctu.gemma_chat_template)
    rec = record_with_roles(test_split, ["system", "user", "assistant"])
    for mode in ("assistant_only", "completion_only", "full"):
        with pytest.raises(MaskError, match=rf"^{rec['id']}: the chat template cannot render this conversation "
                                            r"\(TemplateError: System role not supported\)"):
            build_labels([rec], gemma, mode)
    out, report = build_labels([rec], gemma, "assistant_only", on_error="skip")
    assert out == [] and "System role not supported" in report.dropped[0]
