"""Stepwise DPO: sample step-by-step solutions, rank steps with any reward model, build
step-level preference pairs and optimize the policy on them with DPO (on TRL).

Names import on first use (``from stepdpo import StepwiseDPOTrainer``), so ``import stepdpo``
does not pull in torch/TRL.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "StepSampler": "sampling", "VLLMStepSampler": "sampling", "SampledStep": "sampling",
    "SampledSolution": "sampling",
    "build_step_pairs": "pairs", "build_outcome_pairs": "pairs", "OutcomePair": "pairs", "PairBuildResult": "pairs", "save_pairs": "pairs", "load_pairs": "pairs",
    "StepwiseDPOConfig": "config",
    "StepwiseDPOTrainer": "trainer", "tokenize_step_pair": "pair_data", "tokenize_solution_pair": "pair_data", "margin_weights": "pair_data",
    "NoPairsError": "trainer", "ErrorPairOptions": "pairs", "register_loss": "losses", "dpop_loss": "losses",
    "PairLogps": "losses",
    "best_of_n": "decode", "step_beam_search": "decode", "vote_answers": "decode",
    "train_sft": "sft", "run_demo": "demo",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"stepdpo.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'stepdpo' has no attribute {name!r}")


__all__ = ["__version__", *sorted(_LAZY)]
