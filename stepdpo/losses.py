"""Preference losses that TRL does not ship, as small pure functions, and the registry that
lets :class:`~stepdpo.trainer.StepwiseDPOTrainer` use them (and yours) by name in ``loss_type``.

TRL's own loss types (``sigmoid``, ``sft``, ``apo_zero``, ``nca_pair``, ...) run inside TRL's
``DPOTrainer`` unchanged. A name registered here is computed by the trainer from the same
sequence log-probs TRL computes (same ``ld_alpha`` weighting, reference log-probs from the
reference model, the LoRA adapter disabled, or the precomputed columns) and added to TRL's loss
with its ``loss_weights`` entry. Per-pair weights apply to it like to TRL's losses.

A loss function takes a :class:`PairLogps` and the trainer's config and returns one loss per pair
(shape ``(B,)``)::

    from stepdpo.losses import register_loss

    def my_loss(lp, args):
        return -torch.nn.functional.logsigmoid(args.beta * lp.margin)

    register_loss("my_loss", my_loss)     # then StepwiseDPOConfig(loss_type=["my_loss"], ...)

>>> import torch
>>> lp = PairLogps(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-1.5]), torch.tensor([-2.0]))
>>> round(float(lp.margin), 3)                                            # (-1 + 1.5) - (-3 + 2)
1.5
>>> round(float(dpop_loss(lp, beta=0.1, lam=50.0)), 4)                    # chosen above the reference: plain DPO
0.621
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairLogps:
    """Summed log-probabilities of a batch of ``B`` pairs (each a tensor of shape ``(B,)``).

    Attributes:
        chosen, rejected: the policy's log-probs of the chosen / rejected completions (with grad).
        ref_chosen, ref_rejected: the reference's log-probs of the same completions (no grad).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor

    @property
    def chosen_logratio(self) -> torch.Tensor:
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratio(self) -> torch.Tensor:
        return self.rejected - self.ref_rejected

    @property
    def margin(self) -> torch.Tensor:
        """DPO's implicit reward margin before ``beta``: ``(c - ref_c) - (r - ref_r)``."""
        return self.chosen_logratio - self.rejected_logratio


def sequence_logps(per_token_logps: torch.Tensor, completion_mask: torch.Tensor,
                   ld_alpha: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected sequence log-probs from per-token log-probs, as TRL 1.16 sums them.

    Args:
        per_token_logps: ``(2B, T)``, rows ``[chosen_0..chosen_B-1, rejected_0..rejected_B-1]``,
            position ``t`` the log-prob of token ``t + 1``.
        completion_mask: ``(2B, T)``, 1 on completion tokens (already shifted by one).
        ld_alpha: LD-DPO (arXiv 2409.06411): tokens beyond the shorter completion of the pair count
            ``ld_alpha`` times; ``None`` sums every completion token.

    >>> lp = torch.tensor([[-1.0, -2.0, -4.0], [-1.0, -3.0, 0.0]])
    >>> m = torch.tensor([[1, 1, 1], [1, 1, 0]])
    >>> [t.tolist() for t in sequence_logps(lp, m)], [t.tolist() for t in sequence_logps(lp, m, 0.5)]
    ([[-7.0], [-4.0]], [[-5.0], [-4.0]])
    """
    mask = completion_mask.to(per_token_logps.dtype)
    if ld_alpha is None:
        logps = (per_token_logps * mask).sum(dim=1)
    else:
        pos = completion_mask.cumsum(dim=1)
        lens = completion_mask.sum(dim=1).long()
        chosen_lens, rejected_lens = lens.chunk(2, dim=0)
        shared = torch.minimum(chosen_lens, rejected_lens)
        shared = torch.cat([shared, shared], dim=0).unsqueeze(1)
        shared_mask = ((pos > 0) & (pos <= shared)).to(per_token_logps.dtype) * mask
        tail_mask = (pos > shared).to(per_token_logps.dtype) * mask
        logps = (per_token_logps * shared_mask).sum(dim=1) + ld_alpha * (per_token_logps * tail_mask).sum(dim=1)
    chosen, rejected = logps.chunk(2, dim=0)
    return chosen, rejected


def dpop_penalty(lp: PairLogps) -> torch.Tensor:
    """``max(0, log pi_ref(y_c) - log pi(y_c))``: how far the chosen completion fell below the reference."""
    return torch.clamp(lp.ref_chosen - lp.chosen, min=0.0)


def dpop_loss(lp: PairLogps, beta: float, lam: float) -> torch.Tensor:
    """DPO-Positive (Pal et al., arXiv 2402.13228, eq. 3), one value per pair::

        -log sigmoid(beta * [(c - ref_c) - (r - ref_r) - lam * max(0, ref_c - c)])

    Plain DPO can raise the margin while the chosen completion's likelihood falls; the penalty
    makes that cost ``lam`` nats of margin per nat lost. ``lam = 0`` is TRL's ``sigmoid`` loss.

    >>> lp = PairLogps(torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-1.5]), torch.tensor([-2.0]))
    >>> round(float(dpop_loss(lp, beta=0.1, lam=0.0)), 4), round(float(dpop_loss(lp, beta=0.1, lam=50.0)), 4)
    (0.6685, 2.5328)
    """
    return -F.logsigmoid(beta * (lp.margin - lam * dpop_penalty(lp)))


LossFn = Callable[[PairLogps, object], torch.Tensor]
_REGISTRY: dict[str, LossFn] = {}


def register_loss(name: str, fn: LossFn, *, overwrite: bool = False) -> None:
    """Make ``name`` usable in ``StepwiseDPOConfig.loss_type``. ``fn(pair_logps, args)`` returns
    a ``(B,)`` tensor of per-pair losses; ``args`` is the trainer's config (``beta``, ...)."""
    if name in TRL_LOSS_TYPES:
        raise ValueError(f"{name!r} is one of TRL's own loss types; pick another name")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a loss named {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = fn


def get_loss(name: str) -> LossFn | None:
    """The registered loss function of ``name``, or None (then it is TRL's, or unknown)."""
    return _REGISTRY.get(name)


def registered_losses() -> list[str]:
    return sorted(_REGISTRY)


# TRL 1.16's DPOTrainer loss types (its _compute_loss branches); anything else must be registered here.
TRL_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")

register_loss("dpop", lambda lp, args: dpop_loss(lp, args.beta, args.dpop_lambda))

__all__ = ["TRL_LOSS_TYPES", "PairLogps", "dpop_loss", "dpop_penalty", "get_loss", "register_loss",
           "registered_losses", "sequence_logps"]
