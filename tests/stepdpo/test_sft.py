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
