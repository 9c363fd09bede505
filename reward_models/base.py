"""The reward-model protocol, the adapter for user objects, and the load registry.

Every reward model answers two batched questions:

* ``score_steps(prompts, steps) -> list[list[float]]`` - one score per step (higher = better);
* ``score(prompts, completions) -> list[float]`` - one score per whole completion.

The method names of the user's reference API (``get_reward_for_text``,
``get_rewards_for_steps``, ``get_reward_for_problem_solution``, ``get_rewards_for_batch``,
``save``, ``load``) are thin wrappers over these two.

Any object with ``score_steps``/``get_rewards_for_steps``/``get_reward_for_text``, or a plain
callable ``f(prompt, steps) -> list[float]``, becomes a reward model through
:func:`as_reward_model`, so user models need no subclassing.

Saved reward models are directories holding safetensors weights and a ``reward_config.json``
with ``type`` and ``format_version``; :func:`load_reward_model` rebuilds any registered type.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reward_models.safety import NEVER_LOADED, PICKLE_SUFFIXES, TRAINER_STATE_FILES, refuse_pickles  # noqa: F401
from reward_models.steps import DEFAULT_STEP_FORMAT, StepFormat
from reward_models.types import DataError

CONFIG_NAME = "reward_config.json"
FORMAT_VERSION = 1
AGGREGATIONS = ("min", "prod", "mean", "last", "max", "sum")

_REGISTRY: dict[str, type[RewardModel]] = {}


def register_reward_model(name: str):
    """Class decorator: make ``name`` (the ``type`` in ``reward_config.json``) loadable."""

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"reward model type {name!r} is already registered to {_REGISTRY[name].__name__}")
        _REGISTRY[name] = cls
        cls.reward_type = name
        return cls

    return wrap


def registered_types() -> list[str]:
    _import_builtin_models()
    return sorted(_REGISTRY)


def aggregate(scores: Sequence[float], how: str = "min") -> float:
    """Reduce step scores to one number: ``min``, ``prod``, ``mean``, ``last``, ``max`` or ``sum``.

    >>> aggregate([0.9, 0.5, 0.8], "min"), aggregate([0.5, 0.5], "prod"), aggregate([1, 2, 3], "last")
    (0.5, 0.25, 3)
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; expected one of {AGGREGATIONS}")
    if len(scores) == 0:
        raise ValueError("cannot aggregate an empty list of step scores")
    if how == "min":
        return min(scores)
    if how == "max":
        return max(scores)
    if how == "prod":
        return math.prod(scores)
    if how == "mean":
        return sum(scores) / len(scores)
    if how == "sum":
        return sum(scores)
    return scores[-1]


def check_scores(scores: Sequence[Sequence[float]], steps: Sequence[Sequence[str]], who: str) -> list[list[float]]:
    """Validate a ``score_steps`` result: one finite float per step (NaN/inf are refused)."""
    if len(scores) != len(steps):
        raise ValueError(f"{who} returned {len(scores)} score lists for {len(steps)} solutions")
    out = []
    for i, (row, st) in enumerate(zip(scores, steps)):
        row = list(row)
        if len(row) != len(st):
            raise ValueError(f"{who} returned {len(row)} scores for solution {i} with {len(st)} steps")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
                raise ValueError(f"{who} returned a non-number {v!r} for solution {i}, step {j}")
            v = float(v)
            if math.isnan(v) or math.isinf(v):
                raise ValueError(f"{who} returned a non-finite score {v} for solution {i}, step {j}")
            row[j] = v
        out.append(row)
    return out


