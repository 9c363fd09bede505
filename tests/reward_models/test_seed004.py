"""Seed 004's code, run against the package.

The blocks below that *use* the classes are copied from seed 004 with only imports, paths and
the ``"cuda"`` device default changed. Seed 004's own ProcessRewardModel / OutcomeRewardModel
methods are copied too (as ``Seed*``) to serve as the unbatched reference the package's
batched verification backend must reproduce.
"""

import json
import os

import pytest
import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from reward_models.combine import CombinedRewardModel, EnsembleRewardModel
from reward_models.outcome import OutcomeRewardModel
from reward_models.process import ProcessRewardModel
from reward_models.testing import save_tiny, tiny_causal_lm

TEXT = "3*4=12\n2+12=14\nAnswer: 14\n"
STEPS = ["3*4=12", "2+12=14", "Answer: 14"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("seed004")
    return {"process": str(save_tiny(tiny_causal_lm(tokenizer, seed=11), tokenizer, root / "process_model")),
            "outcome": str(save_tiny(tiny_causal_lm(tokenizer, seed=12), tokenizer, root / "outcome_model")),
            "root": root}


# ---- seed 004, ProcessRewardModel (reference; device default "cuda" -> "cpu") --------------------
class SeedProcessRewardModel(nn.Module):
    def __init__(self, model_name_or_path, device="cpu"):
        super().__init__()
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_name_or_path,
            torch_dtype=torch.float16 if torch.cuda.is_available() else torch.float32,
            device_map="auto" if torch.cuda.is_available() else None
        )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.verification_prompt = "Is this step correct? Yes or No: "

    def forward(self, input_ids, attention_mask=None):
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return outputs

    def get_reward_for_text(self, text):
        input_text = self.verification_prompt + text
        inputs = self.tokenizer(input_text, return_tensors="pt").to(self.device)
        with torch.no_grad():
            outputs = self.forward(inputs.input_ids, inputs.attention_mask)
            logits = outputs.logits
        last_token_logits = logits[0, -1]
        yes_token_id = self.tokenizer.encode(" Yes", add_special_tokens=False)[0]
        no_token_id = self.tokenizer.encode(" No", add_special_tokens=False)[0]
        yes_logp = torch.log_softmax(last_token_logits, dim=0)[yes_token_id].item()
        no_logp = torch.log_softmax(last_token_logits, dim=0)[no_token_id].item()
        reward = yes_logp - no_logp
        return reward

    def get_rewards_for_steps(self, steps):
        return [self.get_reward_for_text(step) for step in steps]

    def save(self, path):
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        config = {
            "verification_prompt": self.verification_prompt,
        }
        with open(os.path.join(path, "process_reward_config.json"), "w") as f:
            json.dump(config, f)


# ---- seed 004, OutcomeRewardModel reward methods (reference) -------------------------------------
class SeedOutcomeRewardModel(SeedProcessRewardModel):
    def __init__(self, model_name_or_path, device="cpu"):
        super().__init__(model_name_or_path, device)
        self.verification_prompt = "Is this solution correct? Yes or No: "  # seed: evaluation_prompt

    def get_reward_for_problem_solution(self, problem, solution):
        text = f"Problem: {problem}\n\nSolution: {solution}"
        return self.get_reward_for_text(text)


# ---- seed 004, CombinedRewardModel.load body (cls -> CombinedRewardModel, config file name) -------
def seed_combined_load(path, device=None):
    with open(os.path.join(path, "reward_config.json"), "r") as f:
        config = json.load(f)
    model = CombinedRewardModel(device=device)
    model.process_weight = config.get("process_weight", 0.7)
    model.outcome_weight = config.get("outcome_weight", 0.3)
    model.step_delimiter = config.get("step_delimiter", "\n\nStep")
    model.max_steps = config.get("max_steps", None)
    process_path = os.path.join(path, "process_reward_model")
    if os.path.exists(process_path):
        model.process_reward_model = ProcessRewardModel.load(process_path, device)
    outcome_path = os.path.join(path, "outcome_reward_model")
    if os.path.exists(outcome_path):
        model.outcome_reward_model = OutcomeRewardModel.load(outcome_path, device)
    return model


# ---- seed 004, EnsembleRewardModel (verbatim) ----------------------------------------------------
class SeedEnsembleRewardModel(nn.Module):
    """Ensemble of multiple reward models."""

    def __init__(self, model_paths, weights=None):
        super().__init__()
        self.models = [CombinedRewardModel.load(path) for path in model_paths]
        self.weights = weights or [1.0 / len(model_paths)] * len(model_paths)

    def get_reward_for_text(self, text):
        rewards = [model.get_reward_for_text(text) for model in self.models]
        ensemble_reward = sum(w * r for w, r in zip(self.weights, rewards))
        return ensemble_reward


def test_verification_backend_reproduces_seed_numbers(dirs):
    seed_prm = SeedProcessRewardModel(dirs["process"])
    prm = ProcessRewardModel(dirs["process"], prompt_template="Is this step correct? Yes or No: {step}")
    assert prm.get_rewards_for_steps(STEPS) == pytest.approx(seed_prm.get_rewards_for_steps(STEPS), abs=1e-5)
    seed_orm = SeedOutcomeRewardModel(dirs["outcome"])
    orm = OutcomeRewardModel(dirs["outcome"], prompt_template="Is this solution correct? Yes or No: {solution}")
    assert orm.get_reward_for_text(TEXT) == pytest.approx(seed_orm.get_reward_for_text(TEXT), abs=1e-5)
    orm2 = OutcomeRewardModel(dirs["outcome"], prompt_template="Is this solution correct? Yes or No: "
                                                               "Problem: {problem}\n\nSolution: {solution}")
    assert orm2.get_reward_for_problem_solution("Q: 2+3*4", TEXT) == \
        pytest.approx(seed_orm.get_reward_for_problem_solution("Q: 2+3*4", TEXT), abs=1e-5)
    # seed 004's training function ends with ProcessRewardModel.load(output_dir) on what its save() wrote
    seed_prm.save(str(dirs["root"] / "seed_saved"))
    loaded = ProcessRewardModel.load(str(dirs["root"] / "seed_saved"))
    assert loaded.get_rewards_for_steps(STEPS) == pytest.approx(seed_prm.get_rewards_for_steps(STEPS), abs=1e-5)


