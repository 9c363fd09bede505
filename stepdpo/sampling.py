"""Step-wise sampling from a policy: K next steps, or K whole solutions, cut at the step separator.

Every context is tokenized piecewise by the :class:`~reward_models.steps.StepFormat`
(``fmt.tokenize(tok, prompt, prefix, complete=False)``): the ids the policy generates from
are exactly the ids :class:`~stepdpo.trainer.StepwiseDPOTrainer` trains on. All contexts of a
call (prompts x K) go through one batched, left-padded ``generate`` call (chunked by
``batch_size``); each sequence stops at the separator (``stop_strings``) or at EOS. When
several rows of a call sample from the same context (K continuations of one prefix), the
context is prefilled once and its KV cache is copied to those rows (``prefix_cache=True``,
the default): the same logits, so the same samples for the same seed, without K prefills.

* :class:`StepSampler` - the transformers backend (any ``AutoModelForCausalLM``).
* :class:`VLLMStepSampler` - the same interface on vLLM (prefix caching on); constructing it
  without vLLM installed raises an ``ImportError`` that says so.

>>> from reward_models.testing import tiny_tokenizer, tiny_causal_lm
>>> tok = tiny_tokenizer()
>>> sampler = StepSampler(tiny_causal_lm(tok), tok, max_new_tokens=4, seed=0)
>>> steps = sampler.sample_next_steps(["Q: 1+2\\n"], k=2)
>>> len(steps), len(steps[0]), steps[0][0].context_ids == tok("Q: 1+2\\n")["input_ids"]
(1, 2, True)

Why one ~590-line module: the transformers and vLLM samplers share the interface, the step
cutting and the prefix-cache prefill that make their samples the trainer's ids.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from reward_models.hf_utils import pad_left, seeded_sampling
from reward_models.steps import DEFAULT_STEP_FORMAT, StepFormat
from reward_models.types import DataError

logger = logging.getLogger(__name__)


@dataclass
class SampledStep:
    """One sampled next step.

    Attributes:
        text: the step without its separator (and without the tag); may be ``""`` when the
            policy ended the solution right away (``is_final`` then True).
        is_final: generation ended with EOS (the step, if any, ends the solution).
        truncated: ``max_new_tokens`` was reached before a separator or EOS.
        context_ids: the ids generated from (prompt + prefix steps, built piecewise).
        token_ids: the generated ids up to and including the separator (or EOS), as sampled.
    """

    text: str
    is_final: bool
    truncated: bool
    context_ids: list[int]
    token_ids: list[int]


@dataclass
class SampledSolution:
    """A whole sampled solution: ``steps`` and whether the policy ended it (EOS)."""

    steps: list[str]
    finished: bool
    truncated: bool = False
    meta: dict = field(default_factory=dict)


def pick_device(model=None) -> torch.device:
    """The model's device when it has parameters, else cuda when available, else cpu."""
    if model is not None:
        try:
            return next(model.parameters()).device
        except (StopIteration, AttributeError):
            pass
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


left_pad = pad_left  # (input_ids, attention_mask), padded on the left: reward_models.hf_utils.pad_left


def cut_step(text: str, step_format: StepFormat, ended_with_eos: bool, hit_limit: bool) -> tuple[str, bool, bool]:
    """Turn generated text into ``(step_text, is_final, truncated)``.

    The text is cut at the first separator; a step with no separator is final when EOS ended
    it and truncated when the token limit did. A trailing scoring tag is removed.

    >>> fmt = StepFormat(separator="\\n")
    >>> cut_step("3+4=7\\n9", fmt, False, False), cut_step("Answer: 7", fmt, True, False)
    (('3+4=7', False, False), ('Answer: 7', True, False))
    """
    sep = step_format.separator
    if sep in text:
        step, is_final, truncated = text.split(sep, 1)[0], False, False
    else:
        step, is_final, truncated = text, ended_with_eos, not ended_with_eos and hit_limit
    tag = step_format.tag
    if tag is not None:
        step = step[: -len(tag)] if step.endswith(tag) else step.replace(tag, "")
    return step, is_final, truncated


