"""Monte-Carlo step labels from policy rollouts (Math-Shepherd style).

For each step ``i`` of a solution, the policy completes the prefix ``steps[:i + 1]`` ``n``
times; a checker says which completed solutions are correct. The step's label is

* ``mode="hard"``: 1 when any rollout reaches a correct answer, else 0;
* ``mode="soft"``: the fraction of rollouts that do (an estimate of the prefix's value).

A prefix that already is a complete correct solution (the checker accepts it as is) gets 1
without rollouts. Rollouts of all prefixes are batched: a policy callable sees many contexts
at once, and the built-in Hugging Face rollout makes one ``generate`` call per batch of
``batch_size`` contexts x ``n`` samples. The output is a list of labeled
:class:`~reward_models.types.StepSample` ready for :class:`~reward_models.training.PRMTrainer`.

>>> def policy(contexts, n):           # a toy policy: always answers 3
...     return [["Answer: 3"] * n for _ in contexts]
>>> def checker(prompt, steps):
...     return steps[-1] == "Answer: 3"
>>> out = monte_carlo_labels([("Q: 1+2\\n", ["1+2=3", "Answer: 3"])], policy, checker, n_rollouts=2)
>>> out[0].labels
[1.0, 1.0]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reward_models.hf_utils import completion_text, pad_left, seeded_sampling
from reward_models.steps import DEFAULT_STEP_FORMAT, StepFormat
from reward_models.types import DataError, StepSample

logger = logging.getLogger(__name__)

Rollout = Callable[[list[str], int], list[list[str]]]
Checker = Callable[[str, list[str]], bool]
MODES = ("hard", "soft")


def aggregate_rollouts(correct: Sequence[bool], mode: str = "hard") -> float:
    """Label of one step from its rollouts' correctness.

    >>> aggregate_rollouts([False, True, False, False], "hard"), aggregate_rollouts([False, True, False, False], "soft")
    (1.0, 0.25)
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if len(correct) == 0:
        raise ValueError("no rollouts to aggregate")
    if mode == "hard":
        return 1.0 if any(correct) else 0.0
    return sum(bool(c) for c in correct) / len(correct)


def _read_inputs(items: Sequence[Any]) -> list[StepSample]:
    out = []
    for i, item in enumerate(items):
        try:
            if isinstance(item, StepSample):
                out.append(item)
            elif isinstance(item, dict):
                d = dict(item)
                if "completions" in d and "steps" not in d:  # TRL stepwise row
                    d["steps"] = d.pop("completions")
                out.append(StepSample(prompt=d.get("prompt"), steps=d.get("steps"), answer=d.get("answer"),
                                      meta=dict(d.get("meta") or {})))
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                out.append(StepSample(prompt=item[0], steps=list(item[1])))
            else:
                raise DataError(f"expected a StepSample, a dict or a (prompt, steps) pair, got {type(item).__name__}")
        except DataError as e:
            raise e.at(row=i) from None
    return out


@dataclass
class _Job:
    sample: int
    step: int
    context: str
    context_ids: list[int] | None = None


class HFRollout:
    """Batched sampling of solution completions with a Hugging Face causal LM.

    One ``generate`` call serves a whole batch: every context is repeated ``n`` times and the
    batch is left-padded by hand (the tokenizer's padding side is never touched). Sampling is
    seeded per call (``seed`` + call index) inside a forked RNG, so results are reproducible
    and the global RNG is left alone.

    Args:
        model, tokenizer: the policy.
        max_new_tokens: length limit of one completion.
        temperature, top_p: sampling settings (``temperature=0`` means greedy).
        seed: base seed.
    """

    def __init__(self, model, tokenizer, *, max_new_tokens: int = 128, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_p, self.seed = max_new_tokens, temperature, top_p, seed
        self.calls = 0
        eos = tokenizer.eos_token_id
        self.eos_id = eos
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)

    def __call__(self, contexts: list[str], n: int) -> list[list[str]]:
        ids = [list(self.tokenizer(c)["input_ids"]) for c in contexts]
        return self.generate_ids(ids, n)

    def generate_ids(self, context_ids: list[list[int]], n: int) -> list[list[str]]:
        """``n`` completion texts for each context given as token ids."""
        if not context_ids:
            return []
        rows = [ids for ids in context_ids for _ in range(n)]
        input_ids, mask = pad_left(rows, self.pad_id)
        greedy = self.temperature == 0
        gen_kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": not greedy,
                                      "pad_token_id": self.pad_id}
        if self.eos_id is not None:
            gen_kwargs["eos_token_id"] = self.eos_id
        if not greedy:
            gen_kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=0)
        try:
            with seeded_sampling(self.model, self.seed + self.calls) as device:
                out = self.model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                          **gen_kwargs)
        finally:
            self.calls += 1
        new = out[:, input_ids.shape[1]:].cpu().tolist()
        texts = [completion_text(self.tokenizer, seq, self.eos_id, self.pad_id)[0] for seq in new]
        return [texts[i * n:(i + 1) * n] for i in range(len(context_ids))]


