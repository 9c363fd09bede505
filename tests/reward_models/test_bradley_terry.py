import json

import pytest
import torch

from reward_models.base import load_reward_model
from reward_models.bradley_terry import BradleyTerryRewardModel, bradley_terry_loss
from reward_models.testing import save_tiny, tiny_sequence_classifier, tiny_token_classifier

PROMPTS = ["Q: 2+3\n", "Q: 7-5\n", "Q: 1\n"]
COMPLETIONS = ["2+3=5\nAnswer: 5\n", "Answer: 2\n", "1+0=1\n1*1=1\nAnswer: 1\n"]


def test_bt_loss_values():
    # -log sigmoid(2 - 0) and with margin 1: -log sigmoid(1)
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(0.126928, abs=1e-6)
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0])).item() == \
        pytest.approx(0.313262, abs=1e-6)


def test_scores_match_unbatched_forward_with_eos(tokenizer):
    model = tiny_sequence_classifier(tokenizer, seed=3)
    bt = BradleyTerryRewardModel.from_model(model, tokenizer)
    got = bt.score(PROMPTS, COMPLETIONS)
    model.eval()
    for p, c, g in zip(PROMPTS, COMPLETIONS, got):
        ids = tokenizer(p + c + tokenizer.eos_token)["input_ids"]  # TRL RewardTrainer's layout
        with torch.no_grad():
            want = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert g == pytest.approx(want, abs=1e-5)
    rows = bt.score_steps(PROMPTS, [c.split("\n")[:-1] for c in COMPLETIONS])
    assert [len(r) for r in rows] == [2, 1, 3]
    assert rows[2][-1] == pytest.approx(got[2], abs=1e-5)  # the full prefix is the full text
    no_eos = BradleyTerryRewardModel.from_model(model, tokenizer, append_eos=False)
    assert no_eos.score(PROMPTS, COMPLETIONS) != pytest.approx(got, abs=1e-4)


def test_trl_reward_trainer_output_loads_and_ranks(tokenizer, tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    model = tiny_sequence_classifier(tokenizer, seed=0)
    ds = Dataset.from_dict({"prompt": ["Q: 1+1\n", "Q: 2+2\n"] * 2, "chosen": ["Answer: 2\n", "Answer: 4\n"] * 2,
                            "rejected": ["Answer: 3\n", "Answer: 5\n"] * 2})
    args = RewardConfig(output_dir=str(tmp_path / "rt"), max_steps=15, learning_rate=5e-3,
                        per_device_train_batch_size=4, report_to=[], save_strategy="no", use_cpu=True,
                        disable_tqdm=True)
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "rt"))
    assert not (tmp_path / "rt" / "reward_config.json").exists()
    bt = load_reward_model(tmp_path / "rt")  # dispatched by architectures: ...ForSequenceClassification
    assert isinstance(bt, BradleyTerryRewardModel)
    chosen = bt.score(["Q: 1+1\n", "Q: 2+2\n"], ["Answer: 2\n", "Answer: 4\n"])
    rejected = bt.score(["Q: 1+1\n", "Q: 2+2\n"], ["Answer: 3\n", "Answer: 5\n"])
    assert all(c > r for c, r in zip(chosen, rejected))


def test_round_trip_and_errors(tokenizer, tmp_path):
    bt = BradleyTerryRewardModel.from_model(tiny_sequence_classifier(tokenizer, seed=5), tokenizer, batch_size=2)
    bt.save(tmp_path / "bt")
    cfg = json.loads((tmp_path / "bt" / "reward_config.json").read_text())
    assert cfg["type"] == "bradley_terry" and cfg["append_eos"] is True
    loaded = BradleyTerryRewardModel.load(tmp_path / "bt")
    assert loaded.batch_size == 2
    assert loaded.score(PROMPTS, COMPLETIONS) == bt.score(PROMPTS, COMPLETIONS)
    with pytest.raises(ValueError, match="num_labels=1"):
        BradleyTerryRewardModel.from_model(tiny_sequence_classifier(tokenizer, num_labels=2), tokenizer)
    save_tiny(tiny_token_classifier(tokenizer), tokenizer, tmp_path / "tok")
    with pytest.raises(ValueError, match="holds a GPT2ForTokenClassification, not a ...ForSequenceClassification"):
        BradleyTerryRewardModel.load(tmp_path / "tok")
    small = tiny_sequence_classifier(tokenizer, n_positions=8)
    with pytest.raises(ValueError, match="solution 1 is .* tokens long"):
        BradleyTerryRewardModel.from_model(small, tokenizer).score(["a", "b"], ["x", "1+1=2 " * 5])
    with pytest.raises(ValueError, match="solution 1 is .* tokens long"):
        BradleyTerryRewardModel.from_model(small, tokenizer).score_steps(["a", "b"], [["x", "y"], ["1+1=2 " * 5]])
