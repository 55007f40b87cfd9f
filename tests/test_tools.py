"""Tool-calling data: a `tool` role, assistant turns with `tool_calls`, a `tools` column given to the
chat template (as TRL gives it). Tool calls are trained where the assistant makes them, tool results
are not; masks equal TRL's on every family of `trl/chat_templates` that renders tool calls; a
template that would drop the calls or the schemas is refused, never trained on less than the data."""

import json

import pytest

from sft_helpers.masking import (
    MaskError,
    assistant_only_labels,
    build_labels,
    label_record,
    trained_text,
)
from sft_helpers.models import load_tokenizer
from sft_helpers.recipe import main
from sft_helpers.records import chat_inputs, conversation_problems, load_conversations, to_messages

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CITIES = ["Oslo", "Bergen", "Lima", "Quito", "Accra", "Hanoi", "Perth", "Cork", "Riga", "Porto",
          "Turku", "Malmo", "Split", "Brno", "Graz", "Ghent", "Bari", "Leon", "Cusco", "Nara"]


def tool_record(city: str, degrees: int, openai_style: bool = True) -> dict:
    """One tool-use conversation: a question, a call (OpenAI shape, arguments as JSON text; or the flat
    shape with an object), the tool's result, the answer."""
    call = ({"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                              "arguments": json.dumps({"city": city})}}
            if openai_style else {"name": "get_weather", "arguments": {"city": city}})
    return {"tools": [WEATHER], "messages": [
        {"role": "user", "content": f"How warm is it in {city}?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"celsius": degrees})},
        {"role": "assistant", "content": f"It is {degrees} degrees in {city}."}]}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny", verbose=False)


def test_records_take_the_tool_role_tool_calls_and_tools():
    rec = to_messages(tool_record("Oslo", 21))
    assert conversation_problems(rec) == []
    assert isinstance(rec["tools"], str)  # JSON text: Arrow never merges two records' schemas
    assert rec["messages"][1]["content"] == ""  # None content of a call turn
    flat = to_messages(tool_record("Oslo", 21, openai_style=False))
    assert chat_inputs(flat)[0][1]["tool_calls"][0]["function"] == {"name": "get_weather",
                                                                     "arguments": {"city": "Oslo"}}
    assert chat_inputs(rec)[0][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert chat_inputs(rec)[1] == [WEATHER]


@pytest.mark.parametrize("change,problem", [
    (lambda r: r["messages"].pop(1), "message 1: a tool result with no tool call before it"),
    (lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="{city: Oslo"),
     "arguments must be a JSON object"),
    (lambda r: r["messages"][1]["tool_calls"][0]["function"].pop("name"), "needs a function name"),
    (lambda r: r["messages"][0].update(tool_calls=[{"function": {"name": "f"}}]), "only assistant turns make tool calls"),
    (lambda r: r.update(tools="not json"), "'tools' must be a list of function schemas"),
])
def test_malformed_tool_use_is_named(change, problem):
    rec = tool_record("Oslo", 21)
    change(rec)
    assert any(problem in p for p in conversation_problems(to_messages(rec))), conversation_problems(to_messages(rec))


@pytest.mark.parametrize("method", ["markers", "offsets"])
def test_tool_calls_are_trained_and_tool_results_are_not(tok, method):
    messages, tools = chat_inputs(to_messages(tool_record("Oslo", 21)))
    ex = assistant_only_labels(tok, messages, method=method, tools=tools)
    assert trained_text(ex, tok) == ('<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                                     '</tool_call><|im_end|> | It is 21 degrees in Oslo.<|im_end|>')
    rendered = tok.decode(ex["input_ids"])
    assert '"celsius": 21' in rendered and '"description": "Current weather of a city"' in rendered


def test_parallel_calls_and_a_reply_with_calls(tok):
    rec = tool_record("Oslo", 21)
    rec["messages"][1]["tool_calls"].append({"name": "get_weather", "arguments": {"city": "Bergen"}})
    rec["messages"][1]["content"] = "Checking both."
    rec["messages"].insert(3, {"role": "tool", "content": "{\"celsius\": 15}"})
    messages, tools = chat_inputs(to_messages(rec))
    for method in ("markers", "offsets"):
        text = trained_text(assistant_only_labels(tok, messages, method=method, tools=tools), tok)
        assert text.startswith('Checking both.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                               '</tool_call>\n<tool_call>{"name": "get_weather", "arguments": {"city": "Bergen"}}'
                               '</tool_call><|im_end|> | '), text
        assert "celsius" not in text


@pytest.mark.parametrize("mode", ["full", "completion_only", "assistant_only"])
def test_a_template_that_drops_tool_calls_or_tools_is_refused(tok, mode):
    """Before: the `tool` role was refused outright, and a record with `tool_calls` and text trained the
    text only (the calls never rendered), with no word."""
    from sft_helpers.trl_templates import with_template

    plain = with_template(tok, "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    rec = to_messages(tool_record("Oslo", 21))
    with pytest.raises(MaskError, match="ignores 'tools'"):
        label_record(rec, 0, plain, mode)
    del rec["tools"]
    with pytest.raises(MaskError, match="ignores the tool calls of turn 1"):
        label_record(rec, 0, plain, mode)
    examples, report = build_labels([rec], plain, mode, on_error="skip")
    assert examples == [] and "ignores the tool calls" in report.dropped[0]


def test_completion_only_trains_the_final_answer_after_tool_use(tok):
    examples, _ = build_labels([to_messages(tool_record("Oslo", 21))], tok, "completion_only")
    assert trained_text(examples[0], tok) == "It is 21 degrees in Oslo.<|im_end|>\n"


# --- every TRL template family that renders tool calls ---------------------------------------------

def _families():
    pytest.importorskip("trl")
    from sft_helpers.trl_templates import trl_families

    return sorted(trl_families())


# families whose masks with tool calls must be compared with TRL's (not skipped, not refused)
MUST_MATCH = {"qwen2_5", "qwen3", "qwen3_8", "qwen3_instruct_2507", "glm4moe", "nemotron_3_nano", "lfm2_v2"}


@pytest.mark.parametrize("family", _families() if __import__("importlib").util.find_spec("trl") else [])
def test_tool_masks_equal_trl_on_every_family_that_renders_tool_calls(tok, family):
    """Ours (method "auto") == TRL's `SFTTrainer` masks (its `_tokenize` with `tools`, its template or
    `_training` twin); the sentinel-span method trains a subset of TRL's, every call included. A family
    whose template cannot render this conversation is skipped; one that renders it but not its calls,
    that puts the tool results inside the assistant turn (Gemma 4) or that cannot render the turn
    without its calls (GPT-OSS: how the calls are located) is refused with MaskError."""
    from trl.data_utils import _tokenize

    from sft_helpers.masking import has_generation_markers
    from sft_helpers.reference import _quiet
    from sft_helpers.trl_templates import trl_families, with_template

    _quiet()
    original, twin = trl_families()[family]
    t = with_template(tok, original)
    messages, tools = chat_inputs(to_messages(tool_record("Oslo", 21)))
    try:
        t.apply_chat_template(messages, tools=tools, tokenize=False)
    except Exception as e:  # noqa: BLE001  (the template's own refusal: roles must alternate, ...)
        assert family not in MUST_MATCH
        pytest.skip(f"{family} cannot render this conversation: {type(e).__name__}")
    try:
        ours = assistant_only_labels(t, messages, tools=tools)
    except MaskError as e:
        assert family not in MUST_MATCH, str(e)
        assert any(w in str(e) for w in ("tool calls", "neighbouring message", "not fully trained")), str(e)
        return
    reference = twin or (original if has_generation_markers(original) else None)
    if reference is None:
        assert family not in MUST_MATCH
        return  # TRL refuses assistant-only loss for it; ours passed the self-check
    enc = _tokenize(t, messages, chat_template=reference, tools=tools, return_assistant_tokens_mask=True)
    assert ours["input_ids"] == list(enc["input_ids"])
    assert [int(lab != -100) for lab in ours["labels"]] == list(enc["assistant_masks"])
    assert "get_weather" in trained_text(ours, t) and "celsius" not in trained_text(ours, t)
    try:
        spans = assistant_only_labels(t, messages, tools=tools, method="offsets")
    except MaskError:
        return  # as for plain turns (GLM: no end-of-turn marker after a final reply)
    if spans["input_ids"] == ours["input_ids"]:  # (Qwen3's twin renders past turns differently)
        assert not any(s != -100 and o == -100 for s, o in zip(spans["labels"], ours["labels"]))
        assert "get_weather" in trained_text(spans, t)


# --- sft-train ----------------------------------------------------------------------------------

def test_sft_train_trains_tool_use_and_shows_the_masks(tmp_path, capsys, one_thread):
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(tool_record(c, 10 + i, openai_style=i % 2 == 0)) + "\n"
                            for i, c in enumerate(CITIES)))
    assert len(load_conversations(path)) == 20
    common = ["--train", str(path), "--mask", "assistant_only", "--method", "full", "--save", "model",
              "--max_steps", "2", "--batch_size", "4", "--output_dir", str(tmp_path / "run")]
    assert main(common + ["--dry-run", "--show-masks", "1"]) == 0
    out = capsys.readouterr().out
    assert "20 records read" in out and "dry run: config and data OK" in out
    shown = out[out.index("--- training example 1"):]
    assert '[[<tool_call>{"name": "get_weather", "arguments": {"city": ' in shown
    assert "<|im_start|>tool\n{\"celsius\": " in shown  # the tool's result, outside [[...]]
    assert main(common) == 0
    logged = [json.loads(ln) for ln in (tmp_path / "run" / "log_history.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 2
