"""`train_sft`: learns, normalises the loss per token across gradient accumulation, logs eval loss."""

from types import SimpleNamespace

import pytest
import torch

from sft_helpers import load_model
from sft_helpers.course.data import load_split
from sft_helpers.collators import PaddedCollator
from sft_helpers.masking import build_labels, weighted_lm_loss
from sft_helpers.training import WeightedLossTrainer, eval_loss, example_losses, train_sft


@pytest.fixture(scope="module")
def data():
    _, tok = load_model("tiny")
    train, _ = build_labels(load_split("train")[:64], tok, "completion_only")
    val, _ = build_labels(load_split("validation")[:32], tok, "completion_only")
    return tok, train, val


def test_short_run_lowers_the_response_loss(data):
    tok, train, val = data
    model, _ = load_model("tiny")
    history = train_sft(model, tok, train, val, lr=1e-3, max_steps=12, batch_size=8, eval_steps=6)
    evals = [h for h in history if "eval_loss" in h]
    assert [h["step"] for h in evals] == [0, 6, 12]
    assert evals[-1]["eval_loss"] < 0.7 * evals[0]["eval_loss"]
    assert evals[-1]["eval_loss"] == pytest.approx(eval_loss(model, tok, val), rel=1e-5)


def test_eval_loss_is_token_weighted(data):
    tok, _, val = data
    model, _ = load_model("tiny")
    batch = PaddedCollator(tok.pad_token_id)(val)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    whole = weighted_lm_loss(logits, batch["labels"]).item()
    assert eval_loss(model, tok, val, batch_size=5) == pytest.approx(whole, rel=1e-4)


def test_example_losses_keep_the_order_and_weight_up_to_eval_loss(data):
    """One loss per example in the order given (each the example's own loss, as if scored alone),
    and their token-weighted mean is `eval_loss`: the per-item scores behind a loss interval."""
    tok, _, val = data
    model, _ = load_model("tiny")
    losses = example_losses(model, tok, val, batch_size=5)
    assert losses[::-1] == pytest.approx(example_losses(model, tok, val[::-1], batch_size=3), rel=1e-4)
    assert losses[7] == pytest.approx(eval_loss(model, tok, val[7:8]), rel=1e-4)
    tokens = [sum(x != -100 for x in e["labels"][1:]) for e in val]
    weighted = sum(l * n for l, n in zip(losses, tokens)) / sum(tokens)
    assert weighted == pytest.approx(eval_loss(model, tok, val), rel=1e-4)
    assert len(set(round(l, 3) for l in losses)) > len(val) // 2  # not one number repeated


def test_gradient_accumulation_does_not_change_the_update(data):
    """One optimizer step on 8 examples equals 2 accumulated micro-batches of 4: the loss is divided by
    the target tokens of the whole accumulated batch, not averaged per micro-batch."""
    tok, train, _ = data
    params = []
    for batch_size, accum in ((8, 1), (4, 2)):
        model, _ = load_model("tiny")
        # plain SGD, so the update is the gradient itself (Adam's first step is ~sign(grad))
        train_sft(model, tok, train[:8], lr=1.0, max_steps=1, batch_size=batch_size, grad_accum=accum,
                  warmup=0, weight_decay=0.0, group_by_length=False, max_grad_norm=1e9, optim="sgd")
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    base, _ = load_model("tiny")
    moved = (params[0] - torch.cat([p.detach().flatten() for p in base.parameters()])).abs().max()
    assert moved > 1e-3  # the step did something...
    assert torch.allclose(params[0], params[1], atol=1e-5, rtol=1e-4)  # ...and the same thing both ways


def test_num_items_counts_weights_of_targets():
    labels = torch.tensor([[5, -100, 7, 8], [1, 2, -100, -100]])
    weights = torch.tensor([[1.0, 0.1, 0.1, 1.0], [0.5, 0.5, 0.0, 0.0]])
    trainer = WeightedLossTrainer.__new__(WeightedLossTrainer)
    trainer.accelerator = SimpleNamespace(num_processes=1)  # one process: the local count
    got = trainer._get_num_items_in_batch([{"labels": labels, "loss_weights": weights}], "cpu")
    assert got.item() == pytest.approx(0.1 + 1.0 + 0.5)  # position 0 is never a target
    got = trainer._get_num_items_in_batch([{"labels": labels}], "cpu")
    assert got.item() == 3


def test_training_on_packed_rows_and_padding_free_batches_learns(data):
    from sft_helpers.collators import PackedCollator, PaddingFreeCollator
    from sft_helpers.packing import pack_examples

    tok, train, val = data
    rows, _ = pack_examples(train, 512, shuffle_seed=0)
    before = eval_loss(load_model("tiny")[0], tok, val)
    for data_, collator, batch in ((rows, PackedCollator(tok.pad_token_id, 512), 2), (train, PaddingFreeCollator(), 8)):
        model, _ = load_model("tiny")
        history = train_sft(model, tok, data_, lr=1e-3, max_steps=8, batch_size=batch, collator=collator,
                            logging_steps=4)
        assert history[-1]["step"] == 8 and eval_loss(model, tok, val) < 0.8 * before


