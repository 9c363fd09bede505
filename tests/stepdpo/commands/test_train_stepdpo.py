"""`stepdpo train --dry_run` without a recipe."""

from __future__ import annotations

import json


def test_a_dry_run_on_a_fresh_tiny_policy_warms_it_up_and_builds_pairs(tmp_path):
    """A freshly built tiny-gpt2 wrote no steps worth judging, so the smoke test of the command stopped
    with NoPairsError; the dry run now warms it up first (as the recipes do)."""
    from stepdpo.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model_name_or_path", "tiny-gpt2", "--dataset_name", "arith:20", "--dry_run",
                 "--output_dir", str(out), "--report_to", "none"]) == 0
    summary = json.loads((out / "stepdpo_train.json").read_text())
    assert summary["global_step"] == 2 and summary["pair_stats"][0]["pairs"] > 0
    assert (out / "sft_model" / "model.safetensors").exists()
    # the sampling throughput of each round: where the policy sampled, tokens generated, seconds in generate
    [rate] = summary["sampling"]
    stats = summary["pair_stats"][0]
    assert rate["devices"] == ["cpu"] and rate["generated_tokens"] == stats["generated_tokens"] > 0
    assert 0 < rate["generate_seconds"] <= rate["build_seconds"]
    assert rate["tokens_per_second"] == round(rate["generated_tokens"] / rate["generate_seconds"], 1)
    # at least one token per candidate solution's first step, at most sample_max_new_tokens per generated row
    assert stats["n_solutions"] <= stats["generated_tokens"]
