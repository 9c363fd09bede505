"""Offline tiny models for tests, demos and benchmarks: no model hub needed.

The tokenizer is a byte-level BPE (vocab 353, single-digit tokens) that ships with the
package (``reward_models/assets/tiny_tokenizer/tokenizer.json``, made by
``scripts/make_tiny_tokenizer.py``). Models are GPT-2s built from a config with random
weights; everything saves with ``save_pretrained`` and reloads with ``from_pretrained`` from
a local directory.

>>> tok = tiny_tokenizer()
>>> model = tiny_causal_lm(tok, seed=0)
>>> model.config.vocab_size == len(tok)
True
"""

from __future__ import annotations

from pathlib import Path

import torch

TOKENIZER_FILE = Path(__file__).parent / "assets" / "tiny_tokenizer" / "tokenizer.json"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_tokenizer():
    """The shipped byte-level BPE as a ``PreTrainedTokenizerFast`` (EOS, PAD and a chat template)."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<extra_0>"],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


def tiny_gpt2_config(tokenizer=None, *, n_embd: int = 64, n_layer: int = 2, n_head: int = 2,
                     n_positions: int = 256, **kwargs):
    """A ``GPT2Config`` sized for CPU tests, with vocabulary and special ids from ``tokenizer``."""
    from transformers import GPT2Config

    tok = tokenizer or tiny_tokenizer()
    return GPT2Config(
        vocab_size=len(tok), n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **kwargs,
    )


def _build(cls, tokenizer, seed: int, **config_kwargs):
    torch.manual_seed(seed)
    model = cls(tiny_gpt2_config(tokenizer, **config_kwargs))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = model.config.pad_token_id
        model.generation_config.eos_token_id = model.config.eos_token_id
    return model


def tiny_causal_lm(tokenizer=None, *, seed: int = 0, **config_kwargs):
    """A randomly initialised tiny ``GPT2LMHeadModel`` (deterministic in ``seed``)."""
    from transformers import GPT2LMHeadModel

    return _build(GPT2LMHeadModel, tokenizer, seed, **config_kwargs)


def tiny_token_classifier(tokenizer=None, *, num_labels: int = 2, seed: int = 0, **config_kwargs):
    """The same tiny backbone with a token-classification head (PRM/ORM heads)."""
    from transformers import GPT2ForTokenClassification

    return _build(GPT2ForTokenClassification, tokenizer, seed, num_labels=num_labels, **config_kwargs)


def tiny_sequence_classifier(tokenizer=None, *, num_labels: int = 1, seed: int = 0, **config_kwargs):
    """The same tiny backbone with a scalar sequence head (Bradley-Terry; TRL RewardTrainer shape)."""
    from transformers import GPT2ForSequenceClassification

    return _build(GPT2ForSequenceClassification, tokenizer, seed, num_labels=num_labels, **config_kwargs)


def tiny_qwen2_config(tokenizer=None, *, hidden_size: int = 64, num_hidden_layers: int = 2,
                      num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 128,
                      max_position_embeddings: int = 512, **kwargs):
    """A ``Qwen2Config`` (rotary positions, grouped-query attention: the Llama/Qwen family) sized
    for CPU tests, with vocabulary and special ids from ``tokenizer``."""
    from transformers import Qwen2Config

    tok = tokenizer or tiny_tokenizer()
    return Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        attention_dropout=0.0, **kwargs,
    )


def tiny_qwen2_causal_lm(tokenizer=None, *, seed: int = 0, **config_kwargs):
    """A randomly initialised tiny ``Qwen2ForCausalLM`` (deterministic in ``seed``)."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_qwen2_config(tokenizer, **config_kwargs))
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    return model


def save_tiny(model, tokenizer, path: str | Path) -> Path:
    """Save model (safetensors) and tokenizer to ``path`` so ``from_pretrained(path)`` reloads both."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


__all__ = ["CHAT_TEMPLATE", "TOKENIZER_FILE", "save_tiny", "tiny_causal_lm", "tiny_gpt2_config", "tiny_qwen2_causal_lm",
           "tiny_qwen2_config", "tiny_sequence_classifier", "tiny_token_classifier", "tiny_tokenizer"]
