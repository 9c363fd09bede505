"""Private helpers shared by the model-backed reward models (transformers / peft plumbing).

Device choice, safe loading (safetensors only, LoRA adapters through peft), tokenizer checks,
manual padding (right for causal scoring, left for verification prompts, never by flipping a
tokenizer's ``padding_side``), chunking, and the stable log-odds math.

>>> pad_right([[1, 2, 3], [4]], pad_id=0)[0].tolist()
[[1, 2, 3], [4, 0, 0]]
>>> pad_left([[1, 2, 3], [4]], pad_id=0)[0].tolist()
[[1, 2, 3], [0, 0, 4]]
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from reward_models.safety import refuse_pickles

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


# -- devices and loading ---------------------------------------------------------------------------
def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU (never a hard-coded "cuda")."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_supported() -> bool:
    """Whether this machine trains in bfloat16: a CUDA GPU that supports it (the default of every
    trainer's ``bf16``; CPU-only machines train in float32)."""
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).exists()


def model_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of the model saved in ``path`` (the base model's for a LoRA adapter dir)."""
    path = Path(path)
    if is_adapter_dir(path) and not (path / "config.json").exists():
        base = read_json(path / ADAPTER_CONFIG).get("base_model_name_or_path")
        if base and (Path(base) / "config.json").exists():
            path = Path(base)
    return read_json(path / "config.json") if (path / "config.json").exists() else {}


def architectures(path: str | Path) -> list[str]:
    """``architectures`` of the model saved in ``path`` (base model's for a LoRA adapter dir)."""
    return list(model_config(path).get("architectures") or [])


def load_tokenizer(path: str | Path, **kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), **kwargs)


def safe_from_pretrained(auto_cls, name: str | Path, *, trust_remote_code: bool = False, **kwargs):
    """``auto_cls.from_pretrained(name)`` the project's one way: weights from safetensors only (a
    folder holding pickled weights is refused first, naming the file), no model code from the
    folder unless ``trust_remote_code``. Every loader of the two packages goes through it."""
    refuse_pickles(name)
    return auto_cls.from_pretrained(str(name), use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs)


