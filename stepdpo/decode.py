"""Reward-guided decoding with any reward model: best-of-N, step-level beam search, voting.

* :func:`best_of_n` - sample N whole solutions per prompt (batched), score all their steps
  in one ``score_steps`` call, keep the best by the aggregated step score (``min``, ``prod``,
  ``last``, ``mean``).
* :func:`step_beam_search` - seed 003's PRM-guided tree decoding: keep ``beam_width``
  partial solutions per prompt; each round expands every live beam with ``expand`` sampled
  next steps (one batched sampling call for all prompts x beams), scores the new steps (one
  batched ``score_steps`` call) and keeps the best paths by aggregated score.
* :func:`vote_answers` - (reward-weighted) majority vote over the answers of N solutions.

All functions take any reward model accepted by ``reward_models.base.as_reward_model`` (a
user object with only ``get_rewards_for_steps`` works) and a sampler with the
:class:`~stepdpo.sampling.StepSampler` interface.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from reward_models.base import aggregate, as_reward_model
from reward_models.evaluation import vote


@dataclass
class Decoded:
    """One decoded solution: its steps, per-step scores, aggregated score and whether it ended."""

    steps: list[str]
    step_scores: list[float]
    score: float
    finished: bool
    candidates: list[dict[str, Any]] = field(default_factory=list, repr=False)


def _agg(scores: Sequence[float], how: str) -> float:
    return aggregate(scores, how) if scores else -math.inf


def best_of_n(sampler, reward_model, prompts: Sequence[str], n: int = 8, max_steps: int = 8,
              aggregation: str = "min", keep_candidates: bool = False) -> list[Decoded]:
    """Best of ``n`` sampled solutions per prompt by aggregated step score.

    Unfinished solutions (no EOS within ``max_steps``) rank below finished ones.
    """
    rm = as_reward_model(reward_model)
    sols = sampler.sample_solution_details(list(prompts), k=n, max_steps=max_steps)
    flat = [(i, s) for i, row in enumerate(sols) for s in row if s.steps]
    scores = rm.score_steps([prompts[i] for i, _ in flat], [s.steps for _, s in flat]) if flat else []
    by_prompt: list[list[Decoded]] = [[] for _ in prompts]
    for (i, s), sc in zip(flat, scores):
        by_prompt[i].append(Decoded(s.steps, sc, _agg(sc, aggregation), s.finished))
    out = []
    for cands in by_prompt:
        if not cands:
            out.append(Decoded([], [], -math.inf, False))
            continue
        best = max(cands, key=lambda d: (d.finished, d.score))
        if keep_candidates:
            best.candidates = [{"steps": d.steps, "score": d.score, "finished": d.finished} for d in cands]
        out.append(best)
    return out


def step_beam_search(sampler, reward_model, prompts: Sequence[str], beam_width: int = 4, expand: int = 4,
                     max_steps: int = 8, aggregation: str = "min") -> list[Decoded]:
    """Step-level beam search guided by a process reward model (see module docstring).

    A beam is finished when the policy ends the solution (EOS) or stops producing steps;
    finished beams keep competing with live ones on their aggregated score.
    """
    if beam_width < 1 or expand < 1:
        raise ValueError("beam_width and expand must be >= 1")
    rm = as_reward_model(reward_model)
    beams: list[list[Decoded]] = [[Decoded([], [], 0.0, False)] for _ in prompts]
    for _ in range(max_steps):
        live = [(i, b) for i, row in enumerate(beams) for b in row if not b.finished]
        if not live:
            break
        samples = sampler.sample_next_steps([prompts[i] for i, _ in live], [b.steps for _, b in live], k=expand)
        children: list[tuple[int, Decoded, list[str]]] = []
        for (i, b), cands in zip(live, samples):
            seen = set()
            for c in cands:
                text = c.text if c.text.strip() else None
                key = (text, c.is_final)
                if key in seen:  # identical samples from one beam add nothing to the search
                    continue
                seen.add(key)
                if text is None:  # the policy ended the solution without a new step
                    children.append((i, Decoded(b.steps, b.step_scores, b.score, True), []))
                else:
                    children.append((i, Decoded(b.steps + [text], [], 0.0, c.is_final or c.truncated),
                                     b.steps + [text]))
        to_score = [(k, ch) for k, ch in enumerate(children) if ch[2]]
        if to_score:
            scores = rm.score_steps([prompts[ch[0]] for _, ch in to_score], [ch[2] for _, ch in to_score])
            for (_, (_, dec, _)), sc in zip(to_score, scores):
                dec.step_scores = sc
                dec.score = _agg(sc, aggregation)
        new_beams: list[list[Decoded]] = [[b for b in row if b.finished] for row in beams]
        for i, dec, _ in children:
            new_beams[i].append(dec)
        beams = [sorted(row, key=lambda d: d.score, reverse=True)[:beam_width] for row in new_beams]
    return [max(row, key=lambda d: (d.finished, d.score)) for row in beams]


def vote_answers(solutions: Sequence[Sequence[Sequence[str]]], answer_fn: Callable[[list[str]], Any],
                 weights: Sequence[Sequence[float]] | None = None) -> list[Any]:
    """Per prompt, the answer with the largest (reward-weighted) vote; None when no answer.

    >>> vote_answers([[["1+1=2", "Answer: 2"], ["Answer: 3"], ["Answer: 2"]]], lambda s: s[-1])
    ['Answer: 2']
    """
    out = []
    for i, sols in enumerate(solutions):
        w = weights[i] if weights is not None else [1.0] * len(sols)
        out.append(vote([answer_fn(list(s)) if s else None for s in sols], w))
    return out


__all__ = ["Decoded", "best_of_n", "step_beam_search", "vote_answers"]
