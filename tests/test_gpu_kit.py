"""The GPU kit (`sft-course gpu-kit`): built here under 64 MiB, and enough for `bench gpu` in an
environment like the GPU image's, without trl, datasets, bitsandbytes, pandas or pyarrow installed:
the bench imported with the kit on the path runs (QLoRA included) to its written JSON."""

import json
import os
from importlib.metadata import version as kit_version
import subprocess
import sys
import sysconfig
from pathlib import Path

from sft_helpers.course.gpu_kit import CUDA_LIBRARY, LIMIT_MIB, build_kit

REPO = Path(__file__).resolve().parent.parent
ABSENT_THERE = ("trl", "datasets", "bitsandbytes", "pandas", "pyarrow", "flash_attn", "kernels")


def image_like_site_packages(folder: Path) -> Path:
    """This environment's site-packages as links, less what the GPU image does not have."""
    folder.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        top = entry.name.split("-")[0].split(".")[0].lower()
        if top not in ABSENT_THERE and not entry.name.endswith(".pth") and not top.startswith("__editable__"):
            (folder / entry.name).symlink_to(entry)
    return folder


def test_the_kit_holds_bitsandbytes_with_one_cuda_library(tmp_path):
    kit = build_kit(tmp_path / "kit")
    assert kit["bytes"] < LIMIT_MIB * 2**20 and kit["packages"].keys() == {"bitsandbytes"}
    libraries = sorted(p.name for p in (tmp_path / "kit" / "bitsandbytes").glob("libbitsandbytes_*"))
    assert libraries == sorted(["libbitsandbytes_cpu.so", CUDA_LIBRARY])
    assert list((tmp_path / "kit").glob("bitsandbytes-*.dist-info/METADATA"))  # transformers checks it


def test_bench_gpu_runs_from_the_kit_where_trl_and_datasets_are_missing(tmp_path):
    """Before: `bench gpu` imported trl for its machine line after every run, and lost every result."""
    kit = build_kit(tmp_path / "kit")["path"]
    site = image_like_site_packages(tmp_path / "site")
    out = tmp_path / "benchmarks.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([kit, str(site), str(REPO)]), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    probe = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])" % (ABSENT_THERE,)
    found = subprocess.run([sys.executable, "-S", "-c", probe], env=env, capture_output=True, text=True)
    assert found.stdout.strip() == "['bitsandbytes']", found.stdout + found.stderr  # from the kit only
    run = subprocess.run([sys.executable, "-S", "-m", "sft_helpers.course.bench", "gpu", "--device", "cpu",
                          "--smoke", "--lanes", "fp32", "--methods", "qlora", "--out", str(out)],
                         env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.with_name("benchmarks-gpu-cpu.json").read_text())
    assert [(r["method"], r.get("error"), r["problems"]) for r in rows] == [("qlora", None, [])]
    assert rows[0]["label_tokens_per_s"] > 0  # timed over steps 2..N
    versions = out.read_text()
    assert f"bitsandbytes {kit_version('bitsandbytes')}" in versions and "no trl" in versions


def test_bench_gpu_keeps_what_ran_when_a_later_run_crashes(tmp_path, monkeypatch):
    """Before: the rows were written once, after the section; a crash in a later run lost them all."""
    import pytest

    from sft_helpers.course import bench

    calls = []

    def lane_run(*args, **kwargs):
        calls.append(args)
        if len(calls) > 1:
            raise KeyboardInterrupt  # not an Exception: nothing in the bench catches it
        return {"losses": [1.0, 0.5], "finite": True, "trainable": {"fp32": 1}, "frozen": {}, "grads": {},
                "optimizer_states": {"fp32": 2}, "scaler": False, "updated": 1.0, "packed_logit_diff": 0.0,
                "packed_leak_diff": 1.0}

    monkeypatch.setattr(bench, "lane_run", lane_run)
    out = tmp_path / "benchmarks.md"
    with pytest.raises(KeyboardInterrupt):
        bench.main(["gpu", "--device", "cpu", "--smoke", "--lanes", "fp32", "--methods", "full,lora",
                    "--out", str(out)])
    rows = json.loads(out.with_name("benchmarks-gpu-cpu.json").read_text())
    assert [(r["method"], r["problems"]) for r in rows] == [("full", [])]


def test_the_leak_reference_leaks_under_every_attention():
    """Flash attention drops an all-ones mask and splits one row by its position restarts: the bench's
    deliberately leaky forward did not leak there, and `lane_problems` reported a false difference."""
    import torch

    from sft_helpers.attention import attention_blocks
    from sft_helpers.course.bench import leaky_batch
    from sft_helpers.collators import PackedCollator

    rows = [{"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "seq_lengths": [2, 3]},
            {"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8], "seq_lengths": [1, 3]}]
    for batch in (PackedCollator(0)(rows[:1]), PackedCollator(0)(rows)):
        for attn in ("sdpa", "eager", "flash_attention_2"):
            blocks = attention_blocks(leaky_batch(batch, attn), attn)
            assert all(len(set(row.tolist()) - {-1}) == 1 for row in blocks), (attn, blocks)
            assert not torch.equal(blocks, attention_blocks(batch, attn))  # the packed batch keeps them apart
