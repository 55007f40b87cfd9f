"""Per-lane settings: what a notebook's budget, learning rates and assertions are on each lane.

The notebooks are written once. Their claims ("completion-only learns the format", "QLoRA ≈ LoRA")
were measured on the embedded tiny base at its budget and are asserted there, with tolerances that
held on two seeds. On other lanes the same cells run with that lane's budget and learning rates and
report each claim instead of asserting it (a real model on a short CPU smoke run, or an Instruct
model that already chats, need not reproduce a 4M model's numbers); sanity checks that hold on
every lane (finite, falling loss; masks equal TRL's; exact packing) stay plain asserts.

* `"tiny"`: the lesson's full budget, LR 1e-3 (full) / 3e-3 (adapters), every claim asserted;
* `"smollm2-135m"`: SmolLM2-135M-Instruct on a CPU, a smoke budget (2 steps of 2 examples, 4
  evaluation items) so that every notebook executes in minutes, the guide's LRs (2e-5 / 2e-4);
* anything else (a hub id on a GPU): a real but short budget, the guide's LRs.

>>> lane("tiny").steps(250), lane("smollm2-135m").steps(250), lane("Qwen/Qwen2.5-0.5B").lr("lora")
(250, 2, 0.0002)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lane:
    """One lane's settings. `max_steps` caps every training run's steps (None: the lesson's own),
    `max_items` caps evaluation sets and benchmark samples (None: all), `max_batch` caps the
    examples per step (None: the lesson's own), `asserts_claims` says whether the tiny base's
    measured claims are asserted (else reported)."""

    name: str
    max_steps: int | None
    max_items: int | None
    max_batch: int | None
    lr_full: float
    lr_adapters: float
    asserts_claims: bool
    description: str

    def steps(self, steps: int) -> int:
        """The lesson's `steps`, capped by the lane's budget (`-1`, "by epochs", becomes the cap)."""
        if self.max_steps is None:
            return steps
        return self.max_steps if steps < 0 else min(steps, self.max_steps)

    def batch(self, n: int) -> int:
        """`n` examples per step, capped by the lane's budget."""
        return n if self.max_batch is None else min(n, self.max_batch)

    def count(self, n: int) -> int:
        """`n` items (examples, samples), capped by the lane's budget."""
        return n if self.max_items is None else min(n, self.max_items)

    def items(self, records: list, n: int | None = None) -> list:
        """`n` (default: the lane's cap) of `records`, spread over them evenly so every task family
        is represented; all of them on a lane without a cap."""
        cap = self.count(min(len(records), n if n is not None else len(records)))
        if cap >= len(records):
            return list(records)
        return [records[i * len(records) // cap] for i in range(cap)]

    def lr(self, method: str = "full") -> float:
        """The lane's learning rate for `method` ("full", "lora", "qlora")."""
        return self.lr_full if method == "full" else self.lr_adapters

    def claim(self, holds: bool, claim: str) -> bool:
        """Assert `claim` on the tiny lane; elsewhere print whether it held on this lane's run."""
        if self.asserts_claims:
            assert holds, claim
        else:
            print(f"[{self.name} lane] {claim}: {'holds' if holds else 'does not hold'} here "
                  f"(asserted on the tiny lane)")
        return holds


LANES = {
    "tiny": Lane("tiny", None, None, None, 1e-3, 3e-3, True,
                 "embedded ~4M base, fp32 on CPU; the lesson's budget; every claim asserted"),
    "smollm2-135m": Lane("smollm2-135m", 2, 4, 2, 2e-5, 2e-4, False,
                         "SmolLM2-135M-Instruct on CPU: a smoke budget (2 steps of 2 examples, 4 evaluation items)"),
    "hub": Lane("hub", 200, 96, None, 2e-5, 2e-4, False,
                "a hub model on a GPU: up to 200 steps, 96 evaluation items, the guide's LRs"),
}


def lane(model_id: str) -> Lane:
    """The settings of the lane `model_id` runs on: `"tiny"`, `"smollm2-135m"`, else the hub lane."""
    return LANES.get(model_id, LANES["hub"])


# the course's runs as `sft-train` configs: the course data, full fine-tuning of the tiny base, packed
# rows holding ~16 conversations per step, validation loss on the replies (lesson 01); each lesson
# changes some of these keys
COURSE_RUN = dict(model="tiny", train="data/sft_train.jsonl", validation="data/sft_validation.jsonl",
                  test="data/sft_test.jsonl", max_eval_examples=None, max_length=1024, method="full",
                  batching="packed", batch_size=2, samples_per_step=16, lr=1e-3, lora_dropout=0.0,
                  validation_labels="reply")


def run_config(**overrides) -> dict:
    """The checked `sft-train` config of a course run: `COURSE_RUN` with `overrides`; `save` follows
    the method (the model for full fine-tuning, else the adapter), and padded or padding-free
    batches hold `batch_size` examples (no `samples_per_step`).

    >>> from sft_helpers.recipe import config_command
    >>> config_command(run_config(lr=3e-3, seed=1), run_config())
    'sft-train --lr 0.003 --seed 1'
    """
    from sft_helpers.recipe import check_config

    cfg = {**COURSE_RUN, **overrides}
    cfg.setdefault("save", "model" if cfg["method"] == "full" else "adapter")
    if cfg["batching"] != "packed":
        cfg["samples_per_step"] = None  # a batch is batch_size examples
    return check_config(cfg)
