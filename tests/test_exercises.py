"""The notebooks' exercise checks accept the solutions and name what is wrong in typical mistakes."""

import torch
import torch.nn.functional as F

from sft_helpers.course import exercises as ex
from sft_helpers import load_model
from sft_helpers.course.data import load_split
from sft_helpers.diagnostics import is_looping
from sft_helpers.masking import IGNORE, completion_only_labels, render_ids
from sft_helpers.packing import pack_bfd, pack_sequential

TOK = load_model("tiny")[1]


def verdict(capsys, found):
    return bool(found), repr(found)


def test_not_attempted_is_reported_not_raised(capsys):
    found = ex.check_template_overhead(None, TOK)
    assert not found and "not attempted" in repr(found)
    found = ex.check_position_ids(lambda lengths: None)
    assert not found and "not attempted" in repr(found)


def test_template_overhead(capsys):
    text = TOK.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    hi = len(TOK("Hi", add_special_tokens=False)["input_ids"])
    answer = len(TOK(text, add_special_tokens=False)["input_ids"]) - hi
    assert ex.check_template_overhead(answer, TOK)
    no_prompt = len(render_ids(TOK, [{"role": "user", "content": "Hi"}])) - hi
    ok, line = verdict(capsys, ex.check_template_overhead(no_prompt, TOK))
    assert not ok and "generation prompt" in line


def test_max_length(capsys):
    lengths = list(range(1, 101))
    assert ex.check_max_length(95, lengths)
    ok, line = verdict(capsys, ex.check_max_length(90, lengths))
    assert not ok and "90.0%" in line
    ok, line = verdict(capsys, ex.check_max_length(100, lengths))
    assert not ok and "smallest" in line


def test_completion_only(capsys):
    convs = [r["messages"] for r in load_split("validation")[:20]]

    def solution(tok, messages):
        prompt = render_ids(tok, messages[:-1], add_generation_prompt=True)
        ids = render_ids(tok, messages)
        return [IGNORE] * len(prompt) + ids[len(prompt):]

    assert ex.check_completion_only(solution, TOK, convs)

    def content_only(tok, messages):  # forgets the end-of-turn
        labels = solution(tok, messages)
        return labels[:-2] + [IGNORE, IGNORE]

    ok, line = verdict(capsys, ex.check_completion_only(content_only, TOK, convs))
    assert not ok and "should be trained" in line and "im_end" in line

    def everything(tok, messages):
        return completion_only_labels(tok, messages)["input_ids"]

    ok, line = verdict(capsys, ex.check_completion_only(everything, TOK, convs))
    assert not ok and "should be -100" in line


def test_masked_loss(capsys):
    def solution(logits, labels):
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                               ignore_index=-100)

    assert ex.check_masked_loss(solution)

    def unshifted(logits, labels):
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)

    ok, line = verdict(capsys, ex.check_masked_loss(unshifted))
    assert not ok and "not shifted" in line
    ok, line = verdict(capsys, ex.check_masked_loss(lambda lo, la: torch.tensor(0.0)))
    assert not ok and "expected" in line
    ok, line = verdict(capsys, ex.check_masked_loss(lambda lo, la: 1 / 0))
    assert not ok and "ZeroDivisionError" in line


def test_position_ids_and_cu_seq_lens(capsys):
    assert ex.check_position_ids(lambda lengths: [p for n in lengths for p in range(n)])
    ok, line = verdict(capsys, ex.check_position_ids(lambda lengths: list(range(sum(lengths)))))
    assert not ok and "never restart" in line

    def cu(lengths):
        out = [0]
        for n in lengths:
            out.append(out[-1] + n)
        return out

    assert ex.check_cu_seq_lens(cu)
    ok, line = verdict(capsys, ex.check_cu_seq_lens(lambda lengths: cu(lengths)[1:]))
    assert not ok and "leading 0" in line


def test_packer(capsys):
    assert ex.check_packer(lambda lengths, m: pack_bfd(lengths, m).indices())
    ok, line = verdict(capsys, ex.check_packer(lambda lengths, m: pack_sequential(lengths, m).indices()))
    assert not ok and "first-fit decreasing needs" in line
    ok, line = verdict(capsys, ex.check_packer(lambda lengths, m: [list(range(len(lengths)))]))
    assert not ok and "holds" in line
    ok, line = verdict(capsys, ex.check_packer(lambda lengths, m: [[i] for i in range(len(lengths) - 1)]))
    assert not ok and "missing [199]" in line


def test_lora_parameters(capsys):
    assert ex.check_lora_parameters(lambda i, o, r: r * (i + o))
    ok, line = verdict(capsys, ex.check_lora_parameters(lambda i, o, r: i * o))
    assert not ok and "frozen weight" in line
    ok, line = verdict(capsys, ex.check_lora_parameters(lambda i, o, r: r * i))
    assert not ok and "expected" in line


def test_bytes_per_parameter(capsys):
    assert ex.check_bytes_per_parameter(16)
    ok, line = verdict(capsys, ex.check_bytes_per_parameter(8))
    assert not ok and "pure bf16" in line


def test_best_step(capsys):
    def solution(history):
        evals = [h for h in history if "eval_loss" in h]
        return min(evals, key=lambda h: h["eval_loss"])["step"]

    assert ex.check_best_step(solution)
    ok, line = verdict(capsys, ex.check_best_step(lambda history: history[-1]["step"]))
    assert not ok and "last step" in line
    ok, line = verdict(capsys, ex.check_best_step(
        lambda history: min((h for h in history if "loss" in h), key=lambda h: h["loss"])["step"]))
    assert not ok


def test_is_looping(capsys):
    assert ex.check_is_looping(is_looping)
    ok, line = verdict(capsys, ex.check_is_looping(lambda text: len(text) > 30))
    assert not ok and "should be" in line


def test_lr_at_step_names_the_phase_that_is_wrong():
    import math

    def cosine_from_zero(s, t, w, lr):  # the warmup forgotten
        return lr * 0.5 * (1 + math.cos(math.pi * s / t))

    def constant_after_warmup(s, t, w, lr):
        return lr * s / w if s < w else lr

    assert "grows linearly" in repr(ex.check_lr_at_step(cosine_from_zero))
    assert "cosine starts after the warmup" in repr(ex.check_lr_at_step(constant_after_warmup))
    assert "not attempted" in repr(ex.check_lr_at_step(lambda *a: None))
    assert not ex.check_lr_at_step(lambda *a: 1 / 0)


def test_accumulation_steps_catches_forgotten_processes_and_fractions():
    assert "processes contributes" in repr(ex.check_accumulation_steps(lambda t, b, p: -(-t // b)))
    assert "whole number" in repr(ex.check_accumulation_steps(lambda t, b, p: t / (b * p)))
    assert ex.check_accumulation_steps(lambda t, b, p: max(1, -(-t // (b * p))))
