"""Smoke test of the end-to-end demo at a micro size (the real sizes run via `stepdpo demo`)."""

import json

import pytest

from stepdpo.demo import DemoConfig, pair_quality, run_demo


@pytest.mark.smoke
def test_demo_runs_end_to_end_and_writes_its_report(tmp_path, capsys):
    cfg = DemoConfig.quick(seed=0)
    cfg.n_test, cfg.n_sft, cfg.n_prm_prompts, cfg.n_pair_prompts, cfg.n_val = 20, 600, 20, 30, 20
    cfg.prm_injected, cfg.sft_steps, cfg.prm_steps, cfg.n_best_of_n, cfg.best_of_n = 20, 400, 20, 10, 2
    cfg.steps_per_round = 4
    m = run_demo(output_dir=str(tmp_path), cfg=cfg)
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and "report:" in out
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy_before"] == m["accuracy_before"] == m["correct_before"] / 20
    assert 0.0 <= saved["accuracy_after"] <= 1.0
    for name in ("report.md", "training_curves.png", "accuracy.png", "calibration.png"):
        data = (tmp_path / name).read_bytes()
        assert len(data) > 500, name
    report = (tmp_path / "report.md").read_text()
    assert "held-out accuracy before" in report and "![Accuracy](accuracy.png)" in report
    assert (tmp_path / "policy_sft" / "model.safetensors").exists()
    assert (tmp_path / "prm" / "reward_config.json").exists()
    assert m["prm"]["n_samples"] == 20
    # the default recipe ran its rounds on the policy's own errors, and the trained policy reloads with its tokenizer
    assert [r["round"] for r in m["rounds"]] == [0, 1] and all(r["pairs"] > 0 for r in m["rounds"])
    assert m["change"]["diff"] == pytest.approx(m["accuracy_after"] - m["accuracy_before"])
    assert "paired on the same problems" in report and "Stepwise DPO rounds" in report
    # the report says which loss the trainer applied: DPOP weighted 0.01 next to the NLL replay of right solutions
    assert m["loss"]["types"] == ["dpop"] and m["loss"]["weights"] == [0.01]
    assert m["loss"]["replayed_per_round"] == [st["replayed"] for st in m["pairs"]["per_round"]]
    assert "DPOP (lambda 50) weighted 0.01" in report
    assert ("NLL (weight 1) on the round's right solutions" in report) == any(m["loss"]["replayed_per_round"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "policy_stepdpo", use_safetensors=True)
    assert AutoTokenizer.from_pretrained(tmp_path / "policy_stepdpo").eos_token_id is not None


def test_pair_quality_uses_the_checker():
    from reward_models.types import StepPair
    from stepdpo.tasks.arith import ArithConfig

    task = ArithConfig()
    good = StepPair(prompt="Q: 2+3*4\n", prefix_steps=["3*4=12"], chosen="2+12=14", rejected="2+12=15")
    bad = StepPair(prompt="Q: 2+3*4\n", prefix_steps=[], chosen="2+3=5", rejected="3*4=12")
    q = pair_quality([good, bad], task)
    assert q == {"chosen_valid": 0.5, "rejected_invalid": 0.5, "both": 0.5}