class RewardModel:
    """Base class of all reward models. Subclasses implement :meth:`score_steps`.

    Attributes:
        step_format: how a completion text is split into steps (and laid out for models).
        aggregation: how :meth:`score` reduces step scores when a subclass has no outcome head.
    """

    reward_type: str = "base"
    step_format: StepFormat = DEFAULT_STEP_FORMAT
    aggregation: str = "min"
    #: what the scores are: ``probability`` (of a good step, in [0, 1]), ``logodds`` (log p(good) -
    #: log p(bad)) or ``raw`` (any other number); pair building reads a probability threshold on it
    score_scale: str = "probability"

    # -- the batched protocol ------------------------------------------------------------------
    def score_steps(self, prompts: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        raise NotImplementedError

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """Score whole completions; the default splits them into steps and aggregates."""
        split = [self.step_format.split(c) or [c] for c in completions]
        return [aggregate(s, self.aggregation) for s in self.score_steps(prompts, split)]

    def score_steps_with_uncertainty(self, prompts, steps) -> tuple[list[list[float]], list[list[float]] | None]:
        """Step scores and, for ensembles, the per-step disagreement (std); None otherwise."""
        return self.score_steps(prompts, steps), None

    # -- reference-API names ------------------------------------------------------------------------
    def get_rewards_for_steps(self, steps: Sequence[str], problem: str | None = None) -> list[float]:
        """Scores of one solution's ``steps``; ``problem`` (if given) is the context they answer."""
        return self.score_steps([problem or ""], [list(steps)])[0]

    def get_reward_for_text(self, text: str) -> float:
        return self.score([""], [text])[0]

    def get_reward_for_problem_solution(self, problem: str, solution: str) -> float:
        return self.score([problem], [solution])[0]

    def get_rewards_for_batch(self, texts: Sequence[str]) -> list[float]:
        return self.score([""] * len(texts), list(texts))

    def __call__(self, prompts, steps):
        return self.score_steps(prompts, steps)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        raise NotImplementedError(f"{type(self).__name__} cannot be saved (it wraps user code)")

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs) -> RewardModel:
        model = load_reward_model(path, **kwargs)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


class PretrainedRewardModel(RewardModel):
    """A reward model built from a model directory by ``cls(path, device, **settings)``."""

    @classmethod
    def _load_dir(cls, path, cfg, **kwargs):
        return cls(path, **kwargs)

    @classmethod
    def load(cls, path, device: str | None = None, **kwargs):
        """Reference-API signature. A saved reward-model directory loads through the registry; a plain
        model directory (no ``reward_config.json``) is built by this class, as the reference API does."""
        if Path(path).is_dir() and not (Path(path) / CONFIG_NAME).exists():
            return cls(path, device, **kwargs)
        return super().load(path, device=device, **kwargs)


class ConfiguredRewardModel(PretrainedRewardModel):
    """A pretrained reward model whose step format and aggregation are those of its ``settings``
    (the dataclass saved in ``reward_config.json``)."""

    settings: Any

    @property
    def step_format(self) -> StepFormat:  # type: ignore[override]
        return self.settings.step_format

    @property
    def aggregation(self) -> str:  # type: ignore[override]
        return getattr(self.settings, "aggregation", RewardModel.aggregation)

    @property
    def score_scale(self) -> str:  # type: ignore[override]
        return "logodds" if getattr(self.settings, "output", "prob") == "logodds" else "probability"

    def _load(self, auto_class, model_name_or_path: str | os.PathLike, settings: Any, *, device, dtype,
              trust_remote_code: bool, model_kwargs: dict[str, Any] | None, tokenizer,
              adjust_settings: Callable[[Any], None] | None = None, **load_kwargs: Any) -> None:
        """Load ``auto_class`` and the tokenizer from a directory, then ``_setup`` with ``settings``.

        ``adjust_settings(model)`` runs between loading and setup (for settings read off the
        loaded config); ``tokenizer`` given by the caller is used as is.
        """
        from reward_models import hf_utils

        path = Path(model_name_or_path)
        model = hf_utils.load_hf_model(auto_class, path, device=device, dtype=dtype,
                                       trust_remote_code=trust_remote_code, **load_kwargs, **(model_kwargs or {}))
        if adjust_settings is not None:
            adjust_settings(model)
        tok = tokenizer if tokenizer is not None else hf_utils.load_tokenizer(path, trust_remote_code=trust_remote_code)
        self._setup(model, tok, settings, where=str(path))
        self.name_or_path = str(model_name_or_path)


def write_reward_config(path: str | os.PathLike, reward_type: str, **settings: Any) -> Path:
    """Write ``reward_config.json`` (``type``, ``format_version`` and the model's settings)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"type": reward_type, "format_version": FORMAT_VERSION, **settings}
    (path / CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True, default=_json_default))
    return path / CONFIG_NAME


def _json_default(obj):
    if isinstance(obj, StepFormat):
        return obj.to_dict()
    raise TypeError(f"cannot store {type(obj).__name__} in {CONFIG_NAME}")


def read_reward_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``reward_config.json``; errors name the file and the key."""
    file = Path(path) / CONFIG_NAME
    try:
        cfg = json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{file} not found: not a saved reward model directory") from None
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg} at line {e.lineno})", source=str(file)) from None
    if not isinstance(cfg, dict):
        raise DataError("expected a JSON object", source=str(file))
    for key in ("type", "format_version"):
        if key not in cfg:
            raise DataError("missing key", source=str(file), field=key)
    if not isinstance(cfg["format_version"], int) or cfg["format_version"] > FORMAT_VERSION:
        raise DataError(f"format_version {cfg['format_version']!r} is newer than this library supports "
                        f"({FORMAT_VERSION}); upgrade the package", source=str(file), field="format_version")
    return cfg