def load_hf_model(auto_cls, path: str | Path, *, device=None, dtype=None, trust_remote_code: bool = False,
                  **model_kwargs):
    """Load ``auto_cls`` weights from ``path`` (safetensors only); a LoRA adapter dir loads through peft.

    ``model_kwargs`` go to ``from_pretrained`` (``device_map``, ``quantization_config``,
    ``attn_implementation``, ...); with a ``device_map`` or quantization the model is not moved.

    For an adapter directory the base model comes from ``base_model_name_or_path`` in
    ``adapter_config.json``; the adapter (and any ``modules_to_save`` head) is applied on top.
    """
    path = Path(path)
    kwargs = dict(trust_remote_code=trust_remote_code, **model_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if is_adapter_dir(path):
        try:
            from peft import PeftModel
        except ImportError as e:  # pragma: no cover - peft is a dependency
            raise ImportError(f"{path} holds a LoRA adapter; install peft to load it") from e
        base_path = read_json(path / ADAPTER_CONFIG).get("base_model_name_or_path")
        if not base_path:
            raise ValueError(f"{path / ADAPTER_CONFIG}: missing key 'base_model_name_or_path' (the base model)")
        refuse_pickles(path)
        base = safe_from_pretrained(auto_cls, base_path, **kwargs)
        model = PeftModel.from_pretrained(base, str(path))
    else:
        model = safe_from_pretrained(auto_cls, path, **kwargs)
    if model_kwargs.get("device_map") is None and model_kwargs.get("quantization_config") is None:
        model.to(default_device(device))  # device_map / quantized models are placed by transformers
    model.eval()
    return model


def check_tokenizer(model, tokenizer, where: str = "") -> None:
    """Raise when the tokenizer has ids the model's embedding table lacks (mismatched pair)."""
    emb = model.get_input_embeddings()
    rows = emb.num_embeddings if hasattr(emb, "num_embeddings") else emb.weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(f"{where + ': ' if where else ''}mismatched tokenizer: it has {len(tokenizer)} tokens (vocab "
                         f"size) but the model's input embeddings have only {rows} rows; load the tokenizer the "
                         "model was trained with")


def supports_logits_to_keep(model) -> bool:
    """Whether ``model.forward`` (the base model's, under a peft wrapper) takes ``logits_to_keep``,
    so that only the last position's vocabulary logits are computed."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def pad_id(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else EOS, else 0 (the tokenizer is not mutated)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def current_checkpointing_names(args) -> None:
    """Carry ``gradient_checkpointing`` / ``_kwargs`` (TRL's configs set them by default) over to
    transformers' ``activation_checkpointing`` / ``_kwargs`` unless those are set; call before
    ``TrainingArguments.__post_init__``, which warns (FutureWarning) whenever it resolves the
    deprecated names itself. The same setting, no warning."""
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if hasattr(args, new) and getattr(args, new) is None and getattr(args, old, None) is not None:
            setattr(args, new, getattr(args, old))


def max_positions(model, max_length: int | None = None) -> int | None:
    """The longest sequence the model accepts: its position table size, capped by ``max_length``."""
    cfg = getattr(model, "config", None)
    limit = None
    for name in ("n_positions", "max_position_embeddings"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            limit = v
            break
    if max_length is not None:
        limit = max_length if limit is None else min(limit, max_length)
    return limit


def check_lengths(lengths: Sequence[int], limit: int | None, what: str = "solution",
                  index: Sequence[int] | None = None) -> None:
    """Raise a ValueError naming the first sequence longer than ``limit`` (nothing is cut silently);
    ``index[k]`` is the number reported for sequence ``k`` (default ``k``)."""
    if limit is None:
        return
    for k, n in enumerate(lengths):
        if n > limit:
            i = index[k] if index is not None else k
            raise ValueError(f"{what} {i} is {n} tokens long, more than the model's maximum of {limit}; "
                             "shorten it (no truncation is applied)")


def token_id(tokenizer, text: str, what: str) -> int:
    """The first token id of ``text`` (as the reference-API code reads " Yes"/" No"); warn when it is several."""
    if not isinstance(text, str) or text == "":
        raise ValueError(f"{what} must be a non-empty string, got {text!r}")
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise ValueError(f"{what} {text!r} tokenizes to no tokens")
    if len(ids) > 1:
        logger.warning("%s %r is %d tokens; scoring its first token only", what, text, len(ids))
    return int(ids[0])


# -- batching -------------------------------------------------------------------------------------
def batches(n: int, size: int, desc: str = "scoring"):
    """:func:`chunks` with a tqdm bar, shown only when there are many chunks."""
    from tqdm.auto import tqdm

    total = -(-n // size) if size > 0 else 0
    return tqdm(chunks(n, size), total=total, desc=desc, disable=total < 8, leave=False)


def chunks(n: int, size: int) -> Iterator[range]:
    """Index ranges of at most ``size`` covering ``range(n)``.

    >>> [list(r) for r in chunks(5, 2)]
    [[0, 1], [2, 3], [4]]
    """
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of shape ``(B, max_len)``, padding after each sequence."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` with padding before each sequence (last token at ``[:, -1]``)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only real tokens (needed with left padding so scores match unpadded runs)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@contextlib.contextmanager
def scoring_mode(model):
    """``inference_mode`` + ``eval()`` for the block, restoring the model's training flag afterwards
    (a live policy passed through ``from_model`` keeps training with dropout on)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


@contextlib.contextmanager
def seeded_sampling(model, seed: int | None):
    """``eval()`` and ``no_grad`` for a block of ``generate`` calls, sampled from a forked RNG
    seeded with ``seed`` (None: unseeded), so results are reproducible and the caller's RNG
    state is left alone; the model's training flag is restored afterwards. The one place the
    samplers (:class:`reward_models.labeling.HFRollout`, :class:`stepdpo.sampling.StepSampler`)
    seed their generation."""
    try:
        device = next(model.parameters()).device
    except (StopIteration, AttributeError):
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if seed is not None:
                torch.manual_seed(seed)
            yield device
    finally:
        model.train(was_training)


def completion_text(tokenizer, ids: Sequence[int], eos_id: int | None, pad_id: int | None) -> tuple[str, bool]:
    """The text of generated ``ids`` up to EOS (excluded) and whether EOS ended it; padding after
    an early stop is dropped, other special tokens are kept (the text is what the policy wrote).

    >>> from reward_models.testing import tiny_tokenizer
    >>> tok = tiny_tokenizer()
    >>> completion_text(tok, tok("1+1=2")["input_ids"] + [tok.eos_token_id, 7], tok.eos_token_id, tok.pad_token_id)
    ('1+1=2', True)
    """
    ids = list(ids)
    ended = eos_id is not None and eos_id in ids
    if ended:
        ids = ids[: ids.index(eos_id)]
    while not ended and ids and pad_id is not None and ids[-1] == pad_id:
        ids.pop()
    return tokenizer.decode(ids, skip_special_tokens=False), ended


# -- math -----------------------------------------------------------------------------------------
def class_logodds(logits: torch.Tensor, good_weight: Sequence[float]) -> torch.Tensor:
    """Log-odds that a prediction is good, from class logits ``(..., C)``, computed stably.

    Class ``c`` counts as good with weight ``good_weight[c]`` and as bad with ``1 - good_weight[c]``
    (a 3-class neutral "half" rule is weight 0.5). ``log p - log(1 - p)`` equals
    ``logsumexp(l + log w) - logsumexp(l + log(1 - w))``; it never forms ``p``.

    >>> class_logodds(torch.tensor([0.0, 2.0]), [0.0, 1.0]).item()
    2.0
    """
    w = torch.tensor(list(good_weight), dtype=torch.float64)
    if w.numel() != logits.shape[-1]:
        raise ValueError(f"{w.numel()} class weights for {logits.shape[-1]} classes")
    lg = logits.double()
    log_w = torch.where(w > 0, w.clamp(min=1e-300).log(), torch.tensor(-math.inf, dtype=torch.float64))
    log_1mw = torch.where(w < 1, (1 - w).clamp(min=1e-300).log(), torch.tensor(-math.inf, dtype=torch.float64))
    return torch.logsumexp(lg + log_w.to(lg.device), -1) - torch.logsumexp(lg + log_1mw.to(lg.device), -1)


def to_output(logodds: torch.Tensor, output: str) -> list[float]:
    """Log-odds -> ``prob`` (sigmoid) or ``logodds`` floats."""
    if output == "prob":
        return torch.sigmoid(logodds).tolist()
    return logodds.tolist()


def prob_to_logodds(p: float) -> float:
    """``log p - log(1 - p)``, clamped away from 0 and 1."""
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p) - math.log1p(-p)


def save_hf(model, tokenizer, path: str | Path) -> None:
    """Weights (adapter only for a peft model) as safetensors, and the tokenizer, into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
