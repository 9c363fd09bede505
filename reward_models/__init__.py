"""Reward models that judge reasoning: process (PRM), outcome (ORM), Bradley-Terry, rules,
combined and ensemble scorers, with their trainers, data loaders and step-level evaluation.

Light names (types, step format, protocol) import eagerly; model classes, trainers, loaders
and metrics import on first use, so ``import reward_models`` stays fast.
"""

from importlib import import_module

from reward_models.base import (
    RewardModel,
    aggregate,
    as_reward_model,
    load_reward_model,
    register_reward_model,
)
from reward_models.steps import (
    DEFAULT_STEP_FORMAT,
    MATH_SHEPHERD_FORMAT,
    QWEN_PRM_FORMAT,
    StepFormat,
    TokenizedSteps,
    tokenize_steps,
)
from reward_models.types import DataError, PreferencePair, StepPair, StepSample

__version__ = "0.1.0"

_LAZY = {
    "ProcessRewardModel": "process", "ProcessSettings": "process", "token_convention": "process",
    "OutcomeRewardModel": "outcome", "OutcomeSettings": "outcome",
    "BradleyTerryRewardModel": "bradley_terry", "bradley_terry_loss": "bradley_terry",
    "CombinedRewardModel": "combine", "EnsembleRewardModel": "combine", "ShapedRewardModel": "combine",
    "shaped_reward": "combine",
    "FunctionRewardModel": "rules", "OutcomeInterpolatedRewardModel": "rules", "interpolate_step_rewards": "rules",
    "load_samples": "data", "load_samples_with_stats": "data", "LoadStats": "data", "save_samples": "data",
    "to_trl_stepwise": "data", "detect_format": "data", "FORMATS": "data",
    "evaluate_prm": "evaluation", "PRMEvaluation": "evaluation", "step_metrics": "evaluation", "auroc": "evaluation",
    "first_error_f1": "evaluation", "predict_first_error": "evaluation",
    "expected_calibration_error": "evaluation", "reliability_diagram": "evaluation",
    "best_of_n_accuracy": "evaluation", "majority_vote_accuracy": "evaluation",
    "weighted_majority_vote_accuracy": "evaluation",
    "LikelihoodRewardModel": "likelihood", "ImplicitRewardModel": "likelihood",
    "ImplicitPRMConfig": "implicit_trainer", "ImplicitPRMTrainer": "implicit_trainer",
    "processbench_f1": "evaluation", "rerank_report": "evaluation",
    "PRMConfig": "training", "PRMTrainer": "training", "ORMConfig": "training", "ORMTrainer": "training",
    "BTRewardConfig": "training", "BTRewardTrainer": "training",
    "monte_carlo_labels": "labeling",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"reward_models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'reward_models' has no attribute {name!r}")


__all__ = [
    "DEFAULT_STEP_FORMAT", "DataError", "MATH_SHEPHERD_FORMAT", "PreferencePair", "QWEN_PRM_FORMAT", "RewardModel",
    "StepFormat", "StepPair", "StepSample", "TokenizedSteps", "aggregate", "as_reward_model", "load_reward_model",
    "register_reward_model", "tokenize_steps", *sorted(_LAZY),
]
