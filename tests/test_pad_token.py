"""Tokenizers without a pad token (Llama-3.x, Mistral) or with pad == EOS get a distinct pad.

The hub is not reachable, so the tokenizers are built offline to look like those families: the
course tokenizer with their special tokens, no pad, and the embedded tiny base resized to match.
"""

import pytest

from sft_helpers import load_model
from sft_helpers.course.data import load_split
from sft_helpers.masking import build_labels
from sft_helpers.models import ensure_pad_token, load_tokenizer
from sft_helpers.training import train_sft

FAMILIES = {
    # Llama-3.x: no pad; a reserved, never generated <|finetune_right_pad_id|> in the vocabulary
    "llama3": dict(bos="<|begin_of_text|>", eos="<|eot_id|>",
                   extra=["<|end_of_text|>", "<|finetune_right_pad_id|>"], pad="<|finetune_right_pad_id|>"),
    # Mistral / Llama-2: <s>, </s>, <unk> and no pad
    # (the course vocabulary holds <|pad|>, which comes before <unk> in PAD_CANDIDATES)
    "mistral": dict(bos="<s>", eos="</s>", extra=["<unk>"], pad="<|pad|>"),
}


def family_folder(tmp_path, family):
    spec = FAMILIES[family]
    model, tok = load_model("tiny")
    tok = load_tokenizer("tiny", verbose=False)
    tok.add_special_tokens({"bos_token": spec["bos"], "eos_token": spec["eos"],
                            "additional_special_tokens": spec["extra"]})
    tok.pad_token = None
    tok.chat_template = tok.chat_template.replace("<|im_end|>", spec["eos"])
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    folder = tmp_path / family
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("family", ["llama3", "mistral"])
def test_padless_tokenizer_gets_a_distinct_existing_pad(tmp_path, family, capsys):
    folder = family_folder(tmp_path, family)
    model, tok = load_model(folder)
    assert tok.pad_token == FAMILIES[family]["pad"] and tok.pad_token_id != tok.eos_token_id
    assert f"set to '{FAMILIES[family]['pad']}'" in capsys.readouterr().out  # said, not silent
    assert model.get_input_embeddings().num_embeddings == len(tok)  # nothing added, nothing resized
    examples, _ = build_labels(load_split("train")[:4], tok, "assistant_only", max_length=64)
    assert all(tok.eos_token_id in ex["labels"] for ex in examples)  # EOS trained, not hidden as pad
    history = train_sft(model, tok, examples, max_steps=1, batch_size=4)  # the default collator pads
    assert history[-1]["step"] == 1


def test_pad_is_added_and_embeddings_resized_when_nothing_fits(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<s>": 0, "</s>": 1, "hello": 2, "world": 3}
    backend = Tokenizer(models.WordLevel(words, unk_token="hello"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    model, _ = load_model("tiny")
    model.resize_token_embeddings(len(words), mean_resizing=False)
    folder = tmp_path / "bare"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    model, tok = load_model(str(folder))
    assert "added '<|pad|>'" in capsys.readouterr().out
    assert tok.pad_token_id == len(words) and tok.pad_token_id != tok.eos_token_id
    assert model.get_input_embeddings().num_embeddings == len(words) + 1 == model.config.vocab_size
    assert model.config.pad_token_id == tok.pad_token_id


def test_unk_serves_as_pad_for_a_mistral_like_vocabulary():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="<unk>")),
                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert tok.pad_token is None
    assert ensure_pad_token(tok, verbose=False) == "set to '<unk>'" and tok.pad_token_id == 0


def test_pad_equal_to_eos_is_replaced_not_kept():
    tok = load_tokenizer("tiny", verbose=False)
    tok.pad_token = tok.eos_token  # pad == EOS, as SmolLM2 ships it
    done = ensure_pad_token(tok, verbose=False)
    assert done.startswith("set to") and tok.pad_token_id != tok.eos_token_id


def test_ensure_pad_token_keeps_a_distinct_pad():
    tok = load_tokenizer("tiny", verbose=False)
    before = tok.pad_token_id
    assert ensure_pad_token(tok) == "kept" and tok.pad_token_id == before
