"""Pure loss functions of the reward-model trainers, and ``IGNORE_INDEX``.

Tensors in, a scalar loss out: nothing here imports a trainer, ``transformers`` or TRL, so each
function can be tested (and reused) alone. Shapes use ``B`` (batch), ``T`` (tokens), ``N``
(picked positions), ``C`` (classes) and ``V`` (vocabulary). A position whose label is
``IGNORE_INDEX`` (``-100``) takes no part in a loss; a batch without any labeled position gives
a zero loss that keeps the graph (so a step still runs backward).

Used by :class:`~reward_models.prm_trainer.PRMTrainer` (:func:`masked_step_loss`,
:func:`token_pair_logits`, :func:`weighted_next_token_loss`) and
:class:`~reward_models.orm_trainer.ORMTrainer` (:func:`masked_bce_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of 2-way ``logits`` (``[bad, good]``) against ``P(good) = targets``.

    With hard targets (0/1) this equals ordinary cross-entropy; soft targets ``y`` use the
    target distribution ``[1 - y, y]``.

    Args:
        logits (torch.Tensor): class logits ``[bad, good]``, shape ``[N, 2]``.
        targets (torch.Tensor): ``P(good)`` in ``[0, 1]``, shape ``[N]``.

    Returns:
        torch.Tensor: the mean loss, a float32 scalar (shape ``[]``).

    >>> round(soft_cross_entropy(torch.tensor([[0.0, 0.0]]), torch.tensor([1.0])).item(), 4)
    0.6931
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    targets = targets.float()
    return -((1.0 - targets) * logp[:, 0] + targets * logp[:, 1]).mean()


def masked_step_loss(logits: torch.Tensor, labels: torch.Tensor, num_labels: int = 2) -> torch.Tensor:
    """Step loss over positions whose label is not ``-100``.

    Args:
        logits (torch.Tensor): per-token class logits, shape ``[B, T, C]`` (C = 2: ``[bad, good]``;
            C = 3: ratings ``-1, 0, +1`` as classes ``0, 1, 2``).
        labels (torch.Tensor): float, shape ``[B, T]``; ``-100`` everywhere but score positions;
            there ``P(good)`` in ``[0, 1]`` for 2 classes, the class index for 3.
        num_labels (int): 2 (soft cross-entropy) or 3 (hard cross-entropy).

    Returns:
        torch.Tensor: the mean loss over labeled positions, a scalar (shape ``[]``). A batch
        without any labeled position gives a zero loss that keeps the graph.

    Raises:
        ValueError: ``num_labels`` is neither 2 nor 3.
    """
    mask = labels != IGNORE_INDEX
    if not bool(mask.any()):
        return logits.sum() * 0.0
    picked, targets = logits[mask], labels[mask]
    if num_labels == 2:
        return soft_cross_entropy(picked, targets)
    if num_labels == 3:
        return F.cross_entropy(picked.float(), targets.long())
    raise ValueError(f"num_labels must be 2 or 3, got {num_labels}")


def masked_bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of per-token logits where ``labels != -100``.

    Args:
        logits (torch.Tensor): one logit per token, shape ``[B, T]`` or ``[B, T, 1]``.
        labels (torch.Tensor): float targets in ``[0, 1]`` (``-100``: not a target), shape ``[B, T]``.

    Returns:
        torch.Tensor: the mean loss over labeled positions, a scalar (shape ``[]``); zero (graph
        kept) when no position is labeled.

    >>> round(masked_bce_loss(torch.zeros(1, 3), torch.tensor([[-100.0, 1.0, 0.0]])).item(), 4)
    0.6931
    """
    if logits.dim() == 3:
        logits = logits.squeeze(-1)
    mask = labels != IGNORE_INDEX
    if not bool(mask.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[mask].float(), labels[mask].float())


def token_pair_logits(lm_logits: torch.Tensor, positive_id: int, negative_id: int) -> torch.Tensor:
    """Pick the ``[negative, positive]`` token logits from LM logits.

    The order matches the head backend's classes ``[bad, good]``, so the same step loss applies.

    Args:
        lm_logits (torch.Tensor): language-model logits, shape ``[B, T, V]``.
        positive_id (int): the token id meaning "good step".
        negative_id (int): the token id meaning "bad step".

    Returns:
        torch.Tensor: shape ``[B, T, 2]``, ``[..., 0]`` the negative and ``[..., 1]`` the
        positive token's logit.
    """
    return torch.stack([lm_logits[..., negative_id], lm_logits[..., positive_id]], dim=-1)


def weighted_next_token_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean next-token cross-entropy.

    Args:
        logits (torch.Tensor): shape ``[B, T, V]``; position ``t`` predicts token ``t + 1``.
        labels (torch.Tensor): long, shape ``[B, T]``, the token at each position (``-100``: not
            a target).
        weights (torch.Tensor): float, shape ``[B, T]``, each target's weight.

    Returns:
        torch.Tensor: ``sum(w * ce) / sum(w)`` over the targets, a float32 scalar (shape ``[]``);
        zero (graph kept) when there is no target.

    >>> lg = torch.zeros(1, 2, 3); round(weighted_next_token_loss(lg, torch.tensor([[-100, 1]]),
    ...                                                          torch.tensor([[0.0, 1.0]])).item(), 4)
    1.0986
    """
    tgt, w = labels[:, 1:], weights[:, 1:].float()
    keep = tgt != IGNORE_INDEX
    if not keep.any():
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits[:, :-1][keep].float(), tgt[keep], reduction="none")
    return (ce * w[keep]).sum() / w[keep].sum().clamp(min=1e-12)


__all__ = ["IGNORE_INDEX", "masked_bce_loss", "masked_step_loss", "soft_cross_entropy", "token_pair_logits",
           "weighted_next_token_loss"]