def saved_settings(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """The settings in ``path/reward_config.json`` (without ``type``/``format_version``), checking that
    it holds a ``kind`` reward model; ``{}`` when the directory has no such file (a plain model)."""
    path = Path(path)
    if not (path / CONFIG_NAME).exists():
        return {}
    cfg = read_reward_config(path)
    if cfg["type"] != kind:
        raise DataError(f"holds a {cfg['type']!r} reward model, not {kind!r}", source=str(path / CONFIG_NAME),
                        field="type")
    return {k: v for k, v in cfg.items() if k not in ("type", "format_version")}


def load_reward_model(path: str | os.PathLike, **kwargs) -> RewardModel:
    """Rebuild any saved reward model from its directory.

    The ``type`` in ``reward_config.json`` picks the class; a directory with only a plain
    causal-LM checkpoint (``config.json``, no ``reward_config.json``) becomes a verification-
    prompt :class:`~reward_models.process.ProcessRewardModel`. Keyword arguments (``device``,
    ``torch_dtype``, ...) go to the class's loader.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"reward model directory {path} does not exist")
    refuse_pickles(path)
    _import_builtin_models()
    if not (path / CONFIG_NAME).exists():
        if (path / "config.json").exists() or (path / "adapter_config.json").exists():
            return _load_plain_model_dir(path, **kwargs)
        raise FileNotFoundError(f"{path} has neither {CONFIG_NAME} nor a model config.json")
    cfg = read_reward_config(path)
    try:
        cls = _REGISTRY[cfg["type"]]
    except KeyError:
        raise KeyError(f"{path / CONFIG_NAME}: unknown reward model type {cfg['type']!r}; "
                       f"valid types: {', '.join(sorted(_REGISTRY))}") from None
    return cls._load_dir(path, cfg, **kwargs)  # type: ignore[attr-defined]


def _load_plain_model_dir(path: Path, **kwargs) -> RewardModel:
    """A transformers directory without ``reward_config.json``, dispatched by its ``architectures``:
    ``...ForSequenceClassification`` -> bradley_terry (TRL RewardTrainer output),
    ``...ForTokenClassification`` -> process head (outcome head when it has one label),
    anything else (a causal LM) -> process verification backend."""
    from reward_models.hf_utils import model_config

    config = model_config(path)
    archs = list(config.get("architectures") or [])
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return _REGISTRY["bradley_terry"](path, **kwargs)  # type: ignore[call-arg]
    if any(a.endswith("ForTokenClassification") for a in archs):
        kind = "outcome" if len(config.get("id2label") or {}) == 1 else "process"
        return _REGISTRY[kind](path, **kwargs)  # type: ignore[call-arg]
    return _REGISTRY["process"].from_pretrained_lm(path, **kwargs)  # type: ignore[attr-defined]


def _import_builtin_models() -> None:
    """Import the modules that register the built-in types (lazily, to keep imports light)."""
    import importlib

    for mod in ("process", "likelihood", "outcome", "bradley_terry", "combine", "rules"):
        try:
            importlib.import_module(f"reward_models.{mod}")
        except ModuleNotFoundError as e:  # a module not written yet must not break the others
            if e.name != f"reward_models.{mod}":
                raise


# -- adapting user objects ------------------------------------------------------------------------
class AdaptedRewardModel(RewardModel):
    """Wraps a user object so it satisfies the batched protocol (see :func:`as_reward_model`)."""

    reward_type = "adapted"

    @property
    def score_scale(self) -> str:  # type: ignore[override]
        return getattr(self.obj, "score_scale", "probability")

    def __init__(self, obj: Any, step_format: StepFormat | None = None, aggregation: str = "min"):
        self.obj = obj
        self.step_format = step_format or getattr(obj, "step_format", None) or DEFAULT_STEP_FORMAT
        self.aggregation = aggregation
        self.name = type(obj).__name__ if not callable(obj) or hasattr(obj, "__dict__") else repr(obj)

    def score_steps(self, prompts, steps):
        if len(prompts) != len(steps):
            raise ValueError(f"got {len(prompts)} prompts for {len(steps)} step lists")
        obj = self.obj
        if hasattr(obj, "score_steps"):
            out = obj.score_steps(list(prompts), [list(s) for s in steps])
        elif hasattr(obj, "get_rewards_for_steps"):
            out = [_call_steps(obj.get_rewards_for_steps, p, s) for p, s in zip(prompts, steps)]
        elif hasattr(obj, "get_reward_for_text"):
            # a text scorer judges each step by the text up to and including it
            out = [[float(obj.get_reward_for_text(p + self.step_format.join(s[: i + 1])))
                    for i in range(len(s))] for p, s in zip(prompts, steps)]
        else:
            out = [list(obj(p, list(s))) for p, s in zip(prompts, steps)]
        return check_scores(out, steps, self.name)

    def score(self, prompts, completions):
        if hasattr(self.obj, "score") and not isinstance(self.obj, type):
            return [float(v) for v in self.obj.score(list(prompts), list(completions))]
        if hasattr(self.obj, "get_reward_for_text"):
            return [float(self.obj.get_reward_for_text(p + c)) for p, c in zip(prompts, completions)]
        return super().score(prompts, completions)


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")  # a torch module exists only when torch is imported
    return torch is not None and isinstance(obj, torch.nn.Module)


def _from_torch_module(model: Any, tokenizer: Any = None, **settings: Any) -> RewardModel:
    """A model in memory as a reward model, or a clear refusal (never the callable path: a torch
    module is callable but does not take ``(prompt, steps)``)."""
    name = type(model).__name__
    if tokenizer is None:
        raise TypeError(f"as_reward_model got a {name} without its tokenizer: pass as_reward_model(model, "
                        "tokenizer=tok) (a causal LM then scores steps by its token probabilities, a token "
                        "classifier by its head), or save it and pass the directory")
    _import_builtin_models()  # the concrete classes come from the registry: base imports none of them
    if name.endswith("ForTokenClassification"):
        return _REGISTRY["process"].from_model(model, tokenizer, backend="head", **settings)  # type: ignore
    if callable(getattr(model, "get_output_embeddings", None)) and model.get_output_embeddings() is not None:
        return _REGISTRY["likelihood"].from_model(model, tokenizer, **settings)  # type: ignore
    raise TypeError(f"cannot score steps with a {name}: expected a causal LM or a token classifier "
                    "(for a sequence classifier use BradleyTerryRewardModel.from_model)")


def _call_steps(fn: Callable, prompt: str, steps: Sequence[str]):
    """Call a user's ``get_rewards_for_steps`` with the problem when it accepts one."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "problem" in params or len(params) >= 2:
        return fn(list(steps), problem=prompt) if "problem" in params else fn(list(steps), prompt)
    return fn(list(steps))


def as_reward_model(obj: Any, **kwargs) -> RewardModel:
    """Return ``obj`` as a :class:`RewardModel`.

    Accepts a RewardModel (returned as is), a saved model directory (loaded), any object with
    ``score_steps``, ``get_rewards_for_steps`` or ``get_reward_for_text``, or a callable
    ``f(prompt, steps) -> list[float]``. A transformers model still in memory needs its tokenizer
    (``as_reward_model(model, tokenizer=tok)``): a causal LM scores steps by its token probabilities
    (:class:`~reward_models.likelihood.LikelihoodRewardModel`), a token classifier by its head
    (:class:`~reward_models.process.ProcessRewardModel`); other keyword arguments are their settings.
    """
    if isinstance(obj, RewardModel):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_reward_model(obj)
    if _is_torch_module(obj):
        return _from_torch_module(obj, **kwargs)
    if any(hasattr(obj, m) for m in ("score_steps", "get_rewards_for_steps", "get_reward_for_text")) or callable(obj):
        return AdaptedRewardModel(obj, **kwargs)
    raise TypeError(f"cannot use a {type(obj).__name__} as a reward model: it needs score_steps, "
                    "get_rewards_for_steps or get_reward_for_text, or must be a callable f(prompt, steps)")


__all__ = ["AGGREGATIONS", "CONFIG_NAME", "FORMAT_VERSION", "AdaptedRewardModel", "ConfiguredRewardModel", "PretrainedRewardModel", "RewardModel", "aggregate",
           "as_reward_model", "check_scores", "load_reward_model", "read_reward_config", "refuse_pickles", "saved_settings",
           "register_reward_model", "registered_types", "write_reward_config"]
