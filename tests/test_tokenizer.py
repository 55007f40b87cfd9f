"""The course tokenizer: ChatML special tokens, exact chat template, assistant masks, offline round trip."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from sft_helpers.course.tokenizer import SPECIAL_TOKENS, save_tokenizer, train_tokenizer

TINY_BASE = Path(__file__).resolve().parent.parent / "data" / "tiny-base"
TEXTS = [
    "The capital of Norland is Velmora. Velmora is the capital of Norland.",
    "Ana Kepis lives in Velmora. They are 34 years old. They work as a baker.",
    "Where does Ana Kepis live? How old is Ana Kepis? What is the job of Ana Kepis?",
    "You are a helpful assistant. Answer with one word only.",
    "12 plus 30 is 42. The word river in capital letters is RIVER.",
] * 8

SYSTEM_USER_ASSISTANT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of Norland?"},
    {"role": "assistant", "content": "The capital is Velmora."},
]
MULTI_TURN = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Where does Ana Kepis live?"},
    {"role": "assistant", "content": "They live in Velmora."},
    {"role": "user", "content": "And how old are they?"},
    {"role": "assistant", "content": "They are 34 years old."},
    {"role": "user", "content": "And what is their job?"},
    {"role": "assistant", "content": "They work as a baker.\nA good one."},
]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=400)


def mask_spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    """Maximal runs of token ids whose mask is 1."""
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    return spans + ([cur] if cur else [])


def check_special_tokens(t):
    vocab = t.get_vocab()
    for s in SPECIAL_TOKENS:
        assert s in vocab, s
        # each special token is one id and is never split by BPE
        assert t(s, add_special_tokens=False)["input_ids"] == [vocab[s]], s
    assert t.eos_token == "<|im_end|>" and t.pad_token == "<|pad|>"
    assert t.pad_token_id != t.eos_token_id
    assert t.pad_token_id is not None and t.eos_token_id is not None
    assert set(SPECIAL_TOKENS) <= set(t.all_special_tokens)


def test_special_tokens_present_and_pad_is_not_eos(tok):
    check_special_tokens(tok)
    assert len(tok) <= 400
    # no BOS is prepended: ChatML text starts with <|im_start|>
    assert tok("Velmora")["input_ids"] == tok("Velmora", add_special_tokens=False)["input_ids"]


def test_text_round_trips(tok):
    s = "Ana Kepis, 34, lives in Velmora.\n- RIVER\n- Zoubrak (unseen word) ü €"
    assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s


def test_chat_template_renders_exact_chatml(tok):
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nWhat is the capital of Norland?<|im_end|>\n"
                "<|im_start|>assistant\nThe capital is Velmora.<|im_end|>\n")
    assert tok.apply_chat_template(SYSTEM_USER_ASSISTANT, tokenize=False) == expected


def test_generation_prompt_opens_an_assistant_turn(tok):
    prompt = tok.apply_chat_template(SYSTEM_USER_ASSISTANT[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                      "<|im_start|>user\nWhat is the capital of Norland?<|im_end|>\n"
                      "<|im_start|>assistant\n")
    full = tok.apply_chat_template(SYSTEM_USER_ASSISTANT, tokenize=False)
    assert full.startswith(prompt)


def test_tokenized_template_equals_tokenized_rendering(tok):
    enc = tok.apply_chat_template(MULTI_TURN, return_dict=True)
    text = tok.apply_chat_template(MULTI_TURN, tokenize=False)
    assert enc["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("messages", [SYSTEM_USER_ASSISTANT, MULTI_TURN], ids=["single", "multi_turn"])
def test_assistant_mask_covers_exactly_assistant_content_and_im_end(tok, messages):
    enc = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assert len(mask) == len(ids) and set(mask) <= {0, 1}
    spans = mask_spans(ids, mask)
    expected = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert [tok.decode(s) for s in spans] == expected
    # every masked span ends with the EOS the model must learn to emit
    assert all(s[-1] == tok.eos_token_id for s in spans)
    # nothing outside the spans is trained on: the rest decodes to the prompt scaffolding only
    unmasked = tok.decode([i for i, m in zip(ids, mask) if not m])
    for m in messages:
        if m["role"] != "assistant":
            assert m["content"] in unmasked
    assert "Velmora.<|im_end|>" not in unmasked


def test_save_and_load_offline_round_trip(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_tokenizer(tok, tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    check_special_tokens(loaded)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded.chat_template == tok.chat_template
    assert loaded.model_max_length == tok.model_max_length
    assert loaded.apply_chat_template(MULTI_TURN, tokenize=False) == tok.apply_chat_template(MULTI_TURN, tokenize=False)
    a = tok.apply_chat_template(MULTI_TURN, return_dict=True, return_assistant_tokens_mask=True)
    b = loaded.apply_chat_template(MULTI_TURN, return_dict=True, return_assistant_tokens_mask=True)
    assert (b["input_ids"], b["assistant_masks"]) == (a["input_ids"], a["assistant_masks"])


@pytest.mark.skipif(not (TINY_BASE / "tokenizer.json").exists(),
                    reason="data/tiny-base/tokenizer.json not there yet (made by `sft-course pretrain`)")
def test_committed_tokenizer_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = AutoTokenizer.from_pretrained(str(TINY_BASE))
    check_special_tokens(t)
    assert len(t) <= 4096 + len(SPECIAL_TOKENS)
    rendered = t.apply_chat_template(SYSTEM_USER_ASSISTANT, tokenize=False)
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_end|>\n")
    enc = t.apply_chat_template(MULTI_TURN, return_dict=True, return_assistant_tokens_mask=True)
    assert [t.decode(s) for s in mask_spans(enc["input_ids"], enc["assistant_masks"])] == \
        [m["content"] + "<|im_end|>" for m in MULTI_TURN if m["role"] == "assistant"]
