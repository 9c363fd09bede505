"""K continuations of one long prefix: prefill once (``prefix_cache``) vs today's batched sampling.

Resampling after a first error (pair building) draws K continuations from the same prefix. Both
contenders call ``StepSampler.sample_next_steps(prompts, prefixes, k=K)`` with the same seed on
the same contexts (a few-shot arithmetic prompt plus two gold steps, cut to a fixed number of
tokens):

* **cached prefill** - ``prefix_cache=True`` (the default since issue 17): each distinct context
  of a ``generate`` call is prefilled once and its KV cache copied to its K rows.
* **batched (before)** - ``prefix_cache=False``: the K copies of each context are rows of one
  left-padded ``generate`` call, each prefilled on its own.

Both generate the same tokens: the logits are the same up to rounding, so with the same seed
the samples are the same (the share of identical samples is recorded; in half precision a
rounding difference can flip a draw). Throughput is candidates per second; generated tokens
are counted on both sides (a random policy rarely emits the separator early).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from bench.common import clock_for, comparison, for_backbones, interleaved, medians, run_sizes
from reward_models.steps import StepFormat

logger = logging.getLogger(__name__)


@dataclass
class SamplingSize:
    backbone: str
    n_contexts: int
    k: int
    prefix_tokens: int
    max_new_tokens: int
    repeats: int
    batch_size: int = 64
    dtype: torch.dtype = torch.float32


def sizes(mode: str, device: torch.device, backbones: list[str] | None = None,
          dtype: torch.dtype = torch.float32) -> list[SamplingSize]:
    gpu = device.type == "cuda"
    if mode == "smoke":
        out = [SamplingSize("tiny", 2, 2, 40, 4, 1)]
    elif mode == "quick":
        out = [SamplingSize("tiny", 8, 8, 200, 16, 3)]
    else:
        out = [SamplingSize("tiny", 16, 8, 200, 24, 5),
               SamplingSize("gpt2-100m", 32 if gpu else 4, 8, 200, 32 if gpu else 24, 3 if gpu else 2,
                            batch_size=256 if gpu else 64)]
    return [dataclasses.replace(sz, dtype=dtype) for sz in for_backbones(out, backbones)]


def make_contexts(tokenizer, n: int, prefix_tokens: int, seed: int = 3) -> tuple[list[str], list[list[str]]]:
    """``n`` contexts of exactly ``prefix_tokens`` tokens (piecewise, as the sampler builds them):
    worked examples, then a problem and two of its gold steps.

    >>> from reward_models.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> p, pre = make_contexts(tok, 2, 120)
    >>> [len(StepFormat().tokenize(tok, a, b, complete=False).input_ids) for a, b in zip(p, pre)]
    [120, 120]
    """
    from stepdpo.tasks.arith import ArithConfig, make_samples

    fmt = StepFormat()
    cfg = ArithConfig(min_steps=4, max_steps=5)
    shots = make_samples(40, seed + 1000, cfg)
    examples = "".join(s.prompt + fmt.join(s.steps) + "\n" for s in shots)
    prompts, prefixes = [], []
    for i, s in enumerate(make_samples(n, seed, cfg)):
        start = (37 * i) % (len(examples) // 2)  # each context its own examples
        pre = s.steps[:2]
        lo, hi = 0, len(examples) - start
        while lo < hi:  # the longest example text that keeps the context within prefix_tokens
            mid = (lo + hi + 1) // 2
            text = examples[start:start + mid] + "\n" + s.prompt
            if len(fmt.tokenize(tokenizer, text, pre, complete=False).input_ids) <= prefix_tokens:
                lo = mid
            else:
                hi = mid - 1
        prompts.append(examples[start:start + lo] + "\n" + s.prompt)
        prefixes.append(pre)
    return prompts, prefixes


def run_size(sz: SamplingSize, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from bench import models
    from reward_models.testing import tiny_tokenizer
    from stepdpo.sampling import StepSampler

    tok = tiny_tokenizer()
    model = models.build("causal_lm", sz.backbone, tok, device=device, dtype=sz.dtype)
    label = models.label(sz.backbone, model, sz.dtype)
    prompts, prefixes = make_contexts(tok, sz.n_contexts, sz.prefix_tokens)
    ctx_len = [len(StepFormat().tokenize(tok, p, pre, complete=False).input_ids) for p, pre in zip(prompts, prefixes)]
    logger.info("sampling %s: %d contexts of %d tokens x %d continuations", label, len(prompts),
                sum(ctx_len) // len(ctx_len), sz.k)
    out: dict[str, Any] = {}
    counts: dict[str, tuple[int, int]] = {}

    def contender(name: str, cached: bool, n: int | None = None):
        def call():
            sampler = StepSampler(model, tok, max_new_tokens=sz.max_new_tokens, temperature=1.0,
                                  batch_size=sz.batch_size, seed=0, prefix_cache=cached)
            res = sampler.sample_next_steps(prompts[:n], prefixes[:n], k=sz.k)
            if n is None:
                out[name] = res
                counts[name] = (sampler.num_prefill_rows, sampler.num_rows)
        return call

    times = interleaved({"cached": contender("cached", True), "batched": contender("batched", False)},
                        sz.repeats, device,
                        warmups={"cached": contender("cached", True, 1), "batched": contender("batched", False, 1)})
    n_cand = len(prompts) * sz.k
    tokens = {k: sum(len(s.token_ids) for row in v for s in row) for k, v in out.items()}
    same = sum(a.token_ids == b.token_ids for ra, rb in zip(out["cached"], out["batched"]) for a, b in zip(ra, rb))
    t = medians(times, device)
    thr = {k: n_cand / t[k] for k in t}
    tok_s = {k: tokens[k] / t[k] for k in t}
    prefill = {k: counts[k][0] * max(ctx_len) for k in counts}  # padded rows x width (the last token excepted)
    rows = [comparison(
        f"K={sz.k} continuations of a {max(ctx_len)}-token prefix, {label}",
        ours=("cached prefill", thr["cached"], "candidates/s"),
        baseline=("batched (before)", thr["batched"], "candidates/s"),
        target=2.0 if sz.backbone == "gpt2-100m" and device.type == "cpu" else None,
        notes=(f"{len(prompts)} contexts x {sz.k}, up to {sz.max_new_tokens} new tokens, generate batches of "
               f"{sz.batch_size}; rows prefilled: {counts['cached'][0]} vs {counts['batched'][0]} (of "
               f"{counts['batched'][1]}); new tokens per candidate {tokens['cached'] / n_cand:.1f} vs "
               f"{tokens['batched'] / n_cand:.1f} ({tok_s['cached']:,.0f} vs {tok_s['batched']:,.0f} tokens/s); "
               f"identical samples (same seed): {same} of {n_cand}"))]
    details = {"backbone": sz.backbone, "params": models.n_params(model), "dtype": str(sz.dtype).replace("torch.", ""),
               "n_contexts": len(prompts), "k": sz.k, "context_tokens": ctx_len, "max_new_tokens": sz.max_new_tokens,
               "batch_size": sz.batch_size, "repeats": sz.repeats, "clock": clock_for(device), "times_s": times,
               "candidates_per_s": thr, "new_tokens_per_s": tok_s, "new_tokens": tokens, "prefill_rows": counts,
               "approx_prefill_tokens": prefill, "identical_samples": same, "candidates": n_cand}
    if device.type == "cpu" and sz.dtype == torch.float32 and same < n_cand:
        logger.warning("sampling %s: %d of %d samples differ between cached and batched prefill", label,
                       n_cand - same, n_cand)
    return rows, details


def run(mode: str, device: torch.device, dtype: torch.dtype = torch.float32,
        backbones: list[str] | None = None) -> dict[str, Any]:
    return run_sizes(sizes(mode, device, backbones, dtype), run_size, device)
