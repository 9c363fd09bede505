"""Likelihood and implicit reward models: hand-computed scores, padding exactness, save/load, training."""

import json
import math

import pytest
import torch

from reward_models.base import as_reward_model, load_reward_model
from reward_models.evaluation import auroc
from reward_models.implicit_trainer import ImplicitPRMConfig, ImplicitPRMTrainer, implicit_loss
from reward_models.likelihood import ImplicitRewardModel, LikelihoodRewardModel
from reward_models.testing import save_tiny, tiny_causal_lm
from stepdpo.tasks.arith import STEP_FORMAT, ArithConfig, make_samples

EASY = ArithConfig(ops="+-", start_min=1, start_max=9, min_operand=1, max_operand=9, max_value=9)
def _flat(rows):
    return [v for r in rows for v in r]


PROMPTS = ["Q: 3+4\n", "Q: (2+3)*2-1\n"]
STEPS = [["3+4=7", "Answer: 7"], ["2+3=5", "5*2=10", "10-1=9", "Answer: 9"]]


def _token_logps(model, ids):
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return [0.0] + [float(logp[t - 1, ids[t]]) for t in range(1, len(ids))], \
        [0.0] + [float(logp[t - 1].max()) for t in range(1, len(ids))]


def _by_hand(model, tok, prompt, steps, token_score, cumulative):
    t = STEP_FORMAT.tokenize(tok, prompt, steps)
    lp, top = _token_logps(model, t.input_ids)
    out, running = [], 0.0
    for a, b in t.spans:
        v = lp[a:b]
        val = {"min_prob": min(v), "mean_logprob": sum(v) / len(v), "sum_logprob": sum(v),
               "min_relative": min(x - y for x, y in zip(v, top[a:b]))}[token_score]
        running = min(running, val) if cumulative else val
        out.append(math.exp(running))
    return out


@pytest.mark.parametrize("token_score", ["min_prob", "min_relative", "mean_logprob", "sum_logprob"])
@pytest.mark.parametrize("cumulative", [True, False])
def test_likelihood_scores_equal_hand_computed_token_probabilities(tokenizer, token_score, cumulative):
    model = tiny_causal_lm(tokenizer, seed=1)
    rm = LikelihoodRewardModel.from_model(model, tokenizer, step_format=STEP_FORMAT, token_score=token_score,
                                          cumulative=cumulative, batch_size=2)
    got = rm.score_steps(PROMPTS, STEPS)  # both solutions in one right-padded chunk
    for p, s, row in zip(PROMPTS, STEPS, got):
        want = _by_hand(model, tokenizer, p, s, token_score, cumulative)
        assert row == pytest.approx(want, abs=1e-5)
        assert all(0 < v <= 1 for v in row)
        if cumulative:
            assert all(b <= a + 1e-12 for a, b in zip(row, row[1:]))


def test_likelihood_save_load_and_plain_lm_dir(tokenizer, tmp_path):
    model = tiny_causal_lm(tokenizer, seed=2)
    rm = LikelihoodRewardModel.from_model(model, tokenizer, step_format=STEP_FORMAT, token_score="min_relative")
    before = rm.score_steps(PROMPTS, STEPS)
    rm.save(tmp_path / "lik")
    cfg = json.loads((tmp_path / "lik" / "reward_config.json").read_text())
    assert cfg["type"] == "likelihood" and cfg["token_score"] == "min_relative"
    again = load_reward_model(tmp_path / "lik", device="cpu")
    assert isinstance(again, LikelihoodRewardModel) and again.settings.token_score == "min_relative"
    assert _flat(again.score_steps(PROMPTS, STEPS)) == pytest.approx(_flat(before), abs=1e-6)
    plain = LikelihoodRewardModel(save_tiny(model, tokenizer, tmp_path / "lm"), device="cpu",
                                  step_format=STEP_FORMAT, token_score="min_relative")
    assert _flat(plain.score_steps(PROMPTS, STEPS)) == pytest.approx(_flat(before), abs=1e-6)
    assert rm.score_steps(["Q"], [[]]) == [[]]
    with pytest.raises(ValueError, match="token_score"):
        LikelihoodRewardModel.from_model(model, tokenizer, token_score="max")