def test_padding_free_training_follows_padded_training_step_for_step(data):
    from sft_helpers.collators import PaddingFreeCollator

    tok, train, _ = data
    losses = []
    for collator in (None, PaddingFreeCollator()):
        model, _ = load_model("tiny")
        history = train_sft(model, tok, train, lr=1e-3, max_steps=6, batch_size=8, collator=collator, logging_steps=1)
        losses.append([h["loss"] for h in history if "loss" in h])
    assert len(losses[0]) == 6 and losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_early_stopping_stops_after_patience_and_keeps_the_best_weights(data):
    tok, train, val = data
    model, _ = load_model("tiny")
    # a learning rate far too high: the eval loss gets worse after the first steps
    history = train_sft(model, tok, train[:16], val, lr=0.3, max_steps=40, batch_size=8, eval_steps=2,
                        warmup=0, early_stopping_patience=2)
    evals = [h for h in history if "eval_loss" in h]
    best = min(h["eval_loss"] for h in evals)
    assert evals[-1]["step"] < 40  # stopped early
    assert eval_loss(model, tok, val) == pytest.approx(best, rel=1e-5)


def test_schedule_constant_keeps_the_rate_after_warmup_and_cosine_decays(data):
    tok, train, _ = data
    rates = {}
    for schedule in ("constant_with_warmup", "cosine"):
        model, _ = load_model("tiny")
        history = train_sft(model, tok, train, lr=1e-3, max_steps=6, batch_size=8, warmup=2, logging_steps=1,
                            schedule=schedule)
        rates[schedule] = [h["learning_rate"] for h in history if "learning_rate" in h]
    assert rates["constant_with_warmup"][2:] == pytest.approx([1e-3] * 4)
    assert all(a > b for a, b in zip(rates["cosine"][2:], rates["cosine"][3:]))


def test_trainer_loss_by_hand_and_all_masked_step(data):
    """make_trainer's compute_loss is the shifted cross-entropy over labels != -100; an all-masked
    batch gives a NaN step loss (0/0) with exactly zero gradients (what lesson 04 teaches)."""
    import torch.nn.functional as F

    from sft_helpers.training import make_trainer

    tok, train, _ = data
    model, _ = load_model("tiny")
    batch = PaddedCollator(tok.pad_token_id)(train[:4])
    targets = batch["labels"][:, 1:]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    by_hand = F.cross_entropy(logits[targets != -100], targets[targets != -100])
    trainer = make_trainer(model, tok, train, max_steps=1)
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=(targets != -100).sum())
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    masked = {**batch, "labels": torch.full_like(batch["labels"], -100)}
    step = trainer.compute_loss(model, dict(masked), num_items_in_batch=torch.tensor(0.0))
    step.backward()
    assert torch.isnan(step)
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_early_stopping_keeps_the_best_weights_on_the_cpu(monkeypatch):
    # a parameter "on a GPU" without one: a fake tensor (shape, dtype and device, no data)
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    import sft_helpers.training as training

    mode = FakeTensorMode()
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(FakeTensor(mode, torch.empty(4, 3, device="meta"), torch.device("cuda", 0)))
    monkeypatch.setattr(training, "eval_loss", lambda *args: 1.0)
    callback = training.EvalLossCallback(None, [], every=1, patience=2)
    state = SimpleNamespace(global_step=0, log_history=[])
    with mode:
        callback.on_train_begin(None, state, SimpleNamespace(should_training_stop=False), model=model)
    assert model.w.device.type == "cuda"
    assert {n: t.device.type for n, t in callback.best_weights.items()} == {"w": "cpu"}  # not a 2nd GPU copy


def test_gradient_noise_falls_as_one_over_the_batch_size():
    """Mini-batch gradients of 32 examples scatter about a quarter as much as those of 8 (1/B for
    independent examples), each estimate from eight disjoint batches; the same seed, the same draws."""
    from sft_helpers import build_labels, load_model
    from sft_helpers.course.data import load_split
    from sft_helpers.stats import compare
    from sft_helpers.training import gradient_noise

    model, tok = load_model("tiny")
    examples, _ = build_labels(load_split("train")[:400], tok, "completion_only")
    small, large = (gradient_noise(model, tok, examples, b, n_batches=8) for b in (8, 32))
    assert gradient_noise(model, tok, examples, 8, n_batches=8) == small
    whole = gradient_noise(model, tok, examples, 32, n_batches=8, micro_batch=32)  # one pass per batch
    assert whole == pytest.approx(large, rel=1e-3)  # accumulating micro-batches: the same gradients
    ratio = (sum(small) / len(small)) / (sum(large) / len(large))
    assert 2 < ratio < 8, ratio
    assert compare(small, large, ("batch 8", "batch 32"), paired=False).supports(">")
    with pytest.raises(ValueError, match="n_batches"):
        gradient_noise(model, tok, examples[:10], 8, n_batches=2)


def test_embedding_lr_moves_the_embeddings_at_their_own_rate(data):
    """`embedding_lr`: the (tied) embeddings and head in groups of their own; the body at `lr`."""
    from sft_helpers.training import make_trainer

    tok, train, _ = data
    model, _ = load_model("tiny")
    embeddings = model.get_input_embeddings().weight
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = make_trainer(model, tok, train, lr=1e-9, embedding_lr=1e-2, max_steps=2, batch_size=8,
                           warmup=0, schedule="constant_with_warmup")
    trainer.train()
    groups = trainer.optimizer.param_groups
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())
    assert [g["lr"] for g in groups if any(p is embeddings for p in g["params"])] == [1e-2]
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert moved["model.embed_tokens.weight"] > 1e-3
    assert max(v for n, v in moved.items() if n != "model.embed_tokens.weight") < 1e-6
