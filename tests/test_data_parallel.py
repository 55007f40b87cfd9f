"""`train_sft` is exact under data parallelism: two processes (torchrun, CPU, gloo) with one batch each
per step end with the same weights as one process with gradient accumulation 2 on the same global
batches, to float noise. Completion-only labels make the number of target tokens differ between
examples, so a per-process normalisation (a mean of per-process means) would show up here.

Run as a script, this file is the worker: `python tests/test_data_parallel.py BATCHING OUT.pt`
trains the tiny model for a few steps and (on rank 0) saves its final weights to OUT.pt.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

STEPS, MICRO_BATCH, WORLD = 4, 3, 2
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}


def worker(batching: str, out: str, rows: str = "") -> None:
    """Train the tiny model `STEPS` steps of `WORLD * MICRO_BATCH` examples (or packed rows): one
    process with accumulation `WORLD`, or (under torchrun) `WORLD` processes with accumulation 1.
    With `rows`: one whole epoch of the first `rows` rows (the last step then holds fewer)."""
    import torch

    from sft_helpers import load_model
    from sft_helpers.course.data import load_split
    from sft_helpers.collators import PackedCollator
    from sft_helpers.masking import build_labels
    from sft_helpers.packing import pack_examples
    from sft_helpers.recipe import close_process_group
    from sft_helpers.training import train_sft

    world = int(os.environ.get("WORLD_SIZE", 1))
    torch.manual_seed(0)
    model, tok = load_model("tiny", device="cpu")
    examples, _ = build_labels(load_split("train")[:160], tok, "completion_only")
    collator = None
    if batching == "packed":
        examples, _ = pack_examples(examples, max_length=192, shuffle_seed=0)
        collator = PackedCollator(tok.pad_token_id, max_length=192)
    assert len(examples) >= STEPS * WORLD * MICRO_BATCH, f"{len(examples)} {batching} rows are too few"
    steps = {"max_steps": STEPS} if not rows else {"epochs": 1}
    train_sft(model, tok, examples[:int(rows)] if rows else examples, lr=1e-3, batch_size=MICRO_BATCH,
              grad_accum=WORLD // world, warmup=0, logging_steps=STEPS, seed=0, collator=collator, **steps)
    if int(os.environ.get("RANK", 0)) == 0:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    close_process_group()  # else a rank can abort at exit (SIGABRT, seen once in CI)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(commands: list[list[str]], timeout: int = 300) -> None:
    """Run `commands` at the same time (the processes of one job); fail with the output of every one
    of them if any fails or the job outlives `timeout` seconds (then all are killed: a process that
    died leaves the others waiting in a collective, and its output says why)."""
    import tempfile
    import time

    env = {**os.environ, **ENV}
    logs = [tempfile.TemporaryFile("w+") for _ in commands]  # a pipe could fill and block a process
    procs = [subprocess.Popen(c, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                              cwd=Path(__file__).resolve().parent.parent, start_new_session=True)
             for c, log in zip(commands, logs)]
    deadline, late = time.monotonic() + timeout, False
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            late = True
            break
    if late:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)  # torchrun and its workers
    for p, log in zip(procs, logs):
        p.wait()
        log.seek(0)
    outputs = [log.read() for log in logs]
    report = "\n".join(f"--- {' '.join(p.args[3:])} (exit {p.returncode}):\n{text[-3000:]}"
                       for p, text in zip(procs, outputs))
    assert not late, f"the job ran past {timeout} s; its processes printed:\n{report}"
    assert all(p.returncode == 0 for p in procs), report


def test_run_drains_every_process(tmp_path):
    """A process of a job may print a lot while another waits for it (rank 0 in a collective while rank 1
    warns): `_run` must not leave its output in a full pipe (that deadlocked a CI run), and a job that
    hangs fails with what each process printed."""
    flag = tmp_path / "done"
    wait_for_flag = f"import os, time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)"
    talk_then_flag = f"print('w' * 300_000); open({str(flag)!r}, 'w').close()"
    _run([[sys.executable, "-c", wait_for_flag], [sys.executable, "-c", talk_then_flag]], timeout=30)
    with pytest.raises(AssertionError, match="(?s)ran past 1 s.*still here"):
        _run([[sys.executable, "-c", "print('still here', flush=True); import time; time.sleep(60)"]],
             timeout=1)


def _max_difference(a: str, b: str) -> float:
    import torch

    wa, wb = torch.load(a), torch.load(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def _moved(path: str) -> float:
    """How far training moved the weights (so that equal weights cannot mean 'nothing trained')."""
    import torch

    from sft_helpers import load_model

    start = load_model("tiny", device="cpu")[0].state_dict()
    end = torch.load(path)
    return max((end[k] - start[k]).abs().max().item() for k in end)


WORKER = str(Path(__file__).resolve())
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here on one torch thread, as in the launched processes."""


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Weights of the one-process run with accumulation, trained in this process once per batching
    (a launch would spend far longer on imports than on its few steps)."""
    done: dict[str, str] = {}

    def get(batching: str, rows: str = "") -> str:
        if (batching, rows) not in done:
            assert "WORLD_SIZE" not in os.environ
            done[batching, rows] = str(tmp_path_factory.mktemp("single") / f"{batching}{rows}.pt")
            worker(batching, done[batching, rows], rows)
        return done[batching, rows]
    return get


@pytest.mark.parametrize("batching", ["padded", "packed"])
def test_two_processes_equal_one_with_accumulation(batching, single, tmp_path):
    ddp = str(tmp_path / "ddp.pt")
    _run([TORCHRUN + ["--nproc_per_node", str(WORLD), "--master_addr", "127.0.0.1", "--master_port",
                      str(_free_port()), WORKER, batching, ddp]])
    assert _moved(single(batching)) > 1e-3
    assert _max_difference(single(batching), ddp) < 2e-5


@pytest.mark.parametrize("batching,rows", [("padded", 22), ("packed", 19)])
def test_an_epoch_whose_rows_do_not_divide_equals_one_process(batching, rows, single, tmp_path):
    """The epoch's end: 22 rows are 3 steps of 6 and one of 4 (process 1 holds 1 real row), 19 are 3 of
    6 and one of 1 (process 1 holds none). Before, accelerate completed the last batches with repeats
    of the first rows (a row trained twice); now with rows that train nothing (`TailPaddedSampler`)."""
    assert rows % (WORLD * MICRO_BATCH)
    ddp = str(tmp_path / "ddp.pt")
    _run([TORCHRUN + ["--nproc_per_node", str(WORLD), "--master_addr", "127.0.0.1", "--master_port",
                      str(_free_port()), WORKER, batching, ddp, str(rows)]])
    assert _moved(single(batching, str(rows))) > 1e-3
    assert _max_difference(single(batching, str(rows)), ddp) < 2e-5


def test_two_machines_on_localhost_equal_one_with_accumulation(single, tmp_path):
    """The multi-node path: two single-process "machines" (node ranks 0 and 1) meeting at 127.0.0.1."""
    ddp = str(tmp_path / "ddp.pt")
    port = str(_free_port())
    _run([TORCHRUN + ["--nnodes", str(WORLD), "--nproc_per_node", "1", "--node_rank", str(rank),
                      "--master_addr", "127.0.0.1", "--master_port", port, WORKER, "padded", ddp]
          for rank in range(WORLD)])
    assert _max_difference(single("padded"), ddp) < 2e-5


def test_sft_train_under_torchrun_equals_one_process(tmp_path):
    """The same through the command line: `torchrun -m sft_helpers.recipe` (LoRA, packed rows, no dropout:
    a dropout mask would differ between processes) against one process with accumulation 2; only rank 0
    writes the run folder."""
    import yaml
    from safetensors.torch import load_file

    from sft_helpers.course.data import load_split
    from sft_helpers.recipe import main

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in load_split("train")[:160]))
    cfg = {"model": "tiny", "device": "cpu", "train": str(train), "method": "lora", "lora_r": 4,
           "lora_dropout": 0, "batching": "packed", "max_length": 192, "batch_size": MICRO_BATCH,
           "max_steps": STEPS, "warmup": 0, "lr": 3e-3, "logging_steps": STEPS,
           "output_dir": str(tmp_path / "single")}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main([str(tmp_path / "cfg.yaml"), "--grad_accum", str(WORLD)]) == 0
    _run([TORCHRUN + ["--nproc_per_node", str(WORLD), "--master_addr", "127.0.0.1", "--master_port",
                      str(_free_port()), "-m", "sft_helpers.recipe", str(tmp_path / "cfg.yaml"),
                      "--output_dir", str(tmp_path / "ddp")]])
    single = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    ddp = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    assert single.keys() == ddp.keys()
    assert max(single[k].abs().max().item() for k in single if "lora_B" in k) > 1e-3  # it trained
    assert max((single[k] - ddp[k]).abs().max().item() for k in single) < 2e-5


if __name__ == "__main__":
    worker(*sys.argv[1:])
