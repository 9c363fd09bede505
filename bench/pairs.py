"""Pair building: batched candidate sampling vs sampling candidates one by one.

Both sides use the same :class:`~stepdpo.sampling.StepSampler` (random-weight GPT-2 policy,
temperature 1, stop at the step separator, ``max_new_tokens`` per step) on the same contexts
(arithmetic prompts plus gold prefixes of 0-2 steps):

* **ours** - ``sampler.sample_next_steps(prompts, prefixes, k=K)``: every context x K
  candidates in left-padded ``generate`` calls of ``batch_size`` sequences (what
  :func:`~stepdpo.pairs.build_step_pairs` does for each round of sampling).
* **one by one** - ``sampler.sample_next_steps([prompt], [prefix], k=1)`` once per candidate:
  one ``generate`` call per candidate at batch 1.

Throughput is candidates per second; generated tokens are counted on both sides (a random
policy rarely emits the separator early, so both generate about ``max_new_tokens`` each).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from bench.common import clock_for, comparison, for_backbones, interleaved, medians, run_sizes
from bench.scoring import subset

logger = logging.getLogger(__name__)


@dataclass
class PairSize:
    backbone: str
    n_contexts: int
    k: int
    max_new_tokens: int
    baseline_contexts: int  # subset of contexts for the one-by-one loop
    repeats: int
    batch_size: int = 64
    dtype: torch.dtype = torch.float32


def sizes(mode: str, device: torch.device, backbones: list[str] | None = None,
          dtype: torch.dtype = torch.float32) -> list[PairSize]:
    gpu = device.type == "cuda"
    if mode == "smoke":
        out = [PairSize("tiny", 4, 2, 4, 4, 1)]
    elif mode == "quick":
        out = [PairSize("tiny", 32, 4, 16, 32, 5)]
    else:
        out = [PairSize("tiny", 64, 4, 24, 64, 5),
               PairSize("gpt2-100m", 64, 4, 24, 64 if gpu else 8, 3 if gpu else 2)]
    return [dataclasses.replace(sz, dtype=dtype) for sz in for_backbones(out, backbones)]


def make_contexts(n: int, seed: int = 1) -> tuple[list[str], list[list[str]]]:
    """``n`` arithmetic prompts with gold prefixes of 0, 1 or 2 steps.

    >>> p, pre = make_contexts(3)
    >>> [len(x) for x in pre]
    [0, 1, 2]
    """
    from stepdpo.tasks.arith import ArithConfig, make_samples

    samples = make_samples(n, seed, ArithConfig(min_steps=3, max_steps=4))
    return [s.prompt for s in samples], [s.steps[: i % 3] for i, s in enumerate(samples)]


def one_by_one(sampler, prompts, prefixes, k: int):
    return [[sampler.sample_next_steps([p], [pre], k=1)[0][0] for _ in range(k)] for p, pre in zip(prompts, prefixes)]


def run_size(sz: PairSize, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from bench import models
    from reward_models.testing import tiny_tokenizer
    from stepdpo.sampling import StepSampler

    tok = tiny_tokenizer()
    model = models.build("causal_lm", sz.backbone, tok, device=device, dtype=sz.dtype)
    n_params = models.n_params(model)
    prompts, prefixes = make_contexts(sz.n_contexts)
    idx = subset(len(prompts), sz.baseline_contexts)
    bp, bpre = [prompts[i] for i in idx], [prefixes[i] for i in idx]
    sampler = StepSampler(model, tok, max_new_tokens=sz.max_new_tokens, temperature=1.0,
                          batch_size=sz.batch_size, seed=0)
    out: dict[str, Any] = {}
    label = models.label(sz.backbone, model, sz.dtype)
    logger.info("pairs %s: %d contexts x %d candidates, one-by-one on %d", label, len(prompts), sz.k, len(bp))
    calls = {}

    def ours():
        before = sampler.num_generate_calls
        out["ours"] = sampler.sample_next_steps(prompts, prefixes, k=sz.k)
        calls["ours"] = sampler.num_generate_calls - before

    def loop():
        before = sampler.num_generate_calls
        out["loop"] = one_by_one(sampler, bp, bpre, sz.k)
        calls["loop"] = sampler.num_generate_calls - before

    times = interleaved({"batched": ours, "one_by_one": loop}, sz.repeats, device,
                        warmups={"batched": lambda: sampler.sample_next_steps(prompts[:2], prefixes[:2], k=sz.k),
                                 "one_by_one": lambda: one_by_one(sampler, bp[:1], bpre[:1], 1)})
    n_ours, n_loop = len(prompts) * sz.k, len(bp) * sz.k
    tok_ours = sum(len(s.token_ids) for row in out["ours"] for s in row)
    tok_loop = sum(len(s.token_ids) for row in out["loop"] for s in row)
    t = medians(times, device)
    thr = {"batched": n_ours / t["batched"], "one_by_one": n_loop / t["one_by_one"]}
    rows = [comparison(
        f"candidate sampling, {label}", ours=("batched", thr["batched"], "candidates/s"),
        baseline=("one by one", thr["one_by_one"], "candidates/s"), target=4.0,
        notes=(f"{len(prompts)} contexts x {sz.k} candidates, up to {sz.max_new_tokens} new tokens "
               f"(one by one on {len(bp)} contexts); generate calls: {calls['ours']} vs {calls['loop']}; "
               f"tokens per candidate: {tok_ours / n_ours:.1f} vs {tok_loop / n_loop:.1f}"))]
    details = {"backbone": sz.backbone, "params": n_params, "n_contexts": len(prompts), "k": sz.k,
               "max_new_tokens": sz.max_new_tokens, "baseline_contexts": len(bp), "batch_size": sz.batch_size,
               "repeats": sz.repeats, "clock": clock_for(device), "times_s": times, "candidates_per_s": thr, "generate_calls": calls,
               "tokens_per_candidate": {"batched": tok_ours / n_ours, "one_by_one": tok_loop / n_loop}}
    return rows, details


def run(mode: str, device: torch.device, dtype: torch.dtype = torch.float32,
        backbones: list[str] | None = None) -> dict[str, Any]:
    return run_sizes(sizes(mode, device, backbones, dtype), run_size, device)