def step_piece_ids(tokenizer, step_format: StepFormat, prompt: str, prefix: Sequence[str], step: str,
                   is_final: bool = False) -> tuple[list[int], list[int]]:
    """``(context_ids, step_ids)`` of one step after ``prompt + prefix``, built piecewise: the
    context is what the sampler generates from; the step's ids are its piece (``step + tag +
    separator``, or the final-step layout) plus EOS when ``is_final``. The trainer tokenizes pairs
    with this, so scores computed from these ids are the log-probs it trains.

    >>> from reward_models.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> ctx, ids = step_piece_ids(tok, DEFAULT_STEP_FORMAT, "Q: 1+2\\n", [], "1+2=3")
    >>> ctx == tok("Q: 1+2\\n")["input_ids"], tok.decode(ids)
    (True, '1+2=3\\n')
    """
    prefix = list(prefix)
    ctx = step_format.tokenize(tokenizer, prompt, prefix, complete=False).input_ids
    enc = step_format.tokenize(tokenizer, prompt, prefix + [step], complete=bool(is_final))
    start, end = enc.spans[-1]
    assert enc.input_ids[:start] == ctx, "piecewise tokenization must keep the context ids"
    ids = enc.input_ids[start:end]
    if is_final:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token to end a final step with")
        ids = ids + [tokenizer.eos_token_id]
    return ctx, ids


def _apply_step(sol: SampledSolution, text: str, is_final: bool, truncated: bool) -> bool:
    """Add one sampled step to a solution; returns whether the solution goes on."""
    if text.strip():
        sol.steps.append(text)
    if is_final:
        sol.finished = True
        return False
    if truncated or not text.strip():
        sol.truncated = truncated
        sol.meta["stopped"] = "truncated" if truncated else "empty_step"
        return False
    return True


