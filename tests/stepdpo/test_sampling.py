import pytest
import torch

from reward_models.steps import StepFormat
from reward_models.testing import tiny_causal_lm, tiny_tokenizer
from stepdpo.sampling import StepSampler, cut_step, left_pad
from stepdpo.tasks.arith import STEP_FORMAT, check_solution, make_samples


def test_left_pad_and_cut_step():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [9, 9, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    fmt = StepFormat(separator="\n\n", tag=" ки")
    assert cut_step("a+b ки\n\nnext", fmt, False, False) == ("a+b", False, False)
    assert cut_step("Answer: 3", fmt, True, False) == ("Answer: 3", True, False)
    assert cut_step("1+2=", fmt, False, True) == ("1+2=", False, True)


def test_contexts_are_piecewise_and_one_generate_call_for_all():
    tok = tiny_tokenizer()
    side = tok.padding_side
    sampler = StepSampler(tiny_causal_lm(tok), tok, STEP_FORMAT, max_new_tokens=6, seed=0)
    prompts, prefixes = ["Q: 2+3*4\n", "Q: 7-1\n"], [["3*4=12"], []]
    out = sampler.sample_next_steps(prompts, prefixes, k=3)
    assert sampler.num_generate_calls == 1
    assert [len(r) for r in out] == [3, 3]
    for p, pre, row in zip(prompts, prefixes, out):
        expected = STEP_FORMAT.tokenize(tok, p, pre, complete=False).input_ids
        for s in row:
            assert s.context_ids == expected
            assert "\n" not in s.text
            assert len(s.token_ids) <= 6
    assert tok.padding_side == side
    # the tokens generated: each row's own (its padding after an early stop not counted), time spent in generate
    assert sampler.num_new_tokens == sum(len(s.token_ids) for row in out for s in row) > 0
    assert sampler.generate_seconds > 0


def test_seeded_and_batched_equals_unbatched():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=1)
    prompts, prefixes = ["Q: 2+3*4\n", "Q: 12-1-1\n"], [["3*4=12", "2+12=14"], []]
    a = StepSampler(model, tok, max_new_tokens=8, seed=3).sample_next_steps(prompts, prefixes, k=2)
    b = StepSampler(model, tok, max_new_tokens=8, seed=3).sample_next_steps(prompts, prefixes, k=2)
    c = StepSampler(model, tok, max_new_tokens=8, seed=4).sample_next_steps(prompts, prefixes, k=2)
    tokens = lambda res: [s.token_ids for row in res for s in row]  # noqa: E731
    assert tokens(a) == tokens(b) and tokens(a) != tokens(c)
    # greedy: a left-padded batch gives the same steps as each context alone
    greedy = StepSampler(model, tok, max_new_tokens=8, temperature=0)
    batched = greedy.sample_next_steps(prompts, prefixes, k=1)
    alone = [greedy.sample_next_steps([p], [pre], k=1)[0] for p, pre in zip(prompts, prefixes)]
    assert tokens(batched) == tokens(alone)


def test_arith_policy_solutions_end_with_eos(arith_policy):
    model, tok, cfg = arith_policy
    probs = make_samples(6, seed=5, cfg=cfg)
    sampler = StepSampler(model, tok, STEP_FORMAT, max_new_tokens=12, seed=0)
    sols = sampler.sample_solution_details([p.prompt for p in probs], k=2, max_steps=5)
    flat = [s for row in sols for s in row]
    assert sum(s.finished for s in flat) >= len(flat) // 2
    # the policy writes steps the checker can parse: most first steps are of the form a op b = c
    parsed = sum(check_solution(p.meta["expression"], s.steps[:1]).reasons[0] != "not of the form 'a op b = c' or "
                 "'Answer: n'" for p, row in zip(probs, sols) for s in row if s.steps)
    assert parsed >= len(flat) // 2
    fresh = lambda: StepSampler(model, tok, STEP_FORMAT, max_new_tokens=12, seed=0)  # noqa: E731
    assert fresh().sample_solutions([probs[0].prompt], k=2, max_steps=5) == \
        [[s.steps for s in fresh().sample_solution_details([probs[0].prompt], k=2, max_steps=5)[0]]]


def test_vllm_backend_interface():
    pytest.importorskip("vllm", reason="vLLM is not installed (CUDA machines only)")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    from stepdpo.sampling import VLLMStepSampler

    assert hasattr(VLLMStepSampler, "sample_next_steps")


def test_vllm_missing_gives_clear_error():
    try:
        import vllm  # noqa: F401
    except ImportError:
        from stepdpo.sampling import VLLMStepSampler

        with pytest.raises(ImportError, match="vLLM"):
            VLLMStepSampler("x", tiny_tokenizer())
    else:
        pytest.skip("vLLM is installed")


