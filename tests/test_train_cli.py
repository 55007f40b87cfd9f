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
    assert [f.name for f in (tmp_path / "run").iterdir()] == ["skipped.txt"]  # the list, nothing trained
    assert (tmp_path / "run" / "skipped.txt").read_text() == f"malformed: {tmp_path / 'train.jsonl'}:3: no assistant turn\n"
    capsys.readouterr()
    # skipping is a choice, said out loud, up to max_skipped of the records (1 of 20 is 5%)
    assert main([path, "--bad_records", "skip", "--dry-run"]) == 1
    assert "[error] records lost: 1 records skipped or dropped (5.0%), more than max_skipped (1.0%)" in (
        capsys.readouterr().out)
    assert main([path, "--bad_records", "skip", "--max_skipped", "0.1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[warning] malformed records" in out and "1 skipped (malformed), 0 dropped" in out


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
    assert len(good) == 4 and bad == [f"{tmp_path / 'ds'}: row 2: no assistant turn"]
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
    assert f"{tmp_path / 'train.jsonl'}:5: " in out and "[error] malformed records" in out  # 1-based
    assert "preflight: checked 10 of 29 records, 1 skipped (malformed), 0 dropped after labelling, " \
           "29 training examples" in out
    assert main([path, "--bad_records", "skip", "--max_train_examples", "20", "--max_skipped", "0.1",
                 "--dry-run"]) == 0
    assert "preflight: checked 10 of 20 records, 1 skipped" in capsys.readouterr().out


def test_a_config_of_overrides_alone_needs_no_file(capsys):
    """`sft-train --train FILE ...` (what docs/experiments.md writes for every row): the data file
    is the value of --train, not a config file."""
    from sft_helpers.paths import data_path

    assert main(["--train", str(data_path("sft_test.jsonl")), "--validation", "null", "--max_train_examples", "8",
                 "--method", "full", "--save", "model", "--dry-run"]) == 0
    assert "dry run: config and data OK" in capsys.readouterr().out


def test_common_mistakes_are_one_line_errors_before_anything_loads(tmp_path, capsys, monkeypatch):
    """Exit 2 and one line naming the fix, no traceback: a model folder that does not exist, a hub id
    with the hub offline, a tokenizer with no chat template, resume with no checkpoint, a key written
    twice, an implausible learning rate (unless forced)."""
    import shutil

    data = str(data_path("sft_test.jsonl"))
    base = ["--train", data, "--validation", "null", "--method", "full", "--save", "model",
            "--output_dir", str(tmp_path / "run"), "--dry-run"]
    no_template = tmp_path / "no-template"
    shutil.copytree(data_path("tiny-base"), no_template)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    for f in no_template.glob("chat_template.*"):
        f.unlink()
    twice = tmp_path / "twice.yaml"
    twice.write_text(f"train: {data}\nlr: 1.0e-4\nmethod: full\nlr: 1.0e-3\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = {
        "does not exist": base + ["--model", str(tmp_path / "no-such-model")],
        "the hub is offline": base + ["--model", "no-such-org/no-such-model"],
        "has no chat template": base + ["--model", str(no_template)],
        "holds no checkpoint": base + ["--resume", "true"],
        f"{twice}:4: key 'lr' appears twice": [str(twice), "--dry-run"],
        "implausible for fine-tuning": base + ["--lr", "10"],
    }
    for expected, argv in cases.items():
        assert main(argv) == 2, expected
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, (expected, err)
    assert main(base + ["--lr", "10", "--force", "true"]) == 0  # forced: preflight's warning, no error
    assert "[warning] learning rate" in capsys.readouterr().out
    assert main(cases["has no chat template"] + ["--debug"]) == 2  # --debug: the traceback behind the line
    err = capsys.readouterr().err
    assert "Traceback" in err and err.index("Traceback") < err.rindex("sft-train: ") < err.rindex("chat template")


def test_multi_turn_records_with_completion_only_get_a_warning(tmp_path, capsys):
    records = load_split("train")[:40]
    path = _config(tmp_path, records)
    assert main([path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[warning] multi-turn records:" in out and "mask: assistant_only trains every assistant turn" in out
    assert main([path, "--mask", "assistant_only", "--dry-run"]) == 0
    assert "multi-turn records" not in capsys.readouterr().out


def test_dropped_validation_records_are_listed_and_none_left_is_an_error(tmp_path, capsys):
    """Validation records cut away by `truncation: drop` were dropped silently, and with none left the
    run trained with no evaluation and exited 0."""
    train = load_split("train")[:20]
    long = [{"messages": [{"role": "user", "content": "word " * 400}] + r["messages"][-1:]}
            for r in load_split("validation")[:3]]
    path = _config(tmp_path, train, validation=_write(tmp_path / "val.jsonl", long), truncation="drop")
    assert main([path, "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "[error] no validation examples: every validation record was dropped (3 after labelling)" in out
    listed = (tmp_path / "run" / "skipped.txt").read_text().splitlines()
    assert len(listed) == 3 and all(line.startswith("dropped (validation): ") for line in listed)


def test_a_saved_datasets_folder_gets_no_cache_files(tmp_path, one_thread):
    """Checks, labels and packed rows were cached next to the dataset's Arrow files: in the user's
    folder, even with --dry-run. They go to the datasets cache now."""
    from datasets import Dataset

    Dataset.from_list([{"messages": r["messages"]} for r in load_split("train")[:24]]).save_to_disk(
        str(tmp_path / "ds"))
    before = sorted(p.name for p in (tmp_path / "ds").iterdir())
    argv = ["--train", str(tmp_path / "ds"), "--method", "full", "--save", "model", "--max_steps", "1",
            "--output_dir", str(tmp_path / "run")]
    assert main(argv + ["--dry-run"]) == 0
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == before


def test_large_file_path_names_unreadable_lines_and_skips_them(tmp_path, capsys, monkeypatch):
    """Above SMALL_FILE_BYTES a truncated line raised a 76-line DatasetGenerationError and invalid
    UTF-8 a raw UnicodeDecodeError; now each is `file:line: reason`, and `bad_records: skip` trains
    on the rest."""
    import sft_helpers.recipe as train

    lines = [json.dumps({"messages": r["messages"]}) for r in load_split("train")[:30]]
    lines[3] = lines[3][:40]  # truncated
    path = tmp_path / "big.jsonl"
    path.write_bytes(("\n".join(lines[:6]) + "\n").encode() + b'{"messages": "caf\xe9"}\n'
                     + ("\n".join(lines[6:]) + "\n").encode())
    monkeypatch.setattr(train, "SMALL_FILE_BYTES", 0)
    argv = ["--train", str(path), "--validation", "null", "--method", "full", "--save", "model",
            "--output_dir", str(tmp_path / "run"), "--dry-run"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert f"{path}:4: invalid JSON" in out and f"{path}:7: cannot decode as UTF-8" in out
    assert "Traceback" not in out
    assert main(argv + ["--bad_records", "skip", "--max_skipped", "0.1"]) == 0
    captured = capsys.readouterr()
    assert "29 training examples" in captured.out and "Failed to load JSON" not in captured.err


def test_show_masks_prints_the_trained_tokens(tmp_path, capsys):
    records = load_split("train")[:4]
    path = _config(tmp_path, records)
    assert main([path, "--show-masks", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- training example") == 2
    reply = records[0]["messages"][-1]["content"]
    shown = out.split("--- training example 1 (trained tokens in [[...]]):\n")[1].split("\n--- training example 2")[0]
    trained = shown.split("[[")[1].split("]]")[0]
    assert shown.count("[[") == 1 and trained.startswith(reply[:10]) and "<|im_end|>" in trained  # reply + EOT


def test_merged_lora_with_trained_embeddings_on_a_bf16_lane_is_all_bf16(tmp_path, one_thread):
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    path = _config(tmp_path, load_split("train")[:4], method="lora", lora_r=2, precision="bf16",
                   train_embeddings=True, save="merged", max_steps=2, warmup=0, batching="padded",
                   max_length=64, max_skipped=0.5)
    assert main([path]) == 0
    run = tmp_path / "run"
    assert json.loads((run / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(run / "model" / "model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"BF16"}, dtypes
    merged = AutoModelForCausalLM.from_pretrained(run / "model", dtype="auto").eval()
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    with torch.no_grad():  # no autocast: a mixed-dtype model fails here
        assert merged(input_ids=torch.tensor([[5, 6, 7]])).logits.dtype == torch.bfloat16


@pytest.mark.parametrize("raw", [
    {"method": "full", "save": "model", "lr": 1e-3, "batching": "padded", "mask": "assistant_only"},
    {"method": "lora", "train_embeddings": True, "schedule": "constant", "warmup": 10, "grad_accum": 4},
    {"method": "qlora", "batching": "padding_free", "mask": "full", "max_steps": 60, "weight_decay": 0.1},
    {"method": "full", "save": "model", "attention_dropout": 0.2},
])
def test_trl_arguments_build_trl_and_peft_configs_that_read_back_our_values(raw):
    """Each SFTConfig / LoraConfig field holds the value the config trains with (and TRL accepts it)."""
    from peft import LoraConfig
    from sft_helpers.recipe import trl_arguments
    from sft_helpers.reference import trl_sft_config

    cfg = check_config({"train": "x.jsonl", **raw})
    args = trl_arguments(cfg)
    built = trl_sft_config(**args["SFTConfig"])
    assert built.learning_rate == cfg["lr"] and built.warmup_steps == cfg["warmup"]
    assert built.max_steps == cfg["max_steps"] and built.weight_decay == cfg["weight_decay"]
    assert built.gradient_accumulation_steps == cfg["grad_accum"]
    assert str(built.lr_scheduler_type.value) == ("cosine" if cfg["schedule"] == "cosine" else "constant_with_warmup")
    assert built.packing == (cfg["batching"] == "packed") and built.padding_free == (cfg["batching"] != "padded")
    assert built.completion_only_loss == (cfg["mask"] == "completion_only")
    assert built.assistant_only_loss == (cfg["mask"] == "assistant_only")
    assert (built.model_init_kwargs or {}).get("attention_dropout") == cfg["attention_dropout"]
    if cfg["method"] == "full":
        assert args["LoraConfig"] == {}
    else:
        lora = LoraConfig(**args["LoraConfig"])
        assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (cfg["lora_r"], cfg["lora_alpha"], cfg["lora_dropout"])
        assert bool(lora.modules_to_save) == cfg["train_embeddings"]


def test_attention_dropout_reaches_the_model_and_acts_only_in_training():
    """`attention_dropout` is the model config's: two training-mode passes differ, eval passes do not."""
    import torch
    from sft_helpers.recipe import build_model

    cfg = check_config({"train": "x.jsonl", "method": "full", "save": "model", "attention_dropout": 0.3,
                        "model": "tiny"})
    model, _ = build_model(cfg, "cpu", verbose=False)
    plain, _ = build_model({**cfg, "attention_dropout": None}, "cpu", verbose=False)
    assert model.config.attention_dropout == 0.3 and plain.config.attention_dropout == 0.0
    ids = torch.tensor([list(range(5, 25))])
    with torch.no_grad():
        model.train(), plain.train()
        assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
        assert torch.equal(plain(input_ids=ids).logits, plain(input_ids=ids).logits)
        model.eval()
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


def test_sft_train_leaves_the_process_group_it_ran_in(tmp_path):
    """Under torchrun the Trainer runs inside a process group; `sft-train` destroys it before the
    process exits (a live gloo group can abort the interpreter's shutdown: SIGABRT, "terminate called
    without an active exception"). A one-process group stands in for torchrun's."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main([_config(tmp_path, load_split("train")[:8]), "--dry-run"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