class _BaseSampler:
    """Shared logic: contexts, solution rounds. Subclasses implement :meth:`_generate`."""

    tokenizer = None
    step_format: StepFormat = DEFAULT_STEP_FORMAT
    seed: int | None = None
    _calls = 0
    # batched generate calls (not one per candidate), tokens generated (padding not counted) and seconds
    # spent in generate: for tests, benchmarks and the trainer's sampling throughput (counted per instance)
    num_generate_calls = 0
    num_new_tokens = 0
    generate_seconds = 0.0

    def _count_call(self, start: float, new_tokens: int) -> None:
        """Count one generate call that began at ``start`` (``time.perf_counter``) and generated ``new_tokens``."""
        self.generate_seconds += time.perf_counter() - start
        self.num_new_tokens += new_tokens
        self.num_generate_calls += 1

    def _next_seed(self) -> int | None:
        """The seed of the next call (``seed + n`` for call ``n``; None when unseeded)."""
        seed = None if self.seed is None else self.seed + self._calls
        self._calls += 1
        return seed

    def seed_as_call(self, n: int) -> None:
        """Seed the next call as call number ``n`` (``seed + n``), e.g. to give each chunk of a
        resumable job its own fixed seeds."""
        self._calls = n

    def context_ids(self, prompt: str, prefix: Sequence[str] = ()) -> list[int]:
        """Ids of ``prompt + prefix`` exactly as the trainer builds them (piecewise)."""
        return self.step_format.tokenize(self.tokenizer, prompt, list(prefix), complete=False).input_ids

    def _generate(self, contexts: list[list[int]], k: int) -> list[list[SampledStep]]:
        raise NotImplementedError

    def sample_next_steps(self, prompts: Sequence[str], prefixes: Sequence[Sequence[str]] | None = None,
                          k: int = 4) -> list[list[SampledStep]]:
        """Sample ``k`` next steps after each ``prompt + prefix``: one list of ``k`` per prompt."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        prefixes = [[] for _ in prompts] if prefixes is None else [list(p) for p in prefixes]
        if len(prefixes) != len(prompts):
            raise ValueError(f"got {len(prefixes)} prefixes for {len(prompts)} prompts")
        if not prompts:
            return []
        contexts = [self.context_ids(p, pre) for p, pre in zip(prompts, prefixes)]
        return self._generate(contexts, k)

    def sample_solution_details(self, prompts: Sequence[str], k: int = 4, max_steps: int = 8,
                                prefixes: Sequence[Sequence[str]] | None = None) -> list[list[SampledSolution]]:
        """``k`` solutions per prompt, continued from ``prefixes`` when given (the prefix is
        included in the returned steps), at most ``max_steps`` rounds of steps each.

        Step by step: one batched generate call per round, each context tokenized piecewise.
        Samplers that can (see :meth:`StepSampler._whole_solution_rounds`) first generate whole
        solutions in one call and keep every step whose ids are exactly the piecewise ids, then
        continue step by step only where they are not."""
        prefixes = [[] for _ in prompts] if prefixes is None else [list(p) for p in prefixes]
        if len(prefixes) != len(prompts):
            raise ValueError(f"got {len(prefixes)} prefixes for {len(prompts)} prompts")
        sols = [[SampledSolution(steps=list(pre), finished=False) for _ in range(k)] for pre in prefixes]
        active = [(i, j, max_steps) for i in range(len(prompts)) for j in range(k)] if max_steps > 0 else []
        active = self._whole_solution_rounds(prompts, sols, active)
        while active:
            outs = self.sample_next_steps([prompts[i] for i, _, _ in active],
                                          [sols[i][j].steps for i, j, _ in active], k=1)
            active = [(i, j, left - 1) for (i, j, left), (step,) in zip(active, outs)
                      if _apply_step(sols[i][j], step.text, step.is_final, step.truncated) and left > 1]
        return sols

    def _whole_solution_rounds(self, prompts, sols, active):
        """Hook: advance solutions by generating many steps at once; returns what is left to do
        step by step as ``(prompt index, sample index, rounds left)``. Default: nothing."""
        return active

    def sample_solutions(self, prompts: Sequence[str], k: int = 4, max_steps: int = 8) -> list[list[list[str]]]:
        """``k`` full solutions per prompt, each a list of steps."""
        return [[s.steps for s in row] for row in self.sample_solution_details(prompts, k=k, max_steps=max_steps)]


class StepSampler(_BaseSampler):
    """Step-wise sampling with ``transformers`` ``generate`` (batched, left-padded, seeded).

    Args:
        model: a causal LM (its training mode is restored after sampling).
        tokenizer: its tokenizer (never mutated: batches are left-padded by hand).
        step_format: the :class:`StepFormat`; its separator is the stop string.
        max_new_tokens: limit per step.
        temperature, top_p: sampling settings (``temperature=0`` means greedy).
        batch_size: sequences per ``generate`` call.
        seed: makes every call deterministic (call ``n`` uses ``seed + n``) without touching
            the global RNG state.
        whole_solutions: generate whole solutions in one call (one prefill instead of one per
            step: several times faster) and keep each step whose ids equal its piecewise ids,
            which is what step-by-step sampling would have generated from the same context;
            where they differ (a token spanning a step boundary), the solution goes on step by
            step from its last exact step. Used when the separator is a single token and there is
            no scoring tag; greedy decoding gives the same solutions either way.
        prefix_cache: prefill each distinct context once (see the module docstring).
        synced_gpus: passed to ``generate`` when not None. ``transformers`` turns it on by itself
            under DeepSpeed ZeRO-3 and FSDP with several processes, which makes every ``generate``
            call a collective; :class:`~stepdpo.trainer.StepwiseDPOTrainer` samples with the
            parameters gathered and sets it False, so each process makes the calls its own prompts
            need.
    """

    def __init__(self, model, tokenizer, step_format: StepFormat | None = None, *, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64, seed: int | None = None,
                 whole_solutions: bool = True, prefix_cache: bool = True, synced_gpus: bool | None = None):
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("need temperature >= 0 and 0 < top_p <= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.step_format = step_format or DEFAULT_STEP_FORMAT
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.seed = seed
        self._calls = 0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.prefix_cache = prefix_cache
        self.synced_gpus = synced_gpus
        self.num_prefill_rows = self.num_rows = 0  # rows prefilled vs rows sampled (prefix_cache shares prefills)
        self.whole_solutions = whole_solutions
        self.num_steps_whole = self.num_steps_stepwise_fallback = 0  # steps kept from whole-solution generation
        self._sep = _separator_tokens(tokenizer, self.step_format) if whole_solutions else None

    @torch.no_grad()
    def _whole_solution_rounds(self, prompts, sols, active):
        if self._sep is None or self.eos_id is None or not active:
            return active
        ending, odd = self._sep
        contexts = [self.context_ids(prompts[i], sols[i][j].steps) for i, j, _ in active]
        rest = []
        with seeded_sampling(self.model, self._next_seed()) as device:
            for start in range(0, len(active), self.batch_size):
                chunk = active[start:start + self.batch_size]
                gens = self._generate_whole(contexts[start:start + self.batch_size], [c[2] for c in chunk],
                                            ending, odd, device)
                for (i, j, left), gen in zip(chunk, gens):
                    left = self._parse_whole(prompts[i], sols[i][j], gen, left, ending, odd)
                    if left:
                        rest.append((i, j, left))
        return rest

    def _generate_whole(self, batch, rounds, ending, odd, device) -> list[list[int]]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        ids, mask = left_pad(batch, self.pad_id)
        width = ids.shape[1]
        limit = torch.tensor(rounds, device=device)
        end_ids = torch.tensor(sorted(ending), device=device)
        odd_ids = torch.tensor(sorted(odd), device=device, dtype=torch.long)
        per_step = self.max_new_tokens

        class Rounds(StoppingCriteria):
            """Stop a row after its last allowed step, a too-long step, or a token spanning a boundary."""

            def __call__(self, input_ids, scores, **kw):
                gen = input_ids[:, width:]
                is_end = torch.isin(gen, end_ids)
                pos = torch.arange(gen.shape[1], device=gen.device).expand_as(gen)
                last = torch.where(is_end, pos, torch.full_like(pos, -1)).max(dim=1).values
                since = gen.shape[1] - 1 - last
                return (is_end.sum(dim=1) >= limit) | torch.isin(gen, odd_ids).any(dim=1) | (since >= per_step)

        greedy = self.temperature == 0
        kwargs = dict(do_sample=not greedy, max_new_tokens=per_step * max(rounds), pad_token_id=self.pad_id,
                      eos_token_id=self.eos_id, stopping_criteria=StoppingCriteriaList([Rounds()]))
        if not greedy:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=0)
        out = self._generate_call(batch, ids, mask, device, kwargs)
        return out[:, width:].tolist()

    def _parse_whole(self, prompt, sol, gen, left, ending, odd) -> int:
        """Replay step-by-step sampling on ``gen``: apply each step that step-by-step generation
        would have produced from the same piecewise context; returns the rounds left to sample
        step by step (0 when the solution is done)."""
        sep, pos = self.step_format.separator, 0
        while left:
            seg, end = [], None
            while pos < len(gen):
                t = gen[pos]
                pos += 1
                if t == self.eos_id:
                    end = "eos"
                    break
                if t in odd:
                    break  # a token with text on both sides of a step boundary
                seg.append(t)
                if t in ending:
                    end = "sep"
                    break
                if len(seg) >= self.max_new_tokens:
                    end = "limit"
                    break
            if end is None:  # generation stopped early, or a token spans a step boundary
                self.num_steps_stepwise_fallback += 1
                return left
            text = self.tokenizer.decode(seg, skip_special_tokens=False)
            if end == "sep":
                text = text[: -len(sep)]
                if text.strip():
                    try:
                        exact = step_piece_ids(self.tokenizer, self.step_format, prompt, sol.steps, text)[1] == seg
                    except (DataError, AssertionError):
                        exact = False
                    if not exact:  # step-by-step generation would have gone on from other ids
                        self.num_steps_stepwise_fallback += 1
                        return left
            self.num_steps_whole += 1
            left -= 1
            if not _apply_step(sol, text, end == "eos", end == "limit"):
                return 0
        return 0

    @torch.no_grad()
    def _generate(self, contexts: list[list[int]], k: int) -> list[list[SampledStep]]:
        flat = [c for c in contexts for _ in range(k)]
        results: list[SampledStep] = []
        with seeded_sampling(self.model, self._next_seed()) as device:
            for start in range(0, len(flat), self.batch_size):
                results.extend(self._generate_chunk(flat[start:start + self.batch_size], device))
        return [results[i * k:(i + 1) * k] for i in range(len(contexts))]


    @torch.no_grad()
    def step_logprobs(self, prompts: Sequence[str], prefixes: Sequence[Sequence[str]], steps: Sequence[str],
                      finals: Sequence[bool] | None = None) -> list[float]:
        """The policy's log-probability of each ``step`` after ``prompt + prefix`` (summed over the
        step's tokens as the trainer tokenizes them, EOS included when ``finals[i]``), batched."""
        finals = [False] * len(steps) if finals is None else list(finals)
        if not len(prompts) == len(prefixes) == len(steps) == len(finals):
            raise ValueError("prompts, prefixes, steps and finals must have the same length")
        rows = [step_piece_ids(self.tokenizer, self.step_format, p, pre, st, fin)
                for p, pre, st, fin in zip(prompts, prefixes, steps, finals)]
        device = pick_device(self.model)
        was_training = self.model.training
        self.model.eval()
        out: list[float] = []
        try:
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                seqs = [ctx + ids for ctx, ids in chunk]
                width = max(map(len, seqs))
                ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                target = torch.zeros((len(seqs), width), dtype=torch.bool)
                for r, ((ctx, _piece), seq) in enumerate(zip(chunk, seqs)):  # right padding: positions unchanged
                    ids[r, : len(seq)] = torch.tensor(seq)
                    mask[r, : len(seq)] = 1
                    target[r, len(ctx): len(seq)] = True
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
                lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None].to(device))[..., 0]
                out.extend((lp * target[:, 1:].to(device)).sum(dim=1).tolist())
        finally:
            self.model.train(was_training)
        return out

    def _generate_call(self, batch: list[list[int]], ids: torch.Tensor, mask: torch.Tensor, device, kwargs):
        """``model.generate`` on one left-padded chunk, each distinct context prefilled once when
        ``prefix_cache`` is on and some context repeats."""
        extra = None
        if self.prefix_cache:
            try:
                extra = shared_prefill(self.model, batch, ids, mask, device)
            except (AttributeError, NotImplementedError, RuntimeError, TypeError, ValueError) as e:
                self.prefix_cache = False  # e.g. a cache type that cannot be copied row by row: plain generate
                logger.warning("prefix_cache: prefilling %s once per context failed (%s: %s); prefilling every row",
                               type(self.model).__name__, type(e).__name__, str(e)[:200])
        self.num_rows += len(batch)
        self.num_prefill_rows += len(batch) if extra is None else len({tuple(c) for c in batch})
        if self.synced_gpus is not None:
            kwargs = {**kwargs, "synced_gpus": self.synced_gpus}
        start = time.perf_counter()
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs, **(extra or {}))
        # (counting the tokens syncs a GPU: the time is the call's)
        self._count_call(start, int((out[:, ids.shape[1]:] != self.pad_id).sum()))
        return out

    def _generate_chunk(self, batch: list[list[int]], device) -> list[SampledStep]:
        ids, mask = left_pad(batch, self.pad_id)
        greedy = self.temperature == 0
        kwargs = dict(do_sample=not greedy, max_new_tokens=self.max_new_tokens, pad_token_id=self.pad_id,
                      eos_token_id=self.eos_id, stop_strings=self.step_format.stop_strings,
                      tokenizer=self.tokenizer)
        if not greedy:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=0)
        out = self._generate_call(batch, ids, mask, device, kwargs)
        new = out[:, ids.shape[1]:].tolist()
        steps = []
        sep = self.step_format.separator
        for ctx, gen in zip(batch, new):
            ended = False
            if self.eos_id is not None and self.eos_id in gen:
                body = gen[: gen.index(self.eos_id)]
                # EOS after the separator is padding (pad == eos tokenizers): the step stopped at the separator
                ended = sep not in self.tokenizer.decode(body, skip_special_tokens=False)
                gen = body + [self.eos_id] if ended else body
            while not ended and gen and gen[-1] == self.pad_id:  # padding after a sequence stopped early
                gen = gen[:-1]
            body = gen[:-1] if ended else gen
            text = self.tokenizer.decode(body, skip_special_tokens=False)
            hit_limit = not ended and len(gen) >= self.max_new_tokens
            step, is_final, truncated = cut_step(text, self.step_format, ended, hit_limit)
            steps.append(SampledStep(text=step, is_final=is_final, truncated=truncated, context_ids=list(ctx),
                                     token_ids=gen))
        return steps


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def cache_argument(model) -> str | None:
    """The name under which ``model.forward`` (and ``generate``) takes a KV cache: ``"cache"``
    (transformers >= 5.2x) or ``"past_key_values"``; None when it takes neither."""
    try:
        params = inspect.signature(_base_model(model).forward).parameters
    except (TypeError, ValueError):
        return None
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def shared_prefill(model, batch: Sequence[Sequence[int]], ids: torch.Tensor, mask: torch.Tensor,
                   device) -> dict | None:
    """Prefill each distinct context of a left-padded chunk once, and copy its KV cache to every
    row that samples from it.

    ``ids``/``mask`` are the chunk as :func:`left_pad` builds it from ``batch``. The contexts
    without their last token go through one forward (one row per distinct context, the
    position ids ``generate`` would use); the cache is then expanded to the chunk's rows, and
    ``generate`` given the full ids and this cache runs only the last token before sampling.
    Returns the ``generate`` keyword argument holding the cache, or None when no context
    repeats or the model's cache cannot be expanded (plain ``generate`` then)."""
    index: list[int] = []  # per row, its distinct context
    first_row: list[int] = []  # per distinct context, its first row
    seen: dict[tuple[int, ...], int] = {}
    for r, c in enumerate(batch):
        key = tuple(c)
        if key not in seen:
            seen[key] = len(first_row)
            first_row.append(r)
        index.append(seen[key])
    if len(first_row) == len(batch) or ids.shape[1] < 2:
        return None
    name = cache_argument(model)
    gen_cfg = getattr(model, "generation_config", None)
    if name is None or getattr(gen_cfg, "cache_implementation", None) not in (None, "dynamic") \
            or getattr(getattr(_base_model(model), "config", None), "is_encoder_decoder", False):
        return None
    rows = torch.tensor(first_row)
    u_ids, u_mask = ids[rows, :-1], mask[rows, :-1]
    pos = (u_mask.cumsum(-1) - 1).clamp(min=0)  # as generate derives them from the mask
    out = model(input_ids=u_ids.to(device), attention_mask=u_mask.to(device), position_ids=pos.to(device),
                use_cache=True)
    cache = getattr(out, "cache", None)
    cache = cache if cache is not None else getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "reorder_cache"):
        return None
    cache.reorder_cache(torch.tensor(index, device=device))
    return {name: cache}


