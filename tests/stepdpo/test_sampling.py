import pytest
import torch

from reward_models.steps import StepFormat
from reward_models.testing import tiny_causal_lm, tiny_tokenizer
from stepdpo.sampling import StepSampler, cut_step, left_pad
from stepdpo.tasks.arith import STEP_FORMAT, check_solution, make_samples

pytestmark = pytest.mark.usefixtures("single_thread")


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
