"""Smoke test of the end-to-end demo at a micro size (the real sizes run via `stepdpo demo`)."""

import json

import pytest

from stepdpo.demo import DemoConfig, pair_quality, run_demo


@pytest.mark.smoke
def test_demo_runs_end_to_end_and_writes_its_report(tmp_path, capsys):
    cfg = DemoConfig.quick(seed=0)
    cfg.n_test, cfg.n_sft, cfg.n_prm_prompts, cfg.n_pair_prompts, cfg.n_val, cfg.n_prm_gold = 20, 600, 20, 30, 20, 100
    cfg.prm_injected, cfg.sft_steps, cfg.prm_steps, cfg.n_best_of_n, cfg.best_of_n = 20, 400, 20, 10, 2
    cfg.steps_per_round, cfg.n_best_of_n_val = 4, 6
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
    assert m["prm"]["n_samples"] == 20 and m["prm"]["processbench_f1"] == m["prm"]["first_error"]["f1"]
    assert json.loads((tmp_path / "prm" / "reward_config.json").read_text())["type"] == "likelihood"
    assert set(m["prm_baselines"]) == {"position", "policy_likelihood"}
    # best-of-n at the temperature that did best on validation problems, every aggregation reported
    bon = m["best_of_n"]
    assert bon["temperature"] in cfg.best_of_n_temperatures and set(bon["validation"]) == \
        {str(t) for t in cfg.best_of_n_temperatures}
    assert bon["problems"] == 10 and set(bon["best_of_n"]) == {"min", "prod", "mean", "last"}
    assert bon["validation"][str(bon["temperature"])]["best_of_n_prm"] == \
        max(r["best_of_n_prm"] for r in bon["validation"].values())
    assert "ProcessBench-style F1" in report and "Reranking by aggregation" in report
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
    # every model folder the demo writes serves the command line from another working directory
    import os

    from stepdpo.cli import main

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    here = os.getcwd()
    os.chdir(elsewhere)
    try:
        for policy in ("policy_stepdpo", "policy_sft"):
            assert main(["decode", "--model_name_or_path", str(tmp_path / policy), "--reward_model",
                         str(tmp_path / "prm"), "--dataset_name", "arith:4", "--dry_run", "--output_file",
                         f"{policy}.jsonl"]) == 0
    finally:
        os.chdir(here)
    for policy in ("policy_stepdpo", "policy_sft"):
        assert len((elsewhere / f"{policy}.jsonl").read_text().splitlines()) == 4


def test_pair_quality_uses_the_checker():
    from reward_models.types import StepPair
    from stepdpo.tasks.arith import ArithConfig

    task = ArithConfig()
    good = StepPair(prompt="Q: 2+3*4\n", prefix_steps=["3*4=12"], chosen="2+12=14", rejected="2+12=15")
    bad = StepPair(prompt="Q: 2+3*4\n", prefix_steps=[], chosen="2+3=5", rejected="3*4=12")
    q = pair_quality([good, bad], task)
    assert q == {"chosen_valid": 0.5, "rejected_invalid": 0.5, "both": 0.5}