def test_combined_with_paths_save_load_and_ensemble(dirs):
    # ---- seed 004, "Integration with StepwiseDPOTrainer" (paths changed) ----
    reward_model = CombinedRewardModel(
        process_model_name=dirs["process"],
        outcome_model_name=dirs["outcome"],
        process_weight=0.7,
        outcome_weight=0.3,
    )
    # ---- the calls seed 004's CombinedRewardModel makes ----
    step_rewards = reward_model.process_reward_model.get_rewards_for_steps(STEPS)
    outcome_reward = reward_model.outcome_reward_model.get_reward_for_text(TEXT)
    combined = reward_model.get_reward_for_text(TEXT)
    assert combined == pytest.approx(0.7 * sum(step_rewards) / len(step_rewards) + 0.3 * outcome_reward, abs=1e-6)
    steps, rewards, aggregated = reward_model.extract_and_aggregate_steps(TEXT)
    assert steps == STEPS and rewards == pytest.approx(step_rewards, abs=1e-6)
    assert reward_model.get_rewards_for_batch([TEXT, "Answer: 3\n"])[0] == pytest.approx(combined, abs=1e-6)
    p = OutcomeRewardModel.load(dirs["outcome"]).get_reward_for_problem_solution("Q: 2+3*4", TEXT)
    assert isinstance(p, float)

    path = str(dirs["root"] / "combined")
    reward_model.save(path)
    assert os.path.isdir(os.path.join(path, "process_reward_model"))
    assert os.path.isdir(os.path.join(path, "outcome_reward_model"))
    for loaded in (CombinedRewardModel.load(path), seed_combined_load(path)):
        assert loaded.get_reward_for_text(TEXT) == pytest.approx(combined, abs=1e-6)

    # ---- seed 004, EnsembleRewardModel usage ----
    path2 = str(dirs["root"] / "combined2")
    CombinedRewardModel(process_model_name=dirs["outcome"], outcome_model_name=dirs["process"]).save(path2)
    seed_ens = SeedEnsembleRewardModel([path, path2])
    ens = EnsembleRewardModel([path, path2])
    assert ens.get_reward_for_text(TEXT) == pytest.approx(seed_ens.get_reward_for_text(TEXT), abs=1e-6)
    weighted = EnsembleRewardModel([path, path2], weights=[0.25, 0.75])
    assert weighted.get_reward_for_text(TEXT) == \
        pytest.approx(SeedEnsembleRewardModel([path, path2], weights=[0.25, 0.75]).get_reward_for_text(TEXT), abs=1e-6)


def test_text_only_entry_points_give_the_seed_numbers_by_default(dirs):
    """Seed 004's snippets, with only import lines changed: no prompt_template is passed. The
    text-only entry points ask the seed's questions; score_steps with a problem keeps the
    context-aware question (problem, previous steps, new step)."""
    seed_prm, seed_orm = SeedProcessRewardModel(dirs["process"]), SeedOutcomeRewardModel(dirs["outcome"])
    prm, orm = ProcessRewardModel(dirs["process"]), OutcomeRewardModel(dirs["outcome"])
    for text in (STEPS[0], TEXT):  # a whole multi-line text is one question, as in the seed
        assert prm.get_reward_for_text(text) == pytest.approx(seed_prm.get_reward_for_text(text), abs=1e-4)
    assert prm.get_rewards_for_steps(STEPS) == pytest.approx(seed_prm.get_rewards_for_steps(STEPS), abs=1e-4)
    assert orm.get_reward_for_text(TEXT) == pytest.approx(seed_orm.get_reward_for_text(TEXT), abs=1e-4)
    assert orm.get_reward_for_problem_solution("Q: 2+3*4", TEXT) == \
        pytest.approx(seed_orm.get_reward_for_problem_solution("Q: 2+3*4", TEXT), abs=1e-4)
    # the combined model of seed 004's "Integration" snippet, built from the two folders
    combined = CombinedRewardModel(process_model_name=dirs["process"], outcome_model_name=dirs["outcome"],
                                   process_weight=0.7, outcome_weight=0.3)
    want = 0.7 * sum(seed_prm.get_rewards_for_steps(STEPS)) / len(STEPS) + 0.3 * seed_orm.get_reward_for_text(TEXT)
    assert combined.get_reward_for_text(TEXT) == pytest.approx(want, abs=1e-4)
    # with a problem, steps are judged in context: other questions, so other numbers
    in_context = prm.score_steps(["Q: 2+3*4\n"], [STEPS])[0]
    query = prm.verification_queries("Q: 2+3*4\n", STEPS)[1]
    assert query.startswith("Problem: Q: 2+3*4") and "3*4=12" in query and query.endswith("Yes or No:")
    assert in_context != pytest.approx(seed_prm.get_rewards_for_steps(STEPS), abs=1e-4)
