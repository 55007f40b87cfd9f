"""Pre-train the embedded tiny base model (run once, outside CI; its weights are committed).

`python -m sft_helpers.course.pretrain` (or `sft-course pretrain`) trains the tokenizer on the corpus and
SFT texts, then a ~4M-parameter Llama on the plain-text corpus only (documents joined by
`<|endoftext|>`, cut into fixed-length blocks), and writes `data/tiny-base/`: weights
(safetensors), config, generation config, tokenizer and a model card with what it saw and measured.
The base model never sees chat markup: following a ChatML prompt is what SFT must teach.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from ..paths import data_path
from ..records import load_conversations
from .data import load_pretraining_corpus, load_world
from .tokenizer import train_tokenizer

TINY_CONFIG = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True,
                   rope_theta=10000.0)


def tiny_config(tokenizer) -> LlamaConfig:
    """The tiny base's architecture for this tokenizer."""
    return LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=None, **TINY_CONFIG)


def token_blocks(docs: list[list[int]], sep: int, block: int, rng: random.Random) -> torch.Tensor:
    """Shuffle documents, join them with `sep`, cut into `[n, block]` (the tail is dropped)."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    flat = [t for i in order for t in docs[i] + [sep]]
    n = len(flat) // block
    return torch.tensor(flat[: n * block]).view(n, block)


def pretrain(out_dir: Path, tokens: int = 4_000_000, block: int = 256, batch: int = 16, lr: float = 2e-3,
             warmup: int = 100, seed: int = 0, vocab_size: int = 4096) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    corpus = load_pretraining_corpus()
    chat_texts = [m["content"] for split in ("train", "validation", "test")
                  for r in load_conversations(data_path(f"sft_{split}.jsonl")) for m in r["messages"]]
    tok = train_tokenizer(corpus + chat_texts, vocab_size=vocab_size)
    docs = [tok(t, add_special_tokens=False)["input_ids"] for t in corpus]
    sep = tok.convert_tokens_to_ids("<|endoftext|>")
    model = LlamaForCausalLM(tiny_config(tok))
    n_params = sum(p.numel() for p in model.parameters())
    steps = tokens // (block * batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    rng = random.Random(seed)
    data, pos, losses, t0 = token_blocks(docs, sep, block, rng), 0, [], time.time()
    model.train()
    for step in (bar := tqdm(range(steps), desc="pretrain")):
        if pos + batch > len(data):
            data, pos = token_blocks(docs, sep, block, rng), 0
        x = data[pos:pos + batch]
        pos += batch
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    seconds = time.time() - t0
    model.eval()

    from ..evaluate import cloze_recall
    from .world import cloze_probes
    recall = cloze_recall(model, tok, cloze_probes(load_world()))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    stats = {"parameters": n_params, "vocab_size": len(tok), "tokens_seen": steps * block * batch, "steps": steps,
             "corpus_tokens_per_epoch": sum(len(d) + 1 for d in docs),
             "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4), "seconds": round(seconds),
             "cloze_recall": round(recall["recall"], 4),
             "cloze_recall_per_relation": {k: round(v, 3) for k, v in recall["per_relation"].items()},
             "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
             "torch": torch.__version__, "seed": seed, "lr": lr, "block": block, "batch": batch}
    (out_dir / "training_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    (out_dir / "README.md").write_text(model_card(stats))
    return stats


def model_card(s: dict) -> str:
    per = ", ".join(f"{k} {v:.0%}" for k, v in s["cloze_recall_per_relation"].items())
    return f"""# tiny-base: the course's embedded base model

A Llama-architecture causal LM with {s['parameters']:,} parameters (hidden 256, 4 layers, 4 heads,
tied embeddings, a {s['vocab_size']:,}-token byte-level BPE vocabulary with ChatML special tokens:
BPE was allowed 4,096 but ran out of merges on this small corpus), pre-trained from
scratch by `sft-course pretrain` on `data/pretrain.jsonl`: plain-text sentences stating every fact of
the generated world (`data/world.json`) in several phrasings, plus short arithmetic, sorting,
capitalisation and list texts. It has **never seen chat markup**.

## How it was made
- tokens seen: {s['tokens_seen']:,} ({s['steps']} steps of {s['batch']} x {s['block']} tokens;
  about {s['tokens_seen'] / s['corpus_tokens_per_epoch']:.0f} passes over a {s['corpus_tokens_per_epoch']:,}-token corpus)
- AdamW, peak LR {s['lr']}, 100 warmup steps, cosine to 10%, weight decay 0.1, grad clip 1.0, fp32, seed {s['seed']}
- final training loss (mean of last 50 steps): {s['final_loss']}
- wall time: {s['seconds']} s on {s['machine']} (torch {s['torch']})

## What it knows
Plain-text cloze recall over every fact of the world (greedy continuation starts with the answer):
**{s['cloze_recall']:.1%}** ({per}).

## Limits
- It knows only the fictional world and a few text patterns; it is not a language model of English.
- It does not follow chat prompts: `<|im_start|>`, `<|im_end|>` and `<|pad|>` embeddings are untrained.
  That is the point: notebook 00 measures this, and the course's SFT lessons teach it.
- Context: trained on 256-token blocks (position embeddings are RoPE, so longer inputs run but are untested).
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=data_path("tiny-base"))
    ap.add_argument("--tokens", type=int, default=4_000_000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(json.dumps(pretrain(args.out, tokens=args.tokens, lr=args.lr, seed=args.seed), indent=1))


if __name__ == "__main__":
    main()
