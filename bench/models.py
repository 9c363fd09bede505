"""Benchmark backbones: random-weight models built in code from public configs (no hub access).

All use the 353-token test tokenizer (:func:`reward_models.testing.tiny_tokenizer`), so the
vocabulary (and embedding) is small; the transformer stack has the public model's shape.
Speed does not depend on what the weights say.

* ``tiny`` - the 2-layer, 64-wide GPT-2 of the tests (0.2M parameters).
* ``gpt2-100m`` - GPT-2-small shape (12 layers, 768 wide, 12 heads): 85.7M parameters.
* ``qwen2-tiny`` - a 2-layer Qwen2 (rotary positions, grouped-query attention), for dry runs.
* ``qwen2-0.5b`` - Qwen2/2.5-0.5B shape (24 layers, 896 wide, 14 heads, 2 KV heads, MLP 4864):
  358M parameters with the small vocabulary (494M with Qwen's 151,936-token one).
* ``qwen2-1.5b`` - Qwen2/2.5-1.5B shape (28 layers, 1536 wide, 12 heads, 2 KV heads, MLP 8960):
  1.31B parameters with the small vocabulary (1.54B with Qwen's).

>>> spec("gpt2-100m").family, spec("qwen2-1.5b").kwargs["num_hidden_layers"]
('gpt2', 28)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Backbone:
    family: str  # "gpt2" | "qwen2"
    kwargs: dict[str, Any]
    lora_targets: tuple[str, ...]
    lora_fan_in_fan_out: bool = False


_GPT2_LORA = ("c_attn", "c_proj", "c_fc")
_QWEN2_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

BACKBONES: dict[str, Backbone] = {
    "tiny": Backbone("gpt2", {}, _GPT2_LORA, True),
    "gpt2-100m": Backbone("gpt2", {"n_embd": 768, "n_layer": 12, "n_head": 12}, _GPT2_LORA, True),
    "qwen2-tiny": Backbone("qwen2", {}, _QWEN2_LORA),
    "qwen2-0.5b": Backbone("qwen2", {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                                     "num_attention_heads": 14, "num_key_value_heads": 2}, _QWEN2_LORA),
    "qwen2-1.5b": Backbone("qwen2", {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                                     "num_attention_heads": 12, "num_key_value_heads": 2}, _QWEN2_LORA),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def spec(backbone: str) -> Backbone:
    if backbone not in BACKBONES:
        raise KeyError(f"unknown backbone {backbone!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[backbone]


def config(backbone: str, tokenizer, **extra):
    """The transformers config of ``backbone`` (positions for 512 tokens at least)."""
    from reward_models.testing import tiny_gpt2_config, tiny_qwen2_config

    b = spec(backbone)
    if b.family == "gpt2":
        return tiny_gpt2_config(tokenizer, **{"n_positions": 512, **b.kwargs, **extra})
    return tiny_qwen2_config(tokenizer, **{"max_position_embeddings": 4096, **b.kwargs, **extra})


def build(kind: str, backbone: str, tokenizer, *, device: torch.device | str = "cpu",
          dtype: torch.dtype | None = None, seed: int = 0, **extra):
    """A random-weight ``kind`` (``"causal_lm"`` | ``"token_classifier"``) model, built directly on
    ``device`` in ``dtype`` (a 1.5B model is not initialised on the CPU first), in eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    auto = {"causal_lm": AutoModelForCausalLM, "token_classifier": AutoModelForTokenClassification}[kind]
    cfg = config(backbone, tokenizer, **extra)
    torch.manual_seed(seed)
    with torch.device(device):
        model = auto.from_config(cfg, dtype=dtype or torch.float32)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = cfg.pad_token_id
        model.generation_config.eos_token_id = cfg.eos_token_id
    return model.eval()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def label(backbone: str, model, dtype: torch.dtype | None = None) -> str:
    """``"qwen2-1.5b (1310.5M params, bf16)"``; the dtype is named when it is not float32."""
    short = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "")
    return f"{backbone} ({n_params(model) / 1e6:.1f}M params{', ' + short if short else ''})"


__all__ = ["BACKBONES", "DTYPES", "Backbone", "build", "config", "label", "n_params", "spec"]
