"""Reward models that judge reasoning: process (PRM), outcome (ORM), Bradley-Terry, rules,
combined and ensemble scorers, with their trainers, data loaders and step-level evaluation."""

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

__all__ = [
    "DEFAULT_STEP_FORMAT",
    "DataError",
    "MATH_SHEPHERD_FORMAT",
    "PreferencePair",
    "QWEN_PRM_FORMAT",
    "StepFormat",
    "StepPair",
    "StepSample",
    "TokenizedSteps",
    "tokenize_steps",
]
