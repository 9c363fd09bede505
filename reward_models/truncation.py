"""The truncation policy for over-long examples (PRM/ORM training, scoring, DPO pairs).

Long inputs are never cut at an arbitrary token. The policy, in order:

1. An example that fits ``max_length`` is kept whole.
2. **Whole trailing steps** are dropped (never part of a step) until the rest fits after
   the full prompt, as long as at least one *scored* step (a step that carries a label) is
   kept. The dropped steps' labels are counted (``labeled_steps_dropped``); a step's score
   depends only on the prompt and the steps before it, so the kept labels stay exact.
3. If not even the first scored step fits after the full prompt, the prompt is cut **from its
   end, keeping its head** (its first tokens, including any BOS), to make room for the steps
   up to that scored step - but only down to ``min_prompt_tokens`` tokens.
4. Otherwise the example is **dropped** and counted (``examples_dropped``).

Where each policy applies (the counts are logged and exposed as ``trainer.truncation_stats``
and in the training metrics):

* PRM training: every labeled step is scored (or only the last with ``last_step_only``).
* ORM training: the outcome label belongs to the whole completion, so only the last step
  counts as scored: steps are never dropped, only the prompt head rule (3) applies.
* Scoring (``score_steps``/``score``): nothing is truncated; a sequence longer than the
  model's limit raises an error naming the solution (a score of a different text would be a
  silent lie).
* Stepwise DPO pairs: the context (prompt + prefix steps) and both steps are kept whole; a
  pair that does not fit ``max_length`` is dropped and counted (``pairs_dropped_too_long``),
  since a cut context is one the policy never sees. TRL's ``truncation_mode="keep_end"``, when
  asked for explicitly, cuts the context from the left instead (counted as
  ``pairs_context_cut``).

>>> r = truncate_steps(prompt_len=4, step_lens=[3, 3, 3], max_length=10)
>>> r.prompt_keep, r.steps_keep, r.labeled_steps_dropped, r.dropped
(4, 2, 1, False)
>>> r = truncate_steps(prompt_len=8, step_lens=[3, 3], max_length=10, scored=[1], min_prompt_tokens=2)
>>> r.prompt_keep, r.steps_keep, r.prompt_tokens_cut
(4, 2, 4)
>>> truncate_steps(prompt_len=8, step_lens=[3, 3], max_length=10, scored=[1], min_prompt_tokens=5).dropped
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

#: keys of the truncation counters exposed by trainers (``truncation_stats``)
STAT_KEYS = ("examples", "examples_truncated", "examples_dropped", "steps_dropped", "labeled_steps_dropped",
             "prompt_tokens_cut")


@dataclass(frozen=True)
class TruncationResult:
    """What to keep of one example.

    Attributes:
        prompt_keep: how many prompt tokens to keep (the first ones).
        steps_keep: how many leading steps to keep (whole steps).
        dropped: True when the example cannot fit without cutting a scored step.
        steps_dropped / labeled_steps_dropped / prompt_tokens_cut: counts of what was cut.
    """

    prompt_keep: int
    steps_keep: int
    dropped: bool = False
    steps_dropped: int = 0
    labeled_steps_dropped: int = 0
    prompt_tokens_cut: int = 0

    @property
    def truncated(self) -> bool:
        return not self.dropped and (self.steps_dropped > 0 or self.prompt_tokens_cut > 0)


def truncate_steps(prompt_len: int, step_lens: Sequence[int], max_length: int, *,
                   scored: Sequence[int] | None = None, min_prompt_tokens: int = 1) -> TruncationResult:
    """Apply the module's policy to one example given token counts only (pure function).

    Args:
        prompt_len: number of prompt tokens.
        step_lens: tokens of each step's piece (``step + tag + separator``), in order.
        max_length: the longest sequence allowed.
        scored: indices of the steps that carry a label (default: all steps).
        min_prompt_tokens: the prompt is never cut below this many tokens (nor below its
            length when it is shorter).
    """
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    n = len(step_lens)
    scored_set = set(range(n)) if scored is None else {int(i) for i in scored}
    if any(i < 0 or i >= n for i in scored_set):
        raise ValueError(f"scored step indices {sorted(scored_set)} out of range for {n} steps")
    if prompt_len + sum(step_lens) <= max_length:
        return TruncationResult(prompt_len, n)
    # (2) whole trailing steps go first, the full prompt stays
    k, used = 0, prompt_len
    while k < n and used + step_lens[k] <= max_length:
        used += step_lens[k]
        k += 1
    if any(i < k for i in scored_set):
        return TruncationResult(prompt_len, k, steps_dropped=n - k,
                                labeled_steps_dropped=sum(1 for i in scored_set if i >= k))
    # (3) keep the prompt's head, down to min_prompt_tokens, for the steps up to the first scored one
    if scored_set:
        j = min(scored_set)
        budget = max_length - sum(step_lens[: j + 1])
        if budget >= min(prompt_len, max(min_prompt_tokens, 0)) and budget >= 0:
            return TruncationResult(budget, j + 1, steps_dropped=n - j - 1,
                                    labeled_steps_dropped=sum(1 for i in scored_set if i > j),
                                    prompt_tokens_cut=prompt_len - budget)
    # (4) the scored step cannot fit
    return TruncationResult(0, 0, dropped=True, steps_dropped=n, labeled_steps_dropped=len(scored_set))


def count(stats: Counter, result: TruncationResult) -> None:
    """Add one example's outcome to a ``Counter`` keyed by :data:`STAT_KEYS`."""
    stats["examples"] += 1
    if result.dropped:
        stats["examples_dropped"] += 1
        return
    if result.truncated:
        stats["examples_truncated"] += 1
    stats["steps_dropped"] += result.steps_dropped
    stats["labeled_steps_dropped"] += result.labeled_steps_dropped
    stats["prompt_tokens_cut"] += result.prompt_tokens_cut


def empty_stats() -> Counter:
    return Counter({k: 0 for k in STAT_KEYS})


__all__ = ["STAT_KEYS", "TruncationResult", "count", "empty_stats", "truncate_steps"]
