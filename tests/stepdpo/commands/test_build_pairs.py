"""`stepdpo build-pairs` with a plain model folder as the judge."""

from __future__ import annotations

import json


def test_a_plain_model_folder_as_reward_model_builds_pairs(tmp_path, arith_policy, tokenizer):
    """A plain causal LM given as --reward_model judges by its Yes/No log-odds; score_threshold 0.5
    is a probability, so it compares with log-odds 0. It used to compare 0.5 with log-odds of about
    0.1: every step was bad and no pair was built, without a word."""
    from reward_models.testing import save_tiny, tiny_causal_lm

    model, tok, _ = arith_policy
    model.save_pretrained(tmp_path / "policy", safe_serialization=True)
    tok.save_pretrained(tmp_path / "policy")
    save_tiny(tiny_causal_lm(tokenizer, seed=3), tokenizer, tmp_path / "judge")
    from stepdpo.cli import main

    assert main(["build-pairs", "--model_name_or_path", str(tmp_path / "policy"), "--reward_model",
                 str(tmp_path / "judge"), "--dataset_name", "arith:20", "--check_answers", "false", "--dry_run",
                 "--output_file", str(tmp_path / "pairs.jsonl")]) == 0
    stats = json.loads((tmp_path / "pairs.jsonl.stats.json").read_text())
    assert stats["pairs"] > 0, stats
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert all(r["chosen_score"] >= 0.0 > r["rejected_score"] for r in rows)  # log-odds around 0
