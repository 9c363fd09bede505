"""Step scoring throughput: batched ``ProcessRewardModel.score_steps`` vs the seed-004 loop.

Data: arithmetic problems with 6 operations (``stepdpo.tasks.arith``), each solution laid out
as 8 steps (6 operation steps, a check step, the answer; 30% carry an injected error).
Backbones (:mod:`bench.models`): the tiny GPT-2 of the tests and a GPT-2-small-sized one (12
layers, 768 wide, about 85 M parameters with the 353-token vocabulary), or any other named
with ``--backbones`` (e.g. a Qwen2-1.5B-shaped model on a GPU); random weights: speed does
not depend on what the weights say.

Contenders, timed interleaved (see :mod:`bench.common`):

* **head, ours** - ``ProcessRewardModel.from_model(token_classifier, backend="head")
  .score_steps(prompts, steps)``: all steps of a solution in one sequence, chunks of
  ``batch_size`` solutions per forward.
* **head, seed-004 loop** - what seed 004's ``get_reward_for_text`` does, once per step: the
  text ``prompt + steps[:j+1]`` tokenized whole, one forward at batch 1, the score read at the
  last token (:func:`seed004_head_loop`).
* **bare forward** - only ``model(input_ids, attention_mask)`` over exactly the padded chunks
  ours builds, already on the device: the practical limit of any scorer.
* **verification, ours** - ``backend="verification"`` as it runs by default: one Yes/No query
  per step, the queries of a solution packed as one token tree that computes the problem and
  the previous steps once (``shared_prefix=True``, :mod:`reward_models.shared_prefix`).
  **verification, per-question batches** - the same backend with ``shared_prefix=False``
  (before issue 17: every query its own sequence, left-padded chunks). **verification,
  seed-004 loop** - the same query texts, one forward per query at batch 1, ``log_softmax`` of
  the last logits (:func:`seed004_verification_loop`). All three compute the same scores
  (checked: ``max_abs_diff``).

Throughput is scored steps per second. A per-item loop's cost is linear in the number of
items, so on slow backbones the loop runs on an evenly spaced subset of the solutions.
The loops' scores are checked against ours (``max_abs_diff``): they do the same work.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from bench.common import (
    check_same_scores,
    clock_for,
    comparison,
    for_backbones,
    interleaved,
    med,
    medians,
    run_sizes,
)

logger = logging.getLogger(__name__)


@dataclass
class ScoringSize:
    backbone: str
    n_solutions: int
    n_steps: int
    baseline_solutions: int  # subset for the batch-1 loops
    verification_solutions: int  # subset for the batched verification contenders
    repeats: int
    batch_size: int = 16
    dtype: torch.dtype = torch.float32


def sizes(mode: str, device: torch.device, backbones: list[str] | None = None,
          dtype: torch.dtype = torch.float32) -> list[ScoringSize]:
    gpu = device.type == "cuda"
    if mode == "smoke":
        out = [ScoringSize("tiny", 8, 4, 8, 8, 1)]
    elif mode == "quick":
        out = [ScoringSize("tiny", 64, 8, 64, 64, 5)] + ([ScoringSize("gpt2-100m", 64, 8, 32, 64, 3)] if gpu else [])
    else:
        out = [ScoringSize("tiny", 256, 8, 256, 256, 5),
               ScoringSize("gpt2-100m", 256, 8, 32 if gpu else 8, 256 if gpu else 8, 3 if gpu else 2)]
    return [dataclasses.replace(sz, dtype=dtype) for sz in for_backbones(out, backbones)]


def make_solutions(n: int, n_steps: int = 8, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """``n`` arithmetic prompts and solutions of exactly ``n_steps`` steps (at most 8).

    >>> p, s = make_solutions(64, 8)
    >>> len(p), {len(x) for x in s}, s[0][-1].startswith("Answer:")
    (64, {8}, True)
    """
    from stepdpo.tasks.arith import ArithConfig, make_samples

    if not 1 <= n_steps <= 8:
        raise ValueError(f"n_steps must be in 1..8, got {n_steps}")
    cfg = ArithConfig(min_steps=6, max_steps=6, ops="+-*", max_value=100_000)
    # a "dropped term" error removes an operation step: keep solutions with all 7 steps
    samples = [s for s in make_samples(2 * n + 16, seed, cfg, error_rate=0.3) if len(s.steps) == 7][:n]
    if len(samples) < n:  # pragma: no cover - the error kinds are drawn evenly
        raise RuntimeError(f"only {len(samples)} full-length solutions for {n}")
    prompts, steps = [], []
    for s in samples:
        ops, answer = s.steps[:-1], s.steps[-1]
        value = answer.split(":", 1)[1].strip()
        full = ops + [f"Check: the last result {value} is the value", answer]
        steps.append(full[len(full) - n_steps:] if n_steps < len(full) else full)
        prompts.append(s.prompt)
    return prompts, steps


def build_models(backbone: str, device: torch.device, dtype: torch.dtype = torch.float32):
    from bench import models
    from reward_models.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    head = models.build("token_classifier", backbone, tok, device=device, dtype=dtype, num_labels=2)
    lm = models.build("causal_lm", backbone, tok, device=device, dtype=dtype)
    return tok, head, lm


# -- the seed-004 baselines ---------------------------------------------------------------------------
@torch.inference_mode()
def seed004_head_loop(model, tokenizer, step_format, prompts, steps) -> list[list[float]]:
    """One forward per step prefix at batch 1 (seed 004's ``get_reward_for_text`` per step):
    the text ``prompt + steps[:j+1]`` tokenized whole, log-odds of the head's last-token logits."""
    dev = next(model.parameters()).device
    out = []
    for p, st in zip(prompts, steps):
        row = []
        for j in range(len(st)):
            text = p + step_format.join(st[: j + 1], complete=False)
            inputs = tokenizer(text, return_tensors="pt").to(dev)
            logits = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
            lp = torch.log_softmax(logits[0, -1].float(), dim=0)
            row.append((lp[1] - lp[0]).item())
        out.append(row)
    return out


@torch.inference_mode()
def seed004_verification_loop(model, tokenizer, prm, prompts, steps) -> list[list[float]]:
    """One Yes/No query per step at batch 1, read as in seed 004: ``log p(Yes) - log p(No)``
    from ``log_softmax`` of the last logits. The query texts are ours (problem + previous
    steps + step), so both sides read the same tokens."""
    dev = next(model.parameters()).device
    yes, no = prm.candidate_ids
    out = []
    for p, st in zip(prompts, steps):
        row = []
        for q in prm.verification_queries(p, st):
            inputs = tokenizer(q, return_tensors="pt").to(dev)
            logits = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
            lp = torch.log_softmax(logits[0, -1].float(), dim=0)
            row.append((lp[yes] - lp[no]).item())
        out.append(row)
    return out


def padded_chunks(tokenizer, step_format, prompts, steps, batch_size: int, pad_id: int, device):
    """The right-padded ``(ids, mask)`` chunks the head backend builds (sorted by length), moved
    to ``device``."""
    from reward_models import hf_utils

    seqs = [step_format.tokenize(tokenizer, p, s).input_ids for p, s in zip(prompts, steps)]
    seqs.sort(key=len)  # as the head backend chunks them: similar lengths together
    out = []
    for idx in hf_utils.chunks(len(seqs), batch_size):
        ids, mask = hf_utils.pad_right([seqs[i] for i in idx], pad_id)
        out.append((ids.to(device), mask.to(device)))
    return out


def per_piece_tokenize(tok, fmt, prompts, steps) -> list[list[int]]:
    """The head backend's layout before ``tokenize_many``: one tokenizer call per prompt and per step piece."""
    out = []
    for p, st in zip(prompts, steps):
        ids = list(tok(p)["input_ids"])
        for i, x in enumerate(st):
            ids += tok(fmt.piece(x, last=i == len(st) - 1), add_special_tokens=False)["input_ids"]
        out.append(ids)
    return out


def bare_forward(model, chunks) -> None:
    with torch.inference_mode():
        for ids, mask in chunks:
            model(input_ids=ids, attention_mask=mask)


def subset(n: int, k: int) -> list[int]:
    """``k`` evenly spaced indices of ``range(n)``.

    >>> subset(10, 3)
    [0, 3, 6]
    """
    k = min(k, n)
    step = n / k
    return [int(i * step) for i in range(k)]


def _max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max((abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)), default=0.0)


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p) - math.log1p(-p)