def test_pad_equal_to_eos_is_not_taken_for_the_end_of_the_solution(arith_policy):
    """Tokenizers often pad with EOS: a step that stopped at the separator is not final."""
    model, tok, cfg = arith_policy
    tok2 = tiny_tokenizer()
    tok2.pad_token = tok2.eos_token
    probs = make_samples(6, seed=5, cfg=cfg)
    steps = StepSampler(model, tok2, STEP_FORMAT, max_new_tokens=12, seed=0).sample_next_steps(
        [p.prompt for p in probs], k=3)
    flat = [s for row in steps for s in row]
    assert any(len(s.token_ids) < 12 for s in flat)  # different lengths: some rows were padded
    for s in flat:
        if s.text and not s.truncated:
            assert not s.is_final  # first steps of these problems never end the solution
            assert tok2.eos_token_id not in s.token_ids


def _stepwise_and_whole(model, tok, **kw):
    return (StepSampler(model, tok, STEP_FORMAT, whole_solutions=False, **kw),
            StepSampler(model, tok, STEP_FORMAT, whole_solutions=True, **kw))


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_whole_solutions_equal_step_by_step_when_greedy(arith_policy, pad_is_eos):
    """One generate call for whole solutions gives, greedily, exactly the solutions of step-by-step
    sampling (every step checked against its piecewise ids), also continued from prefixes, with
    step limits, token limits and a pad token equal to EOS."""
    model, tok, cfg = arith_policy
    if pad_is_eos:
        tok = tiny_tokenizer()
        tok.pad_token = tok.eos_token
    probs = make_samples(40, seed=9, cfg=cfg)
    prompts = [p.prompt for p in probs]
    for kw in (dict(max_steps=6), dict(max_steps=1), dict(max_steps=6, prefixes=[p.steps[:1] for p in probs])):
        for max_new in (12, 3):  # 3 tokens: most steps are cut (truncated)
            slow, fast = _stepwise_and_whole(model, tok, max_new_tokens=max_new, temperature=0.0)
            a = slow.sample_solution_details(prompts, k=1, **kw)
            b = fast.sample_solution_details(prompts, k=1, **kw)
            assert [(s.steps, s.finished, s.truncated, s.meta) for r in a for s in r] == \
                [(s.steps, s.finished, s.truncated, s.meta) for r in b for s in r], (kw, max_new)
            assert fast.num_steps_whole > 0 and fast.num_generate_calls <= slow.num_generate_calls
            if kw["max_steps"] > 1 and max_new > 3:
                assert fast.num_generate_calls < slow.num_generate_calls
                assert sum(s.finished for r in b for s in r) > 10
            if max_new == 3:
                assert sum(s.truncated for r in b for s in r) > 10


def test_whole_solution_samples_are_exact_steps(arith_policy):
    """Sampled whole solutions: every step re-tokenizes piecewise to ids the policy generated, and
    answers are right about as often as step by step (same distribution)."""
    from stepdpo.tasks.arith import is_correct

    model, tok, cfg = arith_policy
    probs = make_samples(60, seed=10, cfg=cfg)
    prompts = [p.prompt for p in probs]
    slow, fast = _stepwise_and_whole(model, tok, max_new_tokens=12, temperature=1.0, seed=2)
    rates = []
    for sampler in (slow, fast):
        sols = sampler.sample_solution_details(prompts, k=8, max_steps=5)
        rates.append(sum(is_correct(p.meta["expression"], s.steps) for p, r in zip(probs, sols) for s in r) / 480)
        for r in sols:
            for s in r:
                assert all(st.strip() and "\n" not in st for st in s.steps)
    assert abs(rates[0] - rates[1]) < 0.08, rates


def test_whole_solution_parse_falls_back_at_a_token_spanning_a_step_boundary():
    """A token whose text crosses a step boundary (here "\\n\\n"), or step ids that are not the
    piecewise ids, end the whole-solution replay: the solution goes on step by step from its last
    exact step."""
    from stepdpo.sampling import SampledSolution

    tok = tiny_tokenizer()
    sampler = StepSampler(tiny_causal_lm(tok), tok, STEP_FORMAT, max_new_tokens=12)
    ending, odd = sampler._sep
    nl, nlnl = tok("\n")["input_ids"], tok("\n\n")["input_ids"]
    assert nl[0] in ending and nlnl[0] in odd
    step = tok("1+2=3", add_special_tokens=False)["input_ids"]
    sol = SampledSolution(steps=[], finished=False)
    left = sampler._parse_whole("Q: 1+2\n", sol, step + nl + step + nlnl + step, 5, ending, odd)
    assert sol.steps == ["1+2=3"] and left == 4 and sampler.num_steps_stepwise_fallback == 1
    chars = [tok(c, add_special_tokens=False)["input_ids"][0] for c in "Answer: 3"]
    assert chars != tok("Answer: 3", add_special_tokens=False)["input_ids"]  # merged pieces exist
    sol = SampledSolution(steps=["1+2=3"], finished=False)
    assert sampler._parse_whole("Q: 1+2\n", sol, chars + nl + [tok.eos_token_id], 4, ending, odd) == 4
    assert sol.steps == ["1+2=3"] and not sol.finished
    done = SampledSolution(steps=["1+2=3"], finished=False)
    answer = tok("Answer: 3", add_special_tokens=False)["input_ids"]
    assert sampler._parse_whole("Q: 1+2\n", done, answer + nl + [tok.eos_token_id], 4, ending, odd) == 0
    assert done.steps == ["1+2=3", "Answer: 3"] and done.finished