def monte_carlo_labels(samples: Sequence[Any], policy_rollout: Rollout | tuple[Any, Any] | HFRollout,
                       checker: Checker, n_rollouts: int = 8, mode: str = "hard", batch_size: int = 32, *,
                       step_format: StepFormat | None = None, progress: bool = True,
                       **rollout_kwargs) -> list[StepSample]:
    """Label every step of every solution by rolling out the policy from its prefix.

    Args:
        samples: StepSamples, dicts with ``prompt`` and ``steps`` (or TRL ``completions``), or
            ``(prompt, steps)`` pairs. Existing labels are replaced.
        policy_rollout: a callable ``(contexts: list[str], n) -> list[list[str]]`` returning
            ``n`` completion texts per context (the text after the context, steps laid out
            with ``step_format``), a ``(model, tokenizer)`` pair (sampled with
            :class:`HFRollout`, built with ``rollout_kwargs``), or an :class:`HFRollout`.
        checker: ``checker(prompt, steps) -> bool``: is this complete solution correct?
        n_rollouts: completions per prefix.
        mode: ``"hard"`` (any rollout correct) or ``"soft"`` (fraction correct).
        batch_size: contexts per policy call (a generate batch holds ``batch_size * n`` rows).
        step_format: how steps are laid out in contexts and split from completions.

    Returns:
        New StepSamples with ``labels`` set and ``meta["mc"]`` = per-step correct-rollout counts
        (``None`` for a prefix that was already a complete correct solution).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if n_rollouts < 1 or batch_size < 1:
        raise ValueError("n_rollouts and batch_size must be >= 1")
    fmt = step_format or DEFAULT_STEP_FORMAT
    items = _read_inputs(samples)
    hf: HFRollout | None = None
    if isinstance(policy_rollout, HFRollout):
        hf = policy_rollout
    elif isinstance(policy_rollout, tuple) and len(policy_rollout) == 2:
        hf = HFRollout(*policy_rollout, **rollout_kwargs)
    elif not callable(policy_rollout):
        raise TypeError("policy_rollout must be a callable (contexts, n) -> completions, a (model, tokenizer) pair "
                        "or an HFRollout")
    elif rollout_kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(rollout_kwargs)} for a callable policy")

    counts: list[list[int | None]] = [[None] * s.num_steps for s in items]
    jobs: list[_Job] = []
    for si, s in enumerate(items):
        for i in range(s.num_steps):
            prefix = s.steps[: i + 1]
            try:
                fmt.check_step(s.steps[i], i)
            except DataError as e:
                raise e.at(row=si) from None
            if bool(checker(s.prompt, list(prefix))):
                continue  # already a complete correct solution: label 1, no rollouts needed
            context = s.prompt + fmt.join(prefix, complete=False)
            ids = list(fmt.tokenize(hf.tokenizer, s.prompt, prefix, complete=False).input_ids) if hf else None
            jobs.append(_Job(si, i, context, ids))

    bar = None
    if progress and jobs:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="Monte-Carlo rollouts", unit="prefix")
    try:
        for b in range(0, len(jobs), batch_size):
            batch = jobs[b:b + batch_size]
            if hf is not None:
                completions = hf.generate_ids([j.context_ids for j in batch], n_rollouts)  # type: ignore[misc]
            else:
                completions = policy_rollout([j.context for j in batch], n_rollouts)  # type: ignore[operator]
            _check_completions(completions, len(batch), n_rollouts)
            for job, outs in zip(batch, completions):
                s = items[job.sample]
                prefix = s.steps[: job.step + 1]
                counts[job.sample][job.step] = sum(bool(checker(s.prompt, prefix + fmt.split(text)))
                                                   for text in outs)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()

    out = []
    for s, row in zip(items, counts):
        labels = [1.0 if c is None else aggregate_rollouts([True] * c + [False] * (n_rollouts - c), mode)
                  for c in row]
        meta = {**s.meta, "mc": row, "mc_rollouts": n_rollouts, "mc_mode": mode}
        out.append(StepSample(prompt=s.prompt, steps=list(s.steps), labels=labels, answer=s.answer, meta=meta))
    logger.info("labeled %d solutions (%d prefixes rolled out x %d)", len(out), len(jobs), n_rollouts)
    return out


def monte_carlo_labels_to_file(samples: Sequence[Any], policy_rollout, checker: Checker,
                               output_path: str | os.PathLike, *, chunk_size: int = 32, resume: bool = True,
                               **kwargs) -> list[StepSample]:
    """:func:`monte_carlo_labels` over chunks of ``chunk_size`` solutions, appending each
    chunk's labeled samples to ``output_path`` (JSONL of ``StepSample.to_dict()``) as soon as
    it is done; ``resume=True`` skips finished chunks without duplicates (see
    :mod:`reward_models.incremental`). An :class:`HFRollout` is seeded per chunk, so a resumed
    run gives the same labels as an uninterrupted one.
    """
    from reward_models.incremental import plain_settings, rows_as, run_in_chunks

    items = [s.to_dict() for s in _read_inputs(samples)]
    if isinstance(policy_rollout, tuple) and len(policy_rollout) == 2:
        policy_rollout = HFRollout(*policy_rollout, **{k: kwargs.pop(k) for k in list(kwargs)
                                                       if k in ("max_new_tokens", "temperature", "top_p", "seed")})

    def process(c, chunk):
        if isinstance(policy_rollout, HFRollout):
            policy_rollout.calls = 1000 * c
        out = monte_carlo_labels([StepSample.from_dict(d) for d in chunk], policy_rollout, checker, **kwargs)
        return [s.to_dict() for s in out], {"samples": len(out)}

    rows, _ = run_in_chunks(items, process, output_path, chunk_size=chunk_size, resume=resume,
                            settings=plain_settings(kwargs))
    return rows_as(StepSample.from_dict, rows, output_path)


def _check_completions(completions: Any, n_contexts: int, n: int) -> None:
    if not isinstance(completions, (list, tuple)) or len(completions) != n_contexts:
        got = len(completions) if isinstance(completions, (list, tuple)) else type(completions).__name__
        raise ValueError(f"policy_rollout returned {got} completion lists for {n_contexts} contexts")
    for i, outs in enumerate(completions):
        if not isinstance(outs, (list, tuple)) or len(outs) != n:
            got = len(outs) if isinstance(outs, (list, tuple)) else type(outs).__name__
            raise ValueError(f"policy_rollout returned {got} completions for context {i}, expected {n}")
        for t in outs:
            if not isinstance(t, str):
                raise ValueError(f"policy_rollout returned a {type(t).__name__} for context {i}, expected str")


def to_trl_stepwise(samples: Sequence[StepSample], *, hard: bool = False):
    """Labeled StepSamples -> a ``datasets.Dataset`` in TRL's stepwise format.

    Columns ``prompt``, ``completions`` (the steps) and ``labels`` (floats, or bools with
    ``hard=True``: label >= 0.5).

    >>> ds = to_trl_stepwise([StepSample("Q: 1\\n", ["Answer: 1"], labels=[1.0])], hard=True)
    >>> ds[0]["labels"]
    [True]
    """
    from datasets import Dataset

    rows = []
    for i, s in enumerate(samples):
        if s.labels is None:
            raise DataError("is unlabeled", row=i, field="labels")
        labels = [v >= 0.5 for v in s.labels] if hard else [float(v) for v in s.labels]
        rows.append({"prompt": s.prompt, "completions": list(s.steps), "labels": labels})
    return Dataset.from_list(rows)


__all__ = ["HFRollout", "MODES", "aggregate_rollouts", "monte_carlo_labels", "monte_carlo_labels_to_file",
           "to_trl_stepwise"]