_SEPARATOR_CACHE: dict[tuple[int, int, str], tuple[set[int], set[int]] | None] = {}


def _separator_tokens(tokenizer, step_format: StepFormat) -> tuple[set[int], set[int]] | None:
    """``(ending ids, odd ids)``: the tokens whose text ends with the separator (which occurs in
    it once: the separator itself, or e.g. ``".\\n"``), and the other tokens that contain it.
    Whole-solution generation finds step boundaries by these ids. None when there is a scoring
    tag (boundaries are then not a matter of single tokens)."""
    if step_format.tag is not None:
        return None
    key = (id(tokenizer), len(tokenizer), step_format.separator)
    if key not in _SEPARATOR_CACHE:
        sep = step_format.separator
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        ending, odd = set(), set()
        for i in range(len(tokenizer)):
            if i in special:
                continue
            text = tokenizer.decode([i], skip_special_tokens=False)
            if sep in text:
                (ending if text.endswith(sep) and text.count(sep) == 1 else odd).add(i)
        _SEPARATOR_CACHE[key] = (ending, odd) if ending else None
    return _SEPARATOR_CACHE[key]


class VLLMStepSampler(_BaseSampler):
    """The :class:`StepSampler` interface on vLLM (prefix caching on; one ``generate`` per call).

    Args:
        model: a model path/name or an existing ``vllm.LLM``.
        tokenizer: the Hugging Face tokenizer (contexts are tokenized piecewise with it).
        step_format, max_new_tokens, temperature, top_p, seed: as in :class:`StepSampler`.
        llm_kwargs: extra ``vllm.LLM`` arguments (``gpu_memory_utilization``, ``dtype``, ...).
    """

    def __init__(self, model, tokenizer, step_format: StepFormat | None = None, *, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None, **llm_kwargs):
        try:
            import vllm
        except ImportError as e:
            raise ImportError("VLLMStepSampler needs vLLM (`pip install vllm`, CUDA machines); "
                              "use StepSampler (transformers generate) otherwise") from e
        self._vllm = vllm
        self.tokenizer = tokenizer
        self.step_format = step_format or DEFAULT_STEP_FORMAT
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self._calls = 0
        if isinstance(model, str):
            llm_kwargs.setdefault("enable_prefix_caching", True)
            llm_kwargs.setdefault("trust_remote_code", False)
            model = vllm.LLM(model=model, seed=seed or 0, **llm_kwargs)
        self.llm = model

    def _generate(self, contexts: list[list[int]], k: int) -> list[list[SampledStep]]:
        seed = self._next_seed()
        params = self._vllm.SamplingParams(n=k, temperature=self.temperature, top_p=self.top_p,
                                           max_tokens=self.max_new_tokens, stop=self.step_format.stop_strings,
                                           include_stop_str_in_output=True, seed=seed)
        prompts = [{"prompt_token_ids": list(c)} for c in contexts]
        start = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        self._count_call(start, sum(len(o.token_ids) for out in outs for o in out.outputs))
        eos = self.tokenizer.eos_token_id
        result = []
        for ctx, out in zip(contexts, outs):
            row = []
            for o in out.outputs:
                ended = o.finish_reason == "stop" and o.stop_reason is None  # EOS, not a stop string
                step, is_final, truncated = cut_step(o.text, self.step_format, ended, o.finish_reason == "length")
                ids = list(o.token_ids) + ([eos] if ended and eos is not None and eos not in o.token_ids else [])
                row.append(SampledStep(text=step, is_final=is_final, truncated=truncated, context_ids=list(ctx),
                                       token_ids=ids))
            result.append(row)
        return result


__all__ = ["SampledSolution", "SampledStep", "StepSampler", "VLLMStepSampler", "cut_step", "left_pad",
           "pick_device", "shared_prefill", "step_piece_ids"]
