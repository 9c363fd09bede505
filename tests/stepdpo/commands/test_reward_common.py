"""`stepdpo train-prm` on every public step-labelled format with its default options."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stepdpo.commands import command_module
from stepdpo.commands.common import run

FIX = Path(__file__).resolve().parents[2] / "fixtures"
# the step-labelled formats reward_models.data reads (PRM800K's final steps hold "\n\n")
STEP_LABELLED = {"prm800k_phase2.jsonl": "\n\n\n", "prm800k_phase1.jsonl": "\n", "math_shepherd.jsonl": "\n",
                 "trl_stepwise.jsonl": "\n", "processbench.jsonl": "\n", "rlhflow.jsonl": "\n",
                 "input_value_label.json": "\n\n"}


@pytest.mark.parametrize("name", sorted(STEP_LABELLED))
def test_train_prm_trains_each_public_format_with_defaults(name, tmp_path):
    out = tmp_path / "prm"
    summary = run(command_module("train-prm"), ["--model_name_or_path", "tiny-gpt2", "--dataset_name",
                                                str(FIX / name), "--dry_run", "--output_dir", str(out),
                                                "--report_to", "none"], "train-prm")
    assert summary["global_step"] == 2
    saved = json.loads((out / "reward_config.json").read_text())
    assert saved["step_format"]["separator"] == STEP_LABELLED[name]  # the one picked, saved with the model
    from reward_models.base import load_reward_model
    from reward_models.data import load_samples

    sample = min(load_samples(FIX / name), key=lambda s: len(s.prompt) + sum(map(len, s.steps)))
    steps = sample.steps[:2]  # within the tiny model's 256 positions
    scores = load_reward_model(out).score_steps([sample.prompt[:80]], [steps])[0]
    assert len(scores) == len(steps) and all(0.0 <= x <= 1.0 for x in scores)


def test_an_explicit_separator_inside_a_step_names_file_row_and_fix(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "stepdpo.cli", "train-prm", "--model_name_or_path", "tiny-gpt2",
                           "--dataset_name", str(FIX / "prm800k_phase2.jsonl"), "--step_separator", "\n\n",
                           "--dry_run", "--output_dir", str(tmp_path / "o"), "--report_to", "none"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.strip() and " INFO " not in x and " WARNING " not in x]
    assert "Traceback" not in proc.stderr and len(lines) <= 5, proc.stderr[-2000:]
    msg = "\n".join(lines)
    assert "prm800k_phase2.jsonl, row 2, field 'steps[1]'" in msg and "--step_separator" in msg, msg
