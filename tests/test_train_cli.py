"""`sft-train`: config checking, `--dry-run` on planted data problems, and a short run's folder."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import yaml

from sft_helpers.paths import data_path
from sft_helpers.course.data import load_split
from sft_helpers.recipe import CONFIGS, ConfigError, check_config, load_config, main

ROOT = Path(__file__).resolve().parent.parent


def _problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        check_config(raw)
    return e.value.problems


def test_unknown_key_names_the_closest_valid_key():
    problems = _problems({"train": "x.jsonl", "batch_sise": 4, "learning_rate": 1e-4, "zzz": 1})
    assert "unknown key 'batch_sise' (did you mean 'batch_size'?)" in problems
    assert "unknown key 'learning_rate' (did you mean 'lr'?)" in problems  # TRL's name
    assert any(p.startswith("unknown key 'zzz'; valid keys: model,") for p in problems)


def test_wrong_type_or_value_names_the_key_and_why():
    problems = _problems({"train": "x.jsonl", "lr": "fast", "batch_size": 0, "method": "qlor",
                          "grad_accum": True, "validation_fraction": 1.5})
    assert problems == ["lr: expected a number, got 'fast' (str)", "batch_size: must be >= 1, not 0",
                        "method: must be one of 'full', 'lora', 'qlora', not 'qlor' (did you mean 'qlora'?)",
                        "grad_accum: expected an integer, got True (bool)",
                        "validation_fraction: must be between 0 and 1 (exclusive), not 1.5"]


def test_contradictions_and_missing_train_are_errors():
    assert _problems({"method": "full", "save": "adapter"}) == [
        "train: required (a JSONL file, a list of them, or a saved datasets folder)",
        "save: full fine-tuning has no adapter, use save: model (not 'adapter')"]
    assert _problems({"train": "x", "early_stopping_patience": 2})[0].startswith("early_stopping_patience:")


def test_numbers_as_pyyaml_reads_them_and_overrides():
    cfg = load_config("qlora-tiny", ["--lr", "1e-4", "--max_steps", "7", "--train", "a.jsonl,b.jsonl"])
    assert yaml.safe_load("lr: 1e-4")["lr"] == "1e-4"  # why strings are coerced
    assert (cfg["lr"], cfg["max_steps"], cfg["train"]) == (1e-4, 7, ["a.jsonl", "b.jsonl"])
    with pytest.raises(ConfigError, match="override '--dry'"):
        load_config("qlora-tiny", ["--dry"])


def test_every_shipped_config_is_valid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # installed from a wheel: data/ is the package's copy of the course data
    assert Path(load_config("qlora-tiny")["train"]).is_file()
    names = sorted(f.stem for f in CONFIGS.glob("*.yaml"))
    assert {"qlora-tiny", "lesson03-qlora"} <= set(names)
    for name in names:
        load_config(name)
    for f in (CONFIGS / "accelerate").glob("*.yaml"):
        assert yaml.safe_load(f.read_text())["distributed_type"] in ("MULTI_GPU", "FSDP", "DEEPSPEED")


def test_console_script_and_configs_are_packaged():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["sft-train"] == "sft_helpers.recipe:main"


def _write(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _config(tmp_path: Path, train: list, **keys) -> str:
    cfg = {"model": "tiny", "device": "cpu", "train": _write(tmp_path / "train.jsonl", train),
           "method": "qlora", "lr": 3e-3, "max_length": 256, "batching": "packed", "batch_size": 2,
           "max_steps": 2, "logging_steps": 1, "output_dir": str(tmp_path / "run"), **keys}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return str(tmp_path / "cfg.yaml")


def test_bad_config_exits_2_and_trains_nothing(tmp_path, capsys):
    path = _config(tmp_path, load_split("train")[:8], lora_rank=8)
    assert main([path]) == 2
    assert "unknown key 'lora_rank' (did you mean 'lora_r'?)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_dry_run_exits_1_naming_a_planted_data_problem(tmp_path, capsys):
    records = load_split("train")[:20]
    assert main([_config(tmp_path, records), "--dry-run"]) == 0  # the clean data pass
    out = capsys.readouterr().out
    assert "0 errors" in out and "memory: ~" in out
    records[2] = {"messages": records[2]["messages"][:-1]}  # planted: the reply is gone
    path = _config(tmp_path, records)
    assert main([path, "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "[error] malformed records" in out and f"{tmp_path / 'train.jsonl'}:3:" in out
    assert "no assistant turn" in out
    assert main([path]) == 1  # nor does a real run start on it
    assert not (tmp_path / "run").exists()
    assert main([path, "--bad_records", "skip", "--dry-run"]) == 0  # skipping it is a choice, said out loud
    assert "[warning] malformed records" in capsys.readouterr().out


def test_run_writes_the_run_folder(tmp_path, one_thread):
    records = load_split("train")[:24]
    path = _config(tmp_path, records, validation=_write(tmp_path / "val.jsonl", load_split("validation")[:4]),
                   test=_write(tmp_path / "test.jsonl", load_split("test")[:3]), max_new_tokens=4,
                   eval_steps=1, lora_r=4)
    assert main([path]) == 0
    run = tmp_path / "run"
    assert check_config(yaml.safe_load((run / "config.yaml").read_text())) == load_config(path)
    history = [json.loads(line) for line in (run / "log_history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    assert [h["step"] for h in history if "eval_loss" in h] == [0, 1, 2]
    assert (run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 4
    scores = json.loads((run / "chat_eval.json").read_text())
    assert scores["n"] == 3 and 0 <= scores["exact_match"] <= 1
    assert len((run / "chat_eval_rows.jsonl").read_text().splitlines()) == 3


def test_saved_datasets_folder_is_read(tmp_path):
    from datasets import Dataset

    from sft_helpers.recipe import read_records

    records = [{"messages": r["messages"]} for r in load_split("test")[:5]]
    records[1] = {"messages": records[1]["messages"][:1]}
    Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    good, bad = read_records(str(tmp_path / "ds"))
    assert len(good) == 4 and bad == [f"{tmp_path / 'ds'}[1]: no assistant turn"]
    assert read_records(str(data_path("sft_test.jsonl")))[0][:5] == load_split("test")[:5]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft, loading the adapter
def test_save_both_keeps_adapter_and_an_equivalent_merged_model(tmp_path, one_thread):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sft_helpers import load_model

    path = _config(tmp_path, load_split("train")[:16], method="lora", lora_r=4, save="both", max_steps=2, warmup=0,
                   batching="padded", lr=1e-2)
    assert main([path]) == 0
    run = tmp_path / "run"
    merged = AutoModelForCausalLM.from_pretrained(run / "model").eval()
    adapter = PeftModel.from_pretrained(load_model("tiny", device="cpu")[0], str(run / "adapter")).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        base = load_model("tiny", device="cpu")[0](input_ids=ids).logits
        a, m = adapter(input_ids=ids).logits, merged(input_ids=ids).logits
    assert (a - base).abs().max() > 1e-4  # the adapter changed something
    assert (a - m).abs().max() < 1e-4


def test_large_file_path_reports_bad_records_and_checks_a_sample(tmp_path, capsys, monkeypatch):
    import sft_helpers.recipe as train

    records = load_split("train")[:30]
    records[4] = {"messages": records[4]["messages"][:-1]}  # planted: the reply is gone
    path = _config(tmp_path, records, num_proc=2)
    monkeypatch.setattr(train, "SMALL_FILE_BYTES", 0)  # the json loader's path, as for a file of > 64 MB
    monkeypatch.setattr(train, "PREFLIGHT_SAMPLE", 10)
    assert main([path, "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'train.jsonl'}[4]: " in out and "[error] malformed records" in out
    assert "preflight: checked 10 of 29 records, 29 training examples" in out
    assert main([path, "--bad_records", "skip", "--max_train_examples", "20", "--dry-run"]) == 0
    assert "preflight: checked 10 of 20 records, 20 training examples" in capsys.readouterr().out


def test_a_config_of_overrides_alone_needs_no_file(capsys):
    """`sft-train --train FILE ...` (what docs/experiments.md writes for every row): the data file
    is the value of --train, not a config file."""
    from sft_helpers.paths import data_path

    assert main(["--train", str(data_path("sft_test.jsonl")), "--validation", "null", "--max_train_examples", "8",
                 "--method", "full", "--save", "model", "--dry-run"]) == 0
    assert "dry run: config and data OK" in capsys.readouterr().out
