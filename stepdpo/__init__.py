"""Stepwise DPO: sample step-by-step solutions, rank steps with any reward model, build
step-level preference pairs and optimize the policy on them with DPO (on TRL)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