@pytest.mark.parametrize("kind", ["likelihood", "head", "implicit", "verification"])
def test_every_prm_kind_trains_saves_and_scores(tmp_path, kind):
    """train_prm builds each kind on a fresh backbone of the policy's size; the saved folder reloads
    through the registry and scores every step."""
    from reward_models.base import load_reward_model
    from reward_models.testing import tiny_tokenizer
    from stepdpo.demo import make_data, prm_data, train_prm

    tok = tiny_tokenizer()
    cfg = DemoConfig.quick(seed=0)
    cfg.n_test, cfg.n_sft, cfg.n_prm_prompts, cfg.n_prm_gold, cfg.n_pair_prompts, cfg.n_val = 8, 50, 10, 40, 4, 6
    cfg.prm_injected, cfg.prm_steps, cfg.prm_batch = 10, 3, 8
    cfg.prm_kind, cfg.prm_backbone = kind, "fresh"
    data = make_data(cfg)
    from reward_models.testing import tiny_causal_lm

    policy = tiny_causal_lm(tok, seed=0, n_layer=cfg.policy_layers, n_embd=cfg.policy_width,
                            n_head=cfg.policy_heads, n_positions=128)
    train, val, test = prm_data(cfg, policy, tok, data)
    assert len(val) == 2 * cfg.n_val and len(test) == cfg.n_test  # separate draws: 2 per validation problem
    n_gold = cfg.n_prm_gold if kind == "likelihood" else cfg.n_prm_prompts
    assert len(train) >= n_gold and (kind == "likelihood") == all(s.first_error is None for s in train)
    path, log = train_prm(cfg, tok, tmp_path / "unused", train, tmp_path)
    assert any("train_loss" in h for h in log)
    rm = load_reward_model(path, device="cpu")
    want = {"likelihood": "likelihood", "implicit": "implicit"}.get(kind, "process")
    assert json.loads((path / "reward_config.json").read_text())["type"] == want
    scores = rm.score_steps([s.prompt for s in test], [s.steps for s in test])
    assert [len(r) for r in scores] == [len(s.steps) for s in test]
    assert all(0.0 <= v <= 1.0 for r in scores for v in r)  # one scale for every kind: probabilities


def test_demo_dpo_rounds_log_every_step(tmp_path, monkeypatch):
    """The demo's Stepwise DPO runs log every optimizer step, so its loss panel is a curve."""
    import stepdpo.trainer
    from stepdpo.demo import stepwise_dpo_rounds

    seen = {}

    class Recorded:
        def __init__(self, *a, args=None, **kw):
            seen["args"] = args

        def remove_callback(self, callback):
            seen["removed"] = callback.__name__

        def train(self):
            pass

    monkeypatch.setattr(stepdpo.trainer, "StepwiseDPOTrainer", Recorded)
    stepwise_dpo_rounds(None, None, ["Q: 1+1\n"], ["1+1"], None, output_dir=tmp_path, rounds=3, steps=70, lr=1e-4,
                        loss=["dpop"])
    assert seen["args"].logging_steps == 1 and seen["args"].logging_strategy == "steps"
    assert seen["removed"] == "PrinterCallback"  # logged every step, but not printed every step


def test_demo_dpo_loss_and_reward_panels_cover_the_same_steps(tmp_path, monkeypatch):
    """The "DPO rewards" panel (same log history as the loss panel) ends at the loss panel's last
    step, even when rewards were logged after it (a trailing step, the end-of-training summary)."""
    from types import SimpleNamespace

    import reward_models.evaluation
    from stepdpo import demo, report

    got = {}
    plot = report.plot_training_curves

    def record(curves, path, **kw):
        got.update(curves=curves, kw=kw)
        return plot(curves, path, **kw)

    monkeypatch.setattr(report, "plot_training_curves", record)
    monkeypatch.setattr(reward_models.evaluation, "reliability_diagram", lambda probs, labels, path: path)
    dpo_log = [{"step": 0, "pairs/count": 9}]
    dpo_log += [{"step": s, "loss": 0.7 - 0.01 * s, "rewards/chosen": 0.01 * s, "rewards/margins": 0.02 * s}
                for s in range(1, 41)]
    dpo_log += [{"step": 41, "rewards/chosen": 0.5}, {"step": 42, "train_runtime": 3.0, "train_loss": 0.6,
                                                      "rewards/margins": 0.9}]
    sft_log = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    bon = {"n": 2, "best_of_n_prm": 0.5, "majority_vote": 0.4, "problems": 10}
    demo._plots(tmp_path, sft_log, sft_log, dpo_log, None, [], SimpleNamespace(step_scores=[]), (3, 10), (4, 10), bon)
    curves = got["curves"]
    loss_steps = curves["Stepwise DPO loss"]["loss"][0]
    assert loss_steps == list(range(1, 41))
    assert curves["DPO rewards"] and all(max(xs) <= max(loss_steps) for xs, _ in curves["DPO rewards"].values())
    assert set(got["kw"]["same_steps"]) == {"Stepwise DPO loss", "DPO rewards"}
