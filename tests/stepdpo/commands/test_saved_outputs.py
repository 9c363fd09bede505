"""What the trainers and the demo save reloads: from another working directory, with its
tokenizer, with readable files and a model card that names its base model."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def cli(cwd: Path, *argv: str) -> None:
    """``stepdpo ARGV`` run in ``cwd`` (in this process: the commands are the same functions)."""
    from stepdpo.cli import main

    here = Path.cwd()
    os.chdir(cwd)
    try:
        assert main(list(argv)) == 0
    finally:
        os.chdir(here)


def umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def test_lora_policy_and_prm_trained_in_one_folder_load_from_another(tmp_path):
    """A LoRA adapter used to name its base model by a path relative to where it was trained, so
    decode from any other folder failed; pairs files were owner-only (0600)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    cli(a, "train", "--config", str(ROOT / "configs" / "demo_stepdpo.yaml"), "--dry_run", "--output_dir", "out/lora",
        "--use_peft", "--lora_r", "4", "--report_to", "none")
    cli(a, "train-prm", "--model_name_or_path", "tiny-gpt2", "--dataset_name", "arith:20", "--dry_run",
        "--output_dir", "out/prm", "--use_peft", "--lora_r", "4", "--report_to", "none")
    adapter = json.loads((a / "out/lora/adapter_config.json").read_text())
    assert Path(adapter["base_model_name_or_path"]).is_absolute()
    assert stat.S_IMODE((a / "out/lora/pairs.jsonl").stat().st_mode) == umask_mode()
    # from another folder: the policy adapter decodes, judged by the PRM adapter; evaluate reads both
    cli(b, "decode", "--model_name_or_path", str(a / "out/lora"), "--reward_model", str(a / "out/prm"),
        "--dataset_name", "arith:4", "--dry_run", "--output_file", "dec.jsonl")
    assert len((b / "dec.jsonl").read_text().splitlines()) == 4
    cli(b, "evaluate", "--model_name_or_path", str(a / "out/lora"), "--reward_model", str(a / "out/prm"),
        "--dataset_name", "arith:8", "--dry_run", "--output_dir", "ev")
    assert (b / "ev" / "metrics.json").exists()
    # the outcome and Bradley-Terry models the other trainers write judge decoding from there too
    cli(a, "train-orm", "--model_name_or_path", "tiny-gpt2", "--dataset_name", "arith:20", "--dry_run",
        "--output_dir", "out/orm", "--report_to", "none")
    cli(a, "train-bt", "--model_name_or_path", "tiny-gpt2", "--dataset_name", str(ROOT / "tests/fixtures/hh_rlhf.jsonl"),
        "--dry_run", "--output_dir", "out/bt", "--report_to", "none")
    for judge in ("orm", "bt"):
        cli(b, "decode", "--model_name_or_path", str(a / "out/lora"), "--reward_model", str(a / "out" / judge),
            "--dataset_name", "arith:4", "--dry_run", "--output_file", f"dec_{judge}.jsonl")
        assert len((b / f"dec_{judge}.jsonl").read_text().splitlines()) == 4


def test_model_card_names_a_base_model_without_hub_id(tmp_path, arith_policy, dpo_args):
    """TRL's card said "a fine-tuned version of [None](https://huggingface.co/None)" for a local or
    in-memory base model."""
    from reward_models.types import StepPair
    from stepdpo.trainer import StepwiseDPOTrainer

    model, tok, _ = arith_policy
    model = copy.deepcopy(model)  # the session's policy stays as other tests expect it
    pairs = [StepPair(prompt="Q: 1+2\n", prefix_steps=[], chosen="1+2=3", rejected="1+2=4")] * 4
    trainer = StepwiseDPOTrainer(model=model, args=dpo_args(), processing_class=tok, train_dataset=pairs)
    trainer.create_model_card(model_name="policy")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "fine-tuned version of" in card and "[None]" not in card