# -- prefix cache: K continuations of one context prefilled once ------------------------------------------------
def _sampled(res):
    return [[(s.text, s.is_final, s.truncated, s.token_ids, s.context_ids) for s in row] for row in res]


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_prefix_cache_gives_the_same_samples_with_fewer_prefills(family, temperature):
    from reward_models.testing import tiny_qwen2_causal_lm

    tok = tiny_tokenizer()
    model = (tiny_causal_lm if family == "gpt2" else tiny_qwen2_causal_lm)(tok, seed=2)
    prompts, prefixes = ["Q: 2+3*4\n", "Q: 12-1-1\n", "Q: 5\n"], [["3*4=12", "2+12=14"], [], ["5"]]
    out, counts = {}, {}
    for cached in (False, True):
        sampler = StepSampler(model, tok, max_new_tokens=10, temperature=temperature, batch_size=8, seed=7,
                              prefix_cache=cached)
        steps = sampler.sample_next_steps(prompts, prefixes, k=4)  # 12 rows: chunks of 8 and 4
        assert (sampler.num_prefill_rows, sampler.num_rows) == ((3, 12) if cached else (12, 12))
        sols = sampler.sample_solution_details(prompts, k=3, max_steps=3)  # whole solutions, then step by step
        out[cached] = (_sampled(steps), [[(s.steps, s.finished, s.truncated) for s in row] for row in sols])
        counts[cached] = (sampler.num_prefill_rows, sampler.num_rows, sampler.num_generate_calls)
    assert out[True] == out[False]  # same seed, same samples
    assert counts[True][1:] == counts[False][1:]  # the same rows in the same generate calls
    assert counts[False][0] == counts[False][1]  # today: every row prefilled
    assert counts[True][0] < counts[True][1]  # cached: each distinct context of a call once


def test_prefix_cache_rows_are_valid_and_seeded():
    """Every continuation starts from its own context: a context's K rows differ from each other
    (sampled independently) and each continues its own context, as without the cache."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=4)
    prompts = ["Q: 1+1\n", "Q: 99-9*9\n"]
    a = StepSampler(model, tok, max_new_tokens=12, seed=1).sample_next_steps(prompts, k=6)
    b = StepSampler(model, tok, max_new_tokens=12, seed=1).sample_next_steps(prompts, k=6)
    c = StepSampler(model, tok, max_new_tokens=12, seed=2).sample_next_steps(prompts, k=6)
    assert _sampled(a) == _sampled(b) and _sampled(a) != _sampled(c)
    for p, row in zip(prompts, a):
        assert len({tuple(s.token_ids) for s in row}) > 1  # independent samples, not one copied K times
        assert all(s.context_ids == tok(p)["input_ids"] for s in row)
        assert all(len(s.token_ids) <= 12 for s in row)


def test_prefix_cache_is_skipped_when_nothing_repeats():
    from stepdpo.sampling import shared_prefill

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0).eval()
    batch = [tok("Q: 1\n")["input_ids"], tok("Q: 22\n")["input_ids"]]
    ids, mask = left_pad(batch, tok.pad_token_id)
    assert shared_prefill(model, batch, ids, mask, torch.device("cpu")) is None
    with torch.no_grad():
        extra = shared_prefill(model, batch + batch[:1], *left_pad(batch + batch[:1], tok.pad_token_id),
                               torch.device("cpu"))
    (name, cache), = extra.items()
    assert name in ("cache", "past_key_values")
    assert cache.get_seq_length() == ids.shape[1] - 1  # all but the last column, which generate runs
    sampler = StepSampler(model, tok, max_new_tokens=4, seed=0)
    sampler.sample_next_steps(["Q: 1\n", "Q: 22\n"], k=1)
    assert sampler.num_prefill_rows == sampler.num_rows == 2


def test_prefix_cache_failure_falls_back_to_plain_generate(monkeypatch, caplog):
    import logging

    import stepdpo.sampling as sampling

    def broken(*args, **kwargs):
        raise NotImplementedError("this cache cannot be reordered")

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=4)
    want = StepSampler(model, tok, max_new_tokens=6, seed=1, prefix_cache=False).sample_next_steps(["Q: 1+1\n"], k=3)
    monkeypatch.setattr(sampling, "shared_prefill", broken)
    sampler = StepSampler(model, tok, max_new_tokens=6, seed=1)
    with caplog.at_level(logging.WARNING):
        got = sampler.sample_next_steps(["Q: 1+1\n"], k=3)
    assert "prefilling every row" in caplog.text and not sampler.prefix_cache
    assert _sampled(got) == _sampled(want)