# -- one backbone ---------------------------------------------------------------------------------------
def run_size(sz: ScoringSize, device: torch.device) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from bench import models
    from reward_models.process import ProcessRewardModel

    tok, head, lm = build_models(sz.backbone, device, sz.dtype)
    n_params = models.n_params(head)
    prompts, steps = make_solutions(sz.n_solutions, sz.n_steps)
    n_scored = sum(len(s) for s in steps)
    prm = ProcessRewardModel.from_model(head, tok, backend="head", batch_size=sz.batch_size)
    vprm = ProcessRewardModel.from_model(lm, tok, backend="verification", batch_size=sz.batch_size)
    vprm_batched = ProcessRewardModel.from_model(lm, tok, backend="verification", batch_size=sz.batch_size,
                                                 shared_prefix=False)
    fmt = prm.step_format
    chunks = padded_chunks(tok, fmt, prompts, steps, sz.batch_size, prm.pad_token_id, device)
    b_idx = subset(len(prompts), sz.baseline_solutions)
    bp, bs = [prompts[i] for i in b_idx], [steps[i] for i in b_idx]
    v_idx = subset(len(prompts), sz.verification_solutions)
    vp, vs = [prompts[i] for i in v_idx], [steps[i] for i in v_idx]
    n_b, n_v = sum(len(s) for s in bs), sum(len(s) for s in vs)
    w = slice(0, 2)  # warm-up on two solutions

    results: dict[str, Any] = {}
    label = models.label(sz.backbone, head, sz.dtype)
    logger.info("scoring %s: %d solutions x %d steps, loops on %d, verification on %d", label, len(prompts),
                sz.n_steps, len(bp), len(vp))
    vprm.score_steps(vp[:1], vs[:1])  # first use: the shared-prefix path checks itself against per-question scores
    t0 = time.perf_counter()
    times = interleaved(
        {"head": lambda: results.__setitem__("head", prm.score_steps(prompts, steps)),
         "bare": lambda: bare_forward(head, chunks),
         "head_loop": lambda: results.__setitem__("head_loop", seed004_head_loop(head, tok, fmt, bp, bs)),
         "verif": lambda: results.__setitem__("verif", vprm.score_steps(vp, vs)),
         "verif_batched": lambda: results.__setitem__("verif_batched", vprm_batched.score_steps(vp, vs)),
         "verif_loop": lambda: results.__setitem__("verif_loop", seed004_verification_loop(lm, tok, vprm, bp, bs))},
        sz.repeats, device,
        warmups={"head": lambda: prm.score_steps(prompts[w], steps[w]),
                 "bare": lambda: bare_forward(head, chunks[:1]),
                 "head_loop": lambda: seed004_head_loop(head, tok, fmt, bp[w], bs[w]),
                 "verif": lambda: vprm.score_steps(vp[w], vs[w]),
                 "verif_batched": lambda: vprm_batched.score_steps(vp[w], vs[w]),
                 "verif_loop": lambda: seed004_verification_loop(lm, tok, vprm, bp[w], bs[w])})
    wall = time.perf_counter() - t0
    shared_info = dict(vprm.last_verification)
    # where the head backend's time goes besides the forward: piecewise tokenization + layout
    now = time.perf_counter if clock_for(device) == "wall" else time.process_time
    tok_times, per_piece_times = [], []
    for _ in range(3):
        t = now()
        laid = fmt.tokenize_many(tok, prompts, steps)  # as the head backend lays solutions out: one batched call
        tok_times.append(now() - t)
        t = now()
        per_piece = per_piece_tokenize(tok, fmt, prompts, steps)  # the layout before: a call per piece
        per_piece_times.append(now() - t)
    if [x.input_ids for x in laid] != per_piece:
        raise AssertionError("batched piecewise tokenization differs from one call per piece")
    tokenize_s, per_piece_s = med(tok_times), med(per_piece_times)

    # same work: the loops' scores equal ours (head probabilities compared as log-odds)
    ours_head = [[_logit(x) for x in results["head"][i]] for i in b_idx]
    head_diff = _max_diff(ours_head, results["head_loop"])
    verif_at = dict(zip(v_idx, results["verif"]))
    common = [k for k, i in enumerate(b_idx) if i in verif_at]
    verif_diff = _max_diff([verif_at[b_idx[k]] for k in common], [results["verif_loop"][k] for k in common])
    shared_vs_batched = _max_diff(results["verif"], results["verif_batched"])

    # tokens through the model per scored step
    padded_tokens = sum(ids.numel() for ids, _ in chunks)
    real_tokens = sum(int(m.sum()) for _, m in chunks)
    loop_tokens = sum(len(tok(p + fmt.join(s[: j + 1], complete=False))["input_ids"])
                      for p, s in zip(bp, bs) for j in range(len(s)))
    v_tokens = sum(len(tok(q)["input_ids"]) for p, s in zip(vp, vs) for q in vprm.verification_queries(p, s))

    t = medians(times, device)
    thr = {"head": n_scored / t["head"], "bare": n_scored / t["bare"], "head_loop": n_b / t["head_loop"],
           "verif": n_v / t["verif"], "verif_batched": n_v / t["verif_batched"], "verif_loop": n_b / t["verif_loop"]}
    tok_ratio = (loop_tokens / n_b) / (padded_tokens / n_scored)
    v_ratio = shared_info["query_tokens"] / shared_info["model_tokens"]
    gpu = device.type == "cuda"
    rows = [
        comparison(f"PRM head scoring, {label}", ours=("batched head", thr["head"], "steps/s"),
                   baseline=("seed-004 loop", thr["head_loop"], "steps/s"), target=20.0,
                   notes=(f"{len(prompts)} solutions x {sz.n_steps} steps (loop on {len(bp)}); tokens through the "
                          f"model per step: loop {loop_tokens / n_b:.1f}, ours {padded_tokens / n_scored:.1f} incl. "
                          f"padding = {tok_ratio:.1f}x fewer; the rest of the gain is batching "
                          f"({thr['head'] / thr['head_loop'] / tok_ratio:.1f}x)"
                          + ("" if gpu else " (on CPU a forward is compute-bound: batching a large model gains "
                             "little, so the ratio tends to the token ratio)"))),
        comparison(f"PRM head vs bare forward, {label}", ours=("batched head", thr["head"], "steps/s"),
                   baseline=("bare forward", thr["bare"], "steps/s"), target=0.85,
                   notes=(f"piecewise tokenization of all solutions takes {tokenize_s * 1e3:.0f} ms of ours "
                          f"{t['head'] * 1e3:.0f} ms ({100 * tokenize_s / t['head']:.0f}%; one tokenizer call per "
                          f"prompt and per step, as before, {per_piece_s * 1e3:.0f} ms for the same ids); the bare forward "
                          f"takes {t['bare'] * 1e3:.0f} ms; padding {100 * (1 - real_tokens / padded_tokens):.0f}% "
                          "of tokens")),
        comparison(f"PRM verification scoring (shared prefix), {label}",
                   ours=("shared-prefix verification", thr["verif"], "steps/s"),
                   baseline=("seed-004 loop", thr["verif_loop"], "steps/s"), target=4.0 if sz.backbone == "tiny" else 3.0,
                   notes=(f"{len(vp)} solutions x {sz.n_steps} steps (loop on {len(bp)}); tokens through the model "
                          f"per step: loop {v_tokens / n_v:.1f} (each question whole), shared prefix "
                          f"{shared_info['model_tokens'] / n_v:.1f} (the problem and previous steps once per "
                          f"solution) = {v_ratio:.2f}x fewer, in {shared_info['forwards']} forwards; same scores "
                          f"(max difference {verif_diff:.1e})"
                          + ("" if gpu else "; on CPU the ratio tends to the token ratio times what batching gains"))),
        comparison(f"PRM verification, shared prefix vs per-question batches, {label}",
                   ours=("shared-prefix verification", thr["verif"], "steps/s"),
                   baseline=("per-question batches (before)", thr["verif_batched"], "steps/s"), target=None,
                   notes=(f"the same backend with shared_prefix=False: every question its own sequence in "
                          f"left-padded chunks of {sz.batch_size}; the same scores (max difference "
                          f"{shared_vs_batched:.1e})")),
    ]
    diffs = {"head_vs_loop_logodds": head_diff, "verification_vs_loop_logodds": verif_diff,
             "verification_shared_vs_batched_logodds": shared_vs_batched}
    details = {"backbone": sz.backbone, "params": n_params, "dtype": str(sz.dtype).replace("torch.", ""),
               "n_solutions": len(prompts), "n_steps": sz.n_steps,
               "baseline_solutions": len(bp), "verification_solutions": len(vp), "batch_size": sz.batch_size,
               "repeats": sz.repeats, "clock": clock_for(device), "times_s": times, "steps_per_s": thr,
               "tokenize_s": tokenize_s, "tokenize_per_piece_s": per_piece_s,
               "tokens_per_step": {"ours_padded": padded_tokens / n_scored, "ours_real": real_tokens / n_scored,
                                   "head_loop": loop_tokens / n_b, "verification_query": v_tokens / n_v,
                                   "verification_shared": shared_info["model_tokens"] / n_v},
               "verification_shared": shared_info, "max_abs_diff": diffs, "wall_s": wall}
    details["same_scores"] = check_same_scores(diffs, sz.dtype)
    if sz.dtype == torch.float32 and shared_vs_batched > 1e-4:  # the bar for the shared-prefix path
        raise AssertionError(f"shared-prefix scores differ from per-question scores by {shared_vs_batched}")
    if shared_info["path"] != "shared_prefix":  # the first-use check fell back (logged): say so in the table
        logger.warning("scoring %s: the shared-prefix path was not used: %s", label, shared_info)
        rows[2]["notes"] = rows[3]["notes"] = ("NOTE: the model failed the shared-prefix check at first use, so "
                                               "'ours' ran one sequence per question; " + rows[2]["notes"])
    return rows, details


def run(mode: str, device: torch.device, dtype: torch.dtype = torch.float32,
        backbones: list[str] | None = None) -> dict[str, Any]:
    return run_sizes(sizes(mode, device, backbones, dtype), run_size, device)
