import torch

from reward_models.testing import tiny_causal_lm
from stepdpo.sft import sft_dataset, tokenize_sft_example, train_sft
from stepdpo.tasks.arith import STEP_FORMAT, ArithConfig, make_samples


def test_sft_examples_are_piecewise_with_completion_mask(tokenizer):
    s = make_samples(1, seed=0)[0]
    row = tokenize_sft_example(tokenizer, s, STEP_FORMAT)
    enc = STEP_FORMAT.tokenize(tokenizer, s.prompt, s.steps)
    assert row["input_ids"] == enc.input_ids + [tokenizer.eos_token_id]
    assert row["completion_mask"] == [0] * enc.prompt_len + [1] * (len(enc.input_ids) - enc.prompt_len + 1)


def test_sft_learns(tokenizer, tmp_path):
    cfg = ArithConfig(min_steps=1, max_steps=1, ops="+", start_min=2, start_max=4, min_operand=1, max_operand=2)
    samples = make_samples(6, seed=0, cfg=cfg)
    model = tiny_causal_lm(tokenizer, seed=0)
    ds = sft_dataset(tokenizer, samples, STEP_FORMAT)
    batch = torch.tensor([ds[0]["input_ids"]])

    def nll():
        with torch.no_grad():
            return model(input_ids=batch, labels=batch).loss.item()

    before = nll()
    train_sft(model, tokenizer, samples, output_dir=str(tmp_path), step_format=STEP_FORMAT, max_steps=30,
              learning_rate=3e-3, batch_size=6)
    assert nll() < before * 0.6


def test_trained_policy_scores_like_its_reloaded_copy(tmp_path):
    """After train_sft the in-memory policy computes what the saved one computes when reloaded: no
    mixed-precision wrapper left on its forward (TRL's bf16 default would leave bf16 autocast on a CPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    from reward_models.testing import tiny_causal_lm, tiny_tokenizer
    from stepdpo.sft import train_sft
    from stepdpo.tasks.arith import STEP_FORMAT, make_samples

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    train_sft(model, tok, make_samples(32, seed=0), output_dir=str(tmp_path / "run"), step_format=STEP_FORMAT,
              max_steps=3, batch_size=8)
    model.save_pretrained(tmp_path / "saved", safe_serialization=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", use_safetensors=True)
    model.eval()
    reloaded.eval()
    ids = torch.tensor([tok("Q: 12+7-3\n12+7=19\n")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-6, rtol=0)