def test_implicit_scores_are_scaled_cumulated_log_ratios(tokenizer, tmp_path):
    model, ref = tiny_causal_lm(tokenizer, seed=3), tiny_causal_lm(tokenizer, seed=4)
    same = ImplicitRewardModel.from_models(model, model, tokenizer, step_format=STEP_FORMAT, beta=0.5)
    assert all(v == pytest.approx(0.5) for row in same.score_steps(PROMPTS, STEPS) for v in row)
    rm = ImplicitRewardModel.from_models(model, ref, tokenizer, step_format=STEP_FORMAT, beta=0.5, output="logodds")
    got = rm.score_steps(PROMPTS, STEPS)
    for p, s, row in zip(PROMPTS, STEPS, got):
        t = STEP_FORMAT.tokenize(tokenizer, p, s)
        a, b = _token_logps(model, t.input_ids)[0], _token_logps(ref, t.input_ids)[0]
        r = [0.5 * sum(x - y for x, y in zip(a[i:j], b[i:j])) for i, j in t.spans]
        assert row == pytest.approx([sum(r[: k + 1]) for k in range(len(r))], abs=1e-5)
    rm.save(tmp_path / "imp")
    assert (tmp_path / "imp" / "reference" / "model.safetensors").exists()
    again = load_reward_model(tmp_path / "imp", device="cpu")
    assert isinstance(again, ImplicitRewardModel)
    assert _flat(again.score_steps(PROMPTS, STEPS)) == pytest.approx(_flat(got), abs=1e-5)


def test_implicit_loss_matches_hand_value():
    lp = torch.tensor([[0.0, -1.0, -2.0, -1.0]])
    ref = torch.tensor([[0.0, -2.0, -1.0, -1.0]])
    index = torch.tensor([[-1, 0, 1, 1]])
    # r0 = 0.5 * (+1) = 0.5; r1 = 0.5 * (-1 + 0) = -0.5; q = [0.5, 0.0]; labels [1, 0]
    want = (-math.log(1 / (1 + math.exp(-0.5))) - math.log(0.5)) / 2
    got = implicit_loss(lp, ref, index, torch.tensor([[1.0, 0.0]]), beta=0.5)
    assert got.item() == pytest.approx(want, abs=1e-6)
    masked = implicit_loss(lp, ref, index, torch.tensor([[1.0, -100.0]]), beta=0.5)
    assert masked.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))), abs=1e-6)


def test_implicit_trainer_learns_to_find_slips(tokenizer, tmp_path):
    """A causal LM that has seen correct chains, then trained as an implicit PRM on labeled slips:
    its step scores separate good from bad steps on held-out problems, and the saved model reloads."""
    test = make_samples(150, seed=1, cfg=EASY, error_rate=0.5)
    train = make_samples(800, seed=0, cfg=EASY, error_rate=0.5, exclude={s.meta["expression"] for s in test})
    model = tiny_causal_lm(tokenizer, seed=0)
    args = ImplicitPRMConfig(output_dir=str(tmp_path / "out"), report_to="none", save_strategy="no",
                             disable_tqdm=True, seed=0, logging_steps=10, per_device_train_batch_size=32,
                             learning_rate=3e-3, max_steps=120, beta=0.5, step_separator="\n", use_cpu=True)
    trainer = ImplicitPRMTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=train)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    rm = ImplicitRewardModel.from_models(trainer.model, trainer.ref_model, tokenizer, step_format=STEP_FORMAT,
                                         beta=0.5)
    scores = rm.score_steps([s.prompt for s in test], [s.steps for s in test])
    a = auroc([v for r in scores for v in r], [lab for s in test for lab in s.labels])
    print(f"implicit PRM: loss {losses[0]:.3f} -> {losses[-1]:.3f}, held-out step AUROC {a:.3f}")
    assert losses[-1] < losses[0] - 0.1
    assert a >= 0.7  # measured 0.772; untrained: every score is 0.5 (AUROC 0.5)
    trainer.save_model(str(tmp_path / "prm"))
    cfg = json.loads((tmp_path / "prm" / "reward_config.json").read_text())
    assert cfg["type"] == "implicit" and cfg["beta"] == 0.5
    again = load_reward_model(tmp_path / "prm", device="cpu")
    assert _flat(again.score_steps([s.prompt for s in test[:5]], [s.steps for s in test[:5]])) == \
        pytest.approx(_flat(scores[:5]), abs=1e-5)


def test_as_reward_model_on_a_torch_module(tokenizer):
    model = tiny_causal_lm(tokenizer, seed=0)
    with pytest.raises(TypeError, match="tokenizer="):
        as_reward_model(model)
    rm = as_reward_model(model, tokenizer=tokenizer, step_format=STEP_FORMAT)
    assert isinstance(rm, LikelihoodRewardModel)
    assert len(rm.score_steps(PROMPTS, STEPS)[1]) == 4
