"""`stepdpo build-pairs` with a plain model folder as the judge."""

from __future__ import annotations

import json


def centred_judge(tokenizer, policy, seed: int = 3):
    """A random tiny LM whose Yes/No log-odds on the policy's steps straddle 0. A random model gives
    nearly the same log-odds to every question, on one side of 0 or the other by chance; here its
    final layer norm's bias moves along ``e(Yes) - e(No)`` (tied embeddings: the output only) so
    that the median over the steps of the policy's own sampled solutions is 0. Its scores still
    follow the position more than the step, so whether some error's rollouts score above 0 depends
    on the seed (3: yes)."""
    import torch

    from reward_models.process import ProcessRewardModel
    from reward_models.testing import tiny_causal_lm
    from stepdpo.demo import solve
    from stepdpo.tasks.arith import STEP_FORMAT, make_samples

    judge = tiny_causal_lm(tokenizer, seed=seed)
    prm = ProcessRewardModel.from_model(judge, tokenizer, backend="verification", step_format=STEP_FORMAT)
    prompts = [s.prompt for s in make_samples(16, 1)]
    sols = [row[0] for row in solve(policy, tokenizer, prompts, temperature=0.7)]

    def scores():
        return torch.tensor([v for row in prm.score_steps(prompts, sols) for v in row])

    emb = judge.get_output_embeddings().weight
    yes, no = prm.candidate_ids
    d = (emb[yes] - emb[no]).detach()
    with torch.no_grad():
        judge.transformer.ln_f.bias -= scores().median() * d / (d @ d)
    shifted = scores()
    assert shifted.min() < 0 < shifted.max() and shifted.abs().max() < 0.5, shifted  # around 0, far from 0.5
    return judge


def test_a_plain_model_folder_as_reward_model_builds_pairs(tmp_path, arith_policy, tokenizer):
    """A plain causal LM given as --reward_model judges by its Yes/No log-odds; score_threshold 0.5
    is a probability, so it compares with log-odds 0. It used to compare 0.5 with log-odds of about
    0.1: every step was bad and no pair was built, without a word."""
    from reward_models.testing import save_tiny

    model, tok, _ = arith_policy
    model.save_pretrained(tmp_path / "policy", safe_serialization=True)
    tok.save_pretrained(tmp_path / "policy")
    save_tiny(centred_judge(tokenizer, model), tokenizer, tmp_path / "judge")
    from stepdpo.cli import main

    assert main(["build-pairs", "--model_name_or_path", str(tmp_path / "policy"), "--reward_model",
                 str(tmp_path / "judge"), "--dataset_name", "arith:20", "--check_answers", "false", "--dry_run",
                 "--output_file", str(tmp_path / "pairs.jsonl")]) == 0
    stats = json.loads((tmp_path / "pairs.jsonl.stats.json").read_text())
    assert stats["pairs"] > 0, stats
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert all(r["chosen_score"] >= 0.0 > r["rejected_score"] for r in rows)  # log-odds around 0
