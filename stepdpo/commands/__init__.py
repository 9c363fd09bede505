"""The ``stepdpo`` subcommands: one module each, with ``make_parser()`` (a ``trl.TrlParser``)
and ``main(...)``, shared by ``stepdpo <command>`` and ``scripts/<command>.py``.

>>> sorted(COMMANDS)[:3]
['build-pairs', 'decode', 'evaluate']
"""

from __future__ import annotations

import importlib

# name -> (module under stepdpo.commands, one-line summary for `stepdpo --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "train-prm": ("train_prm", "train a process reward model (a score per step) on step-labeled solutions"),
    "train-orm": ("train_orm", "train an outcome reward model (a score per solution)"),
    "train-bt": ("train_bt", "train a Bradley-Terry reward model on preference or step pairs"),
    "label": ("label", "label steps by Monte-Carlo rollouts of a policy (Math-Shepherd style)"),
    "build-pairs": ("build_pairs", "sample from a policy, judge steps, write step-level preference pairs"),
    "train": ("train_stepdpo", "train a policy with Stepwise DPO (on pairs, or building them as it goes)"),
    "evaluate": ("evaluate", "step metrics of a reward model (AUROC, ProcessBench-style F1, ECE) and policy accuracy"),
    "decode": ("decode", "reward-guided decoding: best-of-N or step beam search, to JSONL"),
}


def command_module(name: str):
    """The module implementing command ``name`` (``KeyError`` listing the valid names otherwise)."""
    try:
        module = COMMANDS[name][0]
    except KeyError:
        raise KeyError(f"unknown command {name!r}; valid: {', '.join(COMMANDS)}") from None
    return importlib.import_module(f"stepdpo.commands.{module}")


__all__ = ["COMMANDS", "command_module"]
