import json

import pytest
import torch

from reward_models.base import load_reward_model
from reward_models.outcome import OutcomeRewardModel, reduce_token_logits
from reward_models.process import ProcessRewardModel
from reward_models.steps import StepFormat
from reward_models.testing import save_tiny, tiny_causal_lm, tiny_token_classifier
from reward_models.types import DataError

PROMPTS = ["Q: 2+3*4\n", "Q: 7-5\n", "Q: 9\n"]
STEPS = [["3*4=12", "2+12=14", "Answer: 14"], ["7-5=2", "Answer: 2"], ["Answer: 9"]]
FMT = StepFormat()


def _token_logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, :, 0].double()


@pytest.fixture(scope="module")
def orm_model(tokenizer):
    return tiny_token_classifier(tokenizer, num_labels=1, seed=7)


def test_head_last_and_mean_match_hand_computation(tokenizer, orm_model):
    completions = [FMT.join(s) for s in STEPS]
    last = OutcomeRewardModel.from_model(orm_model, tokenizer, reduce="last")
    mean = OutcomeRewardModel.from_model(orm_model, tokenizer, reduce="mean")
    want_last, want_mean = [], []
    for p, c in zip(PROMPTS, completions):
        p_ids, c_ids = tokenizer(p)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"]
        logits = _token_logits(orm_model, p_ids + c_ids)
        want_last.append(float(torch.sigmoid(logits[-1])))
        want_mean.append(float(torch.sigmoid(logits[len(p_ids):]).mean()))  # seed 000: mean over completion
    assert last.score(PROMPTS, completions) == pytest.approx(want_last, abs=1e-6)
    assert mean.score(PROMPTS, completions) == pytest.approx(want_mean, abs=1e-6)
    lo = OutcomeRewardModel.from_model(orm_model, tokenizer, reduce="last", output="logodds")
    assert lo.score(PROMPTS, completions) == pytest.approx(torch.logit(torch.tensor(want_last)).tolist(), abs=1e-5)
    assert last.get_reward_for_problem_solution(PROMPTS[0], completions[0]) == pytest.approx(want_last[0], abs=1e-6)
    assert reduce_token_logits(torch.tensor([5.0, 0.0, 0.0]), 1, 3, "last").item() == 0.0


def test_head_prefix_scores_one_forward(tokenizer, orm_model):
    calls = []
    handle = orm_model.transformer.register_forward_hook(lambda *a: calls.append(1))
    for reduce in ("last", "mean"):
        orm = OutcomeRewardModel.from_model(orm_model, tokenizer, reduce=reduce)
        calls.clear()
        rows = orm.score_steps(PROMPTS, STEPS)
        assert len(calls) == 1
        for p, st, row in zip(PROMPTS, STEPS, rows):
            # each prefix scored as a (complete) solution of its own
            want = orm.score([p] * len(st), [FMT.join(st[: j + 1]) for j in range(len(st))])
            assert row == pytest.approx(want, abs=1e-5)
    handle.remove()


def test_verification_backend_matches_seed_formula(tokenizer):
    lm = tiny_causal_lm(tokenizer, seed=8)
    template = "Is this solution correct? Yes or No: Problem: {problem}\n\nSolution: {solution}"
    orm = OutcomeRewardModel.from_model(lm, tokenizer, backend="verification", prompt_template=template, batch_size=2)
    assert orm.settings.output == "logodds"
    sols = [FMT.join(s) for s in STEPS]
    got = orm.score(PROMPTS, sols)
    yes, no = tokenizer.encode(" Yes")[0], tokenizer.encode(" No")[0]
    for p, s, g in zip(PROMPTS, sols, got):  # seed 004's get_reward_for_problem_solution, unbatched
        text = "Is this solution correct? Yes or No: " + f"Problem: {p}\n\nSolution: {s}"
        lp = torch.log_softmax(_token_logits_lm(lm, tokenizer(text)["input_ids"]), 0)
        assert g == pytest.approx(float(lp[yes] - lp[no]), abs=1e-5)
    rows = orm.score_steps(PROMPTS, STEPS)
    assert rows[0][-1] == pytest.approx(got[0], abs=1e-5) and len(rows[0]) == 3


def _token_logits_lm(lm, ids):
    lm.eval()
    with torch.no_grad():
        return lm(input_ids=torch.tensor([ids])).logits[0, -1].double()


def test_round_trip_and_plain_dirs(tokenizer, orm_model, tmp_path):
    models = [OutcomeRewardModel.from_model(orm_model, tokenizer, reduce="mean", output="logodds"),
              OutcomeRewardModel.from_model(tiny_causal_lm(tokenizer), tokenizer, backend="verification")]
    sols = [FMT.join(s) for s in STEPS]
    for i, orm in enumerate(models):
        orm.save(tmp_path / str(i))
        cfg = json.loads((tmp_path / str(i) / "reward_config.json").read_text())
        assert cfg["type"] == "outcome" and cfg["backend"] == orm.backend
        loaded = load_reward_model(tmp_path / str(i))
        assert isinstance(loaded, OutcomeRewardModel) and loaded.settings == orm.settings
        assert loaded.score(PROMPTS, sols) == orm.score(PROMPTS, sols)
        assert OutcomeRewardModel.load(tmp_path / str(i), device="cpu").score_steps(PROMPTS, STEPS) == \
            orm.score_steps(PROMPTS, STEPS)
    save_tiny(orm_model, tokenizer, tmp_path / "plain_head")  # one-label token classifier -> outcome head
    plain = load_reward_model(tmp_path / "plain_head")
    assert isinstance(plain, OutcomeRewardModel) and plain.backend == "head"
    save_tiny(tiny_causal_lm(tokenizer), tokenizer, tmp_path / "lm")
    assert OutcomeRewardModel(tmp_path / "lm").backend == "verification"


def test_outcome_errors(tokenizer, orm_model, tmp_path):
    with pytest.raises(ValueError, match="num_labels=1"):
        OutcomeRewardModel.from_model(tiny_token_classifier(tokenizer, num_labels=2), tokenizer)
    orm = OutcomeRewardModel.from_model(orm_model, tokenizer)
    with pytest.raises(DataError, match="row 1.*non-empty"):
        orm.score(["a", "b"], ["x", " "])
    with pytest.raises(ValueError, match="2 prompts for 1"):
        orm.score(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="unknown reduce"):
        OutcomeRewardModel.from_model(orm_model, tokenizer, reduce="median")
    with pytest.raises(ValueError, match="one-label token head is an outcome model"):
        ProcessRewardModel(save_tiny(orm_model, tokenizer, tmp_path / "m"))
    save_tiny(tiny_token_classifier(tokenizer, num_labels=2), tokenizer, tmp_path / "m")
    (tmp_path / "m" / "reward_config.json").write_text(json.dumps({"type": "process", "format_version": 1,
                                                                   "backend": "head"}))
    with pytest.raises(DataError, match="holds a 'process' reward model"):
        OutcomeRewardModel(tmp_path / "m")
    with pytest.raises(TypeError, match="not a OutcomeRewardModel"):
        OutcomeRewardModel.load(tmp_path / "m")
