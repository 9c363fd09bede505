import torch
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from reward_models.testing import (
    save_tiny,
    tiny_causal_lm,
    tiny_sequence_classifier,
    tiny_token_classifier,
    tiny_tokenizer,
)


def test_tokenizer_round_trips_and_has_single_digit_tokens(tokenizer):
    text = "Q: 123+45\n123+45=168\nAnswer: 168\nü ки"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(tokenizer("1234567")["input_ids"]) == 7
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_save_and_reload_offline(tmp_path, tokenizer):
    model = tiny_causal_lm(tokenizer, seed=3)
    path = save_tiny(model, tokenizer, tmp_path / "lm")
    assert (path / "model.safetensors").exists()
    tok2 = AutoTokenizer.from_pretrained(path)
    model2 = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.tensor([tok2("Q: 1+2\n")["input_ids"]])
    assert torch.equal(model(ids).logits, model2(ids).logits)
    assert tok2.pad_token == "<|pad|>" and tok2.chat_template == tokenizer.chat_template


def test_heads_share_the_backbone_config(tmp_path, tokenizer):
    lm = tiny_causal_lm(tokenizer, seed=1)
    prm = tiny_token_classifier(tokenizer, num_labels=3, seed=1)
    bt = tiny_sequence_classifier(tokenizer, seed=1)
    assert torch.equal(lm.transformer.wte.weight, prm.transformer.wte.weight)
    assert prm.config.num_labels == 3 and bt.config.num_labels == 1
    save_tiny(prm, tokenizer, tmp_path / "prm")
    assert AutoModelForTokenClassification.from_pretrained(tmp_path / "prm").config.num_labels == 3


def test_models_are_seeded():
    tok = tiny_tokenizer()
    a, b, c = tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
