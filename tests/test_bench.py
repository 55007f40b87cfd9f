"""Benchmark plumbing (the benchmarks themselves are commands, not tests), and the `gpu` bench's CPU
smoke path."""

import json
import math

import pytest

from sft_helpers.course.bench import (bench_rows, efficiency_table, gpu_bench, labelled_dataset, lane_run, main,
                                      packer_run, packer_speed_section, write_section)
from sft_helpers.models import load_tokenizer
from sft_helpers.packing import long_tailed_lengths


def test_write_section_replaces_only_its_own_block(tmp_path):
    path = tmp_path / "b.md"
    path.write_text("# Benchmarks\n\nintro\n")
    write_section("packing", "first", path)
    write_section("qlora-tiny", "other", path)
    write_section("packing", "second", path)
    text = path.read_text()
    assert "first" not in text and text.count("second") == 1 and "other" in text and text.startswith("# Benchmarks")
    assert text.index("second") < text.index("other")  # replaced in place


def test_efficiency_table_orders_the_packers_as_the_lesson_says():
    rows = {r["method"].split(", ")[-1]: r["efficiency"] for r in efficiency_table(long_tailed_lengths(3000, 2048), 2048)}
    assert rows["bfd"] >= 0.99 and rows["bfd"] >= rows["ffd"] > rows["sequential"]
    assert rows["batches of 16 (random)"] < 0.5 < rows["batches of 16 (length-grouped)"]


def test_packer_speed_runs_ours_and_trl_on_disk_and_in_memory(tmp_path, monkeypatch):
    from importlib import import_module

    fingerprint, bars = import_module("datasets.fingerprint"), import_module("datasets.utils.tqdm")
    monkeypatch.setattr(fingerprint, "_CACHING_ENABLED", fingerprint._CACHING_ENABLED)  # packer_run turns it off
    monkeypatch.setattr(bars, "_hf_datasets_progress_bars_disabled", bars._hf_datasets_progress_bars_disabled)
    labelled_dataset(60, 256).save_to_disk(tmp_path / "data")
    rows = [{"examples": 60, "load": 0.0, **packer_run(packer, str(tmp_path / "data"), 256, case)}
            for case in ("disk", "memory") for packer in ("ours", "trl_whole", "trl")]
    assert len({(r["rows"], r["tokens"]) for r in rows if r["packer"] != "trl"}) == 1  # the same bins
    section = packer_speed_section(rows, "cmd")
    assert "60 examples, on disk: **" in section and "60 examples, in memory: **" in section
    assert section.count("| sft_helpers `pack_dataset_columnar` (BFD, whole dataset) |") == 2


@pytest.mark.parametrize("lane", ["fp32", "fp16", "bf16"])  # one lane per test: half lanes are slow on CPU
def test_gpu_bench_cpu_smoke_trains_the_lane_and_says_gpu_figures_are_unmeasured(lane, tmp_path, capsys,
                                                                                   one_thread):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n")
    main(["gpu", "--device", "cpu", "--smoke", "--lanes", lane, "--methods", "full", "--out", str(out)])
    [r] = json.loads((tmp_path / "benchmarks-gpu-cpu.json").read_text())
    assert (r["model"], r["lane"], r["attention"], r["method"]) == ("tiny", lane, "sdpa", "full")
    assert "error" not in r, r["error"]
    assert r["problems"] == [] and len(r["losses"]) == 3 and all(map(math.isfinite, r["losses"]))
    assert set(r["trainable"]) == set(r["grads"]) == set(r["optimizer_states"]) == {"fp32"}
    assert r["updated"] > 0  # some step got past the fp16 loss scaler's first overflows
    assert r["scaler"] == (lane == "fp16") and "peak_gib" not in r and r["estimate_gib"] > 0
    assert r["packed_logit_diff"] < 0.1 * r["packed_leak_diff"]  # rounding, far below a leak
    if lane == "fp32":
        assert r["packed_logit_diff"] < 1e-3 and abs(r["packed_loss_diff"]) < 1e-4
    text = out.read_text()
    section = text[text.index("<!-- bench:gpu-cpu -->"):text.index("<!-- /bench:gpu-cpu -->")]
    assert "GPU figures: unmeasured" in section and "CPU smoke run" in section
    assert f"`python -m sft_helpers.course.bench gpu --device cpu --smoke --lanes {lane} --methods full`" in section
    assert f"\n| tiny | {lane} | sdpa | full | " in section and "1 of 1 runs pass every check" in section
    assert f"[1/1] tiny {lane} sdpa full: ok" in capsys.readouterr().out  # one progress line per run


def test_gpu_bench_fp16_lora_with_embeddings_keeps_fp32_copies_and_merges_in_fp16(one_thread):
    rows = bench_rows(load_tokenizer("tiny", verbose=False), 6, 64)
    r = lane_run("tiny", "fp16", "sdpa", "lora_emb", rows, steps=3, rows_per_step=2, device="cpu")
    assert r["trainable"] == r["grads"] and set(r["trainable"]) == {"fp32"} and set(r["frozen"]) == {"fp16"}
    assert set(r["optimizer_states"]) == {"fp32"} and r["scaler"] and r["skipped_steps"] < 3
    assert r["updated"] > 0
    assert r["merged_dtypes"] == ["fp16"] and r["merged_finite"]
    assert max(r["merged_diff"], r["packed_logit_diff"]) < 0.1 * r["packed_leak_diff"]


def test_gpu_bench_records_a_failed_run_as_a_row_and_goes_on(tmp_path):
    lines = []
    rows = gpu_bench([str(tmp_path / "no-model-here")], "cpu", lanes=["fp32", "fp16"], methods=["full"],
                     log=lines.append)
    assert [r["lane"] for r in rows] == ["fp32", "fp16"] and len(lines) == 2
    assert all(r["error"].startswith("OSError") and r["problems"] == [r["error"]] for r in rows)
    skipped = gpu_bench(["tiny"], "cpu", lanes=["fp32"], methods=["full", "lora"], budget_s=-1,
                        log=lines.append)
    assert [r["error"] for r in skipped] == ["TimeoutError: skipped: the -1 s budget was spent"] * 2
