"""Per-lane settings: budgets, learning rates and which claims are asserted, and no lane branches in
the notebooks (they call `sft_helpers.course.lanes` instead)."""

import json
from pathlib import Path

import pytest

from sft_helpers.course.runner import set_model_id
from sft_helpers.course.experiments import learning_rate
from sft_helpers.course.lanes import LANES, lane


def test_tiny_keeps_the_lesson_budget_and_asserts_its_claims():
    tiny = lane("tiny")
    assert tiny.steps(250) == 250 and tiny.steps(-1) == -1 and tiny.count(600) == 600
    assert tiny.items(list(range(10))) == list(range(10))
    with pytest.raises(AssertionError, match="a claim"):
        tiny.claim(False, "a claim")


def test_other_lanes_cap_the_budget_and_report_claims(capsys):
    smol, hub = lane("smollm2-135m"), lane("Qwen/Qwen2.5-0.5B")
    assert hub is LANES["hub"] and smol.steps(250) == smol.max_steps and smol.steps(-1) == smol.max_steps
    picked = smol.items(list(range(100)))
    assert len(picked) == smol.max_items and picked[0] == 0 and picked[-1] >= 50  # spread, not the head
    assert smol.batch(8) == smol.max_batch and lane("tiny").batch(8) == 8
    assert smol.claim(False, "a claim") is False
    assert "[smollm2-135m lane] a claim: does not hold here" in capsys.readouterr().out
    assert (learning_rate("smollm2-135m", "full"), learning_rate("smollm2-135m", "qlora")) == (2e-5, 2e-4)


def test_set_model_id_points_a_notebook_at_a_lane():
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x = 1\nMODEL_ID = "tiny"')])
    assert set_model_id(nb, "HuggingFaceTB/SmolLM2-135M") == 1
    assert nb.cells[0].source == 'x = 1\nMODEL_ID = "HuggingFaceTB/SmolLM2-135M"'
    with pytest.raises(ValueError, match="no `MODEL_ID"):
        set_model_id(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("y = 2")]), "tiny")


@pytest.mark.parametrize("path", sorted(Path("notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name)
def test_notebooks_have_one_model_id_cell_and_no_lane_branches(path):
    cells = [c["source"] if isinstance(c["source"], str) else "".join(c["source"])
             for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    assert sum(src.strip() == 'MODEL_ID = "tiny"' for src in cells) == 1
    assert not any('if MODEL_ID ==' in src or "if MODEL_ID !=" in src for src in cells)


def test_masks_equal_trls_on_the_smollm2_lane_whose_template_has_no_markers():
    """Lesson 01's TRL cell on the SmolLM2 lane: TRL refuses the shipped template, so its masks come
    from the byte-identical patched one while ours read the shipped template."""
    from sft_helpers.course.data import load_split
    from sft_helpers.masking import has_generation_markers
    from sft_helpers.models import load_tokenizer, smollm2_gguf_path
    from sft_helpers.reference import agreement_with_trl

    try:
        smollm2_gguf_path()
    except RuntimeError as e:
        pytest.skip(str(e))
    tok = load_tokenizer("smollm2-135m", verbose=False)
    assert not has_generation_markers(tok.chat_template)
    conversations = [r["messages"] for r in load_split("test")[:24]]
    for mode in ("completion_only", "assistant_only"):
        assert agreement_with_trl(tok, conversations, mode) == (24, 24)
