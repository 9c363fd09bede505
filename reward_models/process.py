"""Process reward models: one score per reasoning step, batched.

Three backends, chosen by ``backend`` in ``reward_config.json`` (a plain causal-LM directory
means ``verification``; a ``...ForTokenClassification`` directory means ``head``):

* ``head`` - a token-classification head (2 classes ``[bad, good]`` or 3 classes for ratings
  ``{-1, 0, +1}``, seeds 000/001) read at each step's score position (its tag, or its last
  token). All steps of all solutions in a chunk go through **one** forward pass.
* ``token`` - the LM head's logits of two tokens (``"+"``/``"-"``) at each step tag, the
  Math-Shepherd / OpenRLHF convention; ``layout="chat"`` reads the answer of chat turns (each
  step a user turn answered ``"+"``, the RLHFlow convention). See :func:`token_convention`.
* ``verification`` - a Yes/No question per step (the reference API): reward ``log p(Yes) - log p(No)``;
  the step is judged with the problem and previous steps as context. The questions of one
  problem share their prefix (the problem and the previous steps), so by default
  (``shared_prefix=True``) they go through the model as one token tree per problem: each shared
  prefix once, each question attending only to its own prefix (a 4D attention mask, see
  :mod:`reward_models.shared_prefix`); the scores equal those of each question run alone. With
  ``shared_prefix=False``, or a model that takes no custom 4D mask, every question is its own
  sequence in left-padded chunks.

Scores are probabilities (``output="prob"``) or log-odds (``"logodds"``); a 3-class head maps
the neutral class by ``neutral``: ``"positive"`` (counts as good), ``"negative"`` or ``"half"``.

Why one ~560-line module: the three backends share settings, saving/loading and the reference-
API wrappers of one class.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from reward_models import hf_utils
from reward_models.base import (
    AGGREGATIONS,
    CONFIG_NAME,
    ConfiguredRewardModel,
    register_reward_model,
    saved_settings,
    write_reward_config,
)
from reward_models.shared_prefix import (
    exactness_tolerance,
    pack_token_trees,
    row_batches,
    tree_attention_supported,
    tree_next_token_logits,
)
from reward_models.steps import DEFAULT_STEP_FORMAT, MATH_SHEPHERD_FORMAT, StepFormat
from reward_models.types import DataError

logger = logging.getLogger(__name__)

BACKENDS = ("head", "token", "verification")
OUTPUTS = ("prob", "logodds")
NEUTRAL_RULES = {"positive": 1.0, "negative": 0.0, "half": 0.5}
# The step judged is the last line of the solution so far, and the reference API's question follows it:
# question j's text up to its step is the start of question j+1, so scoring all of a solution's questions
# as one token tree (shared_prefix) computes the problem and every step once and each question's own
# tokens (the question text) once per step.
DEFAULT_STEP_TEMPLATE = ("Problem: {problem}\nSolution so far:\n{previous_steps}{step}\n"
                         "Is this step correct? Yes or No:")
# the default before issue 17 (the step repeated after "New step: "); a saved model that names it keeps it
EARLIER_DEFAULT_STEP_TEMPLATES = ("Problem: {problem}\nSolution so far:\n{previous_steps}New step: {step}\n"
                                  "Is the new step correct? Yes or No:",)
# the reference API's question, asked when there is no problem (get_reward_for_text, steps scored alone)
TEXT_ONLY_STEP_TEMPLATE = "Is this step correct? Yes or No: {step}"
TEMPLATE_FIELDS = ("problem", "previous_steps", "step")
REFERENCE_PROCESS_CONFIG = "process_reward_config.json"
# keys of reward_config.json that are bookkeeping, not settings
_META_KEYS = {"type", "format_version"}


def token_convention(name: str) -> dict[str, Any]:
    """Settings of a public ``token``-backend convention, to pass as ``**settings``.

    * ``"math-shepherd"``: steps end with ``" ки"``, steps joined by ``"\\n"``, read ``+``/``-``.
    * ``"extra_0"``: each step followed by the ``<extra_0>`` tag, steps joined by ``"\\n\\n"``.
    * ``"chat"``: each step is a user turn, the assistant answers ``+``/``-`` (RLHFlow PRMs).

    >>> token_convention("math-shepherd")["step_format"].tag
    ' ки'
    """
    table = {
        "math-shepherd": dict(step_format=MATH_SHEPHERD_FORMAT, layout="text"),
        "extra_0": dict(step_format=StepFormat(separator="\n\n", tag="<extra_0>"), layout="text"),
        "chat": dict(step_format=StepFormat(separator="\n\n"), layout="chat"),
    }
    if name not in table:
        raise KeyError(f"unknown token convention {name!r}; valid: {', '.join(sorted(table))}")
    return dict(backend="token", positive_token="+", negative_token="-", **table[name])


@dataclass
class ProcessSettings:
    """Everything that defines how a :class:`ProcessRewardModel` scores (saved in ``reward_config.json``)."""

    backend: str = field(default="head", metadata={"help": "head | token | verification"})
    step_format: StepFormat = field(default=DEFAULT_STEP_FORMAT,
                                    metadata={"help": "step separator/tag; scores are read at each step's tag "
                                                      "(or last token)"})
    output: str | None = field(default=None, metadata={"help": "prob | logodds (default: prob for head/token, "
                                                                 "logodds for verification, as in the reference API)"})
    num_labels: int = field(default=2, metadata={"help": "head classes: 2 = [bad, good], 3 = ratings {-1,0,+1}"})
    neutral: str = field(default="positive", metadata={"help": "3-class neutral counts as positive | negative | "
                                                                 "half"})
    positive_token: str = field(default="+", metadata={"help": "token backend: the 'good' token"})
    negative_token: str = field(default="-", metadata={"help": "token backend: the 'bad' token"})
    layout: str = field(default="text", metadata={"help": "token backend: text (step tags) | chat (steps as user "
                                                            "turns answered with positive_token)"})
    prompt_template: str = field(default=DEFAULT_STEP_TEMPLATE,
                                 metadata={"help": "verification: fields {problem}, {previous_steps}, {step}"})
    yes_token: str = field(default=" Yes", metadata={"help": "verification: answer token read as 'correct'"})
    no_token: str = field(default=" No", metadata={"help": "verification: answer token read as 'wrong'"})
    max_length: int | None = field(default=None, metadata={"help": "longest sequence accepted (also capped by "
                                                                     "the model's positions); longer raises"})
    batch_size: int = field(default=16, metadata={"help": "sequences per forward pass (verification with "
                                                                "shared_prefix: as many tokens as this many queries)"})
    shared_prefix: bool = field(default=True, metadata={"help": "verification: score the questions of one problem as "
                                                                 "one token tree, each shared prefix computed once "
                                                                 "(same scores; falls back to one sequence per "
                                                                 "question where the model does not allow it)"})
    aggregation: str = field(default="min", metadata={"help": "how score() reduces step scores"})

    def __post_init__(self) -> None:
        if isinstance(self.step_format, dict):
            self.step_format = StepFormat.from_dict(self.step_format)
        if not isinstance(self.step_format, StepFormat):
            raise ValueError(f"step_format must be a StepFormat or dict, got {type(self.step_format).__name__}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; expected one of {BACKENDS}")
        if self.output is None:
            self.output = "logodds" if self.backend == "verification" else "prob"
        if self.output not in OUTPUTS:
            raise ValueError(f"unknown output {self.output!r}; expected one of {OUTPUTS}")
        if self.num_labels not in (2, 3):
            raise ValueError(f"num_labels must be 2 or 3, got {self.num_labels}"
                             + (" (a one-label token head is an outcome model: use OutcomeRewardModel)"
                                if self.num_labels == 1 else ""))
        if self.neutral not in NEUTRAL_RULES:
            raise ValueError(f"unknown neutral rule {self.neutral!r}; expected one of {tuple(NEUTRAL_RULES)}")
        if self.layout not in ("text", "chat"):
            raise ValueError(f"unknown layout {self.layout!r}; expected 'text' or 'chat'")
        if self.backend == "verification" and "{step}" not in self.prompt_template:
            raise ValueError("prompt_template must contain the field {step}")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {self.max_length!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if not isinstance(self.shared_prefix, bool):
            raise ValueError(f"shared_prefix must be true or false, got {self.shared_prefix!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; expected one of {AGGREGATIONS}")

    @property
    def good_weight(self) -> list[float]:
        """Per head class, how much it counts as 'good' (label order: bad=0, [neutral=1,] good=last)."""
        if self.num_labels == 2:
            return [0.0, 1.0]
        return [0.0, NEUTRAL_RULES[self.neutral], 1.0]

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["step_format"] = self.step_format.to_dict()
        return out



def build_settings(cls, saved: dict[str, Any], given: dict[str, Any], source: str | None = None):
    """Settings dataclass ``cls`` from a saved config overridden by code arguments.

    Unknown keys passed in code are errors; unknown keys in a saved file (a newer tool may
    write more) are logged and ignored. Invalid values raise :class:`DataError` naming the file.
    """
    names = {f.name for f in fields(cls)}
    bad = sorted(set(given) - names)
    if bad:
        raise TypeError(f"unknown setting(s) {bad} for {cls.__name__}; valid: {sorted(names)}")
    extra = sorted(set(saved) - names - _META_KEYS)
    if extra:
        logger.warning("%s: ignoring unknown setting(s) %s", source, extra)
    data = {k: v for k, v in saved.items() if k in names}
    data.update(given)
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        if isinstance(e, DataError):
            raise e.at(source=source) from None
        raise DataError(str(e), source=source) from None


def fill_template(template: str, **values: str) -> str:
    """Insert values into ``{name}`` fields by plain replacement (no ``str.format`` on user text).

    >>> fill_template("Q: {problem} | {step}?", problem="1+1", step="2")
    'Q: 1+1 | 2?'
    """
    out = template
    for k, v in values.items():
        out = out.replace("{" + k + "}", v)
    return out


def settings_from_dir(path: Path, cls_type: str, default_backend: str) -> dict[str, Any]:
    """Settings stored in ``path/reward_config.json`` (checking ``type`` and ``backend``), or
    ``{"backend": default_backend}`` for a plain model directory."""
    if not (path / CONFIG_NAME).exists():
        legacy = path / REFERENCE_PROCESS_CONFIG
        if cls_type == "process" and legacy.exists():  # written by the reference API's ProcessRewardModel.save
            prompt = hf_utils.read_json(legacy).get("verification_prompt")
            if not isinstance(prompt, str):
                raise DataError("missing key or not a string", source=str(legacy), field="verification_prompt")
            return {"backend": "verification", "prompt_template": prompt + "{step}"}
        return {"backend": default_backend}
    cfg = saved_settings(path, cls_type)
    if "backend" not in cfg:
        raise DataError("missing key", source=str(path / CONFIG_NAME), field="backend")
    return cfg


def backend_for_architectures(path: Path) -> str:
    archs = hf_utils.architectures(path)
    return "head" if any(a.endswith("ForTokenClassification") for a in archs) else "verification"


@register_reward_model("process")
class ProcessRewardModel(ConfiguredRewardModel):
    """A process reward model (PRM) over a transformers model; see the module docstring.

    Args:
        model_name_or_path: a saved directory (``reward_config.json`` + weights), a plain model
            directory (causal LM -> verification backend, token classifier -> head backend), or a
            hub name when the hub is reachable.
        device: where to run; default CUDA when available, else CPU.
        tokenizer: use this tokenizer instead of the one saved with the model.
        dtype: weights dtype (e.g. ``torch.bfloat16``); ``torch_dtype`` is accepted as an alias.
        trust_remote_code: passed to transformers (False unless you say so).
        model_kwargs: more ``from_pretrained`` arguments (``device_map``, ``quantization_config``,
            ``attn_implementation``); with a device map or quantization the model is not moved.
        **settings: any :class:`ProcessSettings` field, overriding the saved config.

    >>> # prm = ProcessRewardModel("out/prm"); prm.score_steps(["Q: 2+3\\n"], [["2+3=5", "Answer: 5"]])
    """

    def __init__(self, model_name_or_path: str | os.PathLike, device: str | None = None, *, tokenizer=None,
                 dtype=None, torch_dtype=None, trust_remote_code: bool = False,
                 model_kwargs: dict[str, Any] | None = None, **settings: Any):
        from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

        path = Path(model_name_or_path)
        base = settings_from_dir(path, "process", backend_for_architectures(path)) if path.is_dir() \
            else {"backend": "verification"}
        s = build_settings(ProcessSettings, base, settings, source=str(path / CONFIG_NAME))
        base.update(settings)
        auto = AutoModelForTokenClassification if s.backend == "head" else AutoModelForCausalLM
        # a LoRA adapter over a plain base needs the head's size; a full checkpoint brings its own (checked below)
        extra = {"num_labels": s.num_labels} if s.backend == "head" and "num_labels" in base \
            and hf_utils.is_adapter_dir(path) else {}

        def num_labels_from_config(model) -> None:
            if s.backend == "head" and "num_labels" not in base:
                s.num_labels = int(model.config.num_labels)
                s.__post_init__()

        self._load(auto, model_name_or_path, s, device=device, dtype=dtype or torch_dtype,
                   trust_remote_code=trust_remote_code, model_kwargs=model_kwargs, tokenizer=tokenizer,
                   adjust_settings=num_labels_from_config, **extra)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model, tokenizer, backend: str = "head", step_format: StepFormat | None = None,
                   **settings: Any) -> ProcessRewardModel:
        """Wrap an in-memory model (not copied: a live policy stays shared) and its tokenizer."""
        s = ProcessSettings(backend=backend, step_format=step_format or DEFAULT_STEP_FORMAT, **settings)
        if backend == "head" and "num_labels" not in settings:
            s.num_labels = int(getattr(model.config, "num_labels", 2))
            s.__post_init__()
        obj = cls.__new__(cls)
        obj._setup(model, tokenizer, s, where=type(model).__name__)
        obj.name_or_path = getattr(model, "name_or_path", None)
        return obj

    @classmethod
    def from_pretrained_lm(cls, path: str | os.PathLike, **kwargs: Any) -> ProcessRewardModel:
        """A plain causal-LM directory as a verification-prompt PRM (the reference API)."""
        kwargs.setdefault("backend", "verification")
        return cls(path, **kwargs)

    def _setup(self, model, tokenizer, settings: ProcessSettings, where: str) -> None:
        hf_utils.check_tokenizer(model, tokenizer, where)
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = hf_utils.model_device(model)
        self.pad_token_id = hf_utils.pad_id(tokenizer)
        self.max_length = hf_utils.max_positions(model, settings.max_length)
        self._shared_prefix_ok: bool | None = None  # verification: checked at first use
        self.last_verification: dict[str, Any] = {}  # what the last verification call ran (benchmarks, tests)
        s = settings
        if s.backend == "head":
            n = int(getattr(model.config, "num_labels", s.num_labels))
            if n != s.num_labels:
                raise ValueError(f"{where}: the head has {n} labels but the settings say num_labels={s.num_labels}")
        if s.backend == "token":
            self.candidate_ids = [hf_utils.token_id(tokenizer, s.positive_token, "positive_token"),
                                  hf_utils.token_id(tokenizer, s.negative_token, "negative_token")]
        elif s.backend == "verification":
            self.candidate_ids = [hf_utils.token_id(tokenizer, s.yes_token, "yes_token"),
                                  hf_utils.token_id(tokenizer, s.no_token, "no_token")]
        else:
            self.candidate_ids = []
        if self.candidate_ids and self.candidate_ids[0] == self.candidate_ids[1]:
            raise ValueError(f"{where}: the two answer tokens map to the same id {self.candidate_ids[0]}")

    # reference-API conveniences
    @property
    def backend(self) -> str:
        return self.settings.backend

    def forward(self, input_ids, attention_mask=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)

    # -- scoring ---------------------------------------------------------------------------------
    def score_steps(self, prompts, steps):
        prompts, steps = list(prompts), [list(s) for s in steps]
        if len(prompts) != len(steps):
            raise ValueError(f"got {len(prompts)} prompts for {len(steps)} step lists")
        out: list[list[float]] = [[] for _ in prompts]
        todo = [i for i, s in enumerate(steps) if s]
        if not todo:
            return out
        sub_p, sub_s = [prompts[i] for i in todo], [steps[i] for i in todo]
        if self.settings.backend == "verification":
            scores = self._score_verification(sub_p, sub_s, todo)
        else:
            scores = self._score_positions(sub_p, sub_s, todo)
        for i, row in zip(todo, scores):
            out[i] = row
        return out

    def _score_positions(self, prompts, steps, rows: list[int]) -> list[list[float]]:
        """Head / token backends: one right-padded forward per chunk, logits read at score positions
        (each solution's token ids and the positions whose logits score its steps laid out first)."""
        s = self.settings
        if s.backend == "token" and s.layout == "chat":
            laid = []
            for i, (p, st) in enumerate(zip(prompts, steps)):
                try:
                    laid.append(chat_layout(self.tokenizer, p, st, s.positive_token))
                except DataError as e:
                    raise e.at(row=rows[i]) from None
        else:  # every prompt and step piece in one tokenizer call (a call per piece is mostly Python)
            laid = [(t.input_ids, t.score_positions)
                    for t in s.step_format.tokenize_many(self.tokenizer, prompts, steps, rows=rows)]
        hf_utils.check_lengths([len(ids) for ids, _ in laid], self.max_length, index=rows)
        weights = s.good_weight if s.backend == "head" else [1.0, 0.0]
        order = sorted(range(len(laid)), key=lambda i: len(laid[i][0]))  # similar lengths share a chunk
        picked_all = []  # per chunk, on the device: read back once at the end (no sync between forwards)
        with hf_utils.scoring_mode(self.model):
            for chunk in hf_utils.batches(len(order), s.batch_size):
                idx = [order[c] for c in chunk]
                ids, mask = hf_utils.pad_right([laid[i][0] for i in idx], self.pad_token_id)
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                rows = [b for b, i in enumerate(idx) for _ in laid[i][1]]
                cols = [p for i in idx for p in laid[i][1]]
                picked = logits[rows, cols]
                picked_all.append(picked[:, self.candidate_ids] if s.backend == "token" else picked)
        vals = hf_utils.to_output(hf_utils.class_logodds(torch.cat(picked_all).float(), weights), s.output)
        out: list[list[float]] = [[] for _ in laid]
        k = 0
        for i in order:
            n = len(laid[i][1])
            out[i] = vals[k:k + n]
            k += n
        return out

    def question_template(self, problem: str) -> str:
        """The verification question: ``prompt_template``, except that with no problem the default
        context-aware template gives way to the reference API's :data:`TEXT_ONLY_STEP_TEMPLATE`."""
        t = self.settings.prompt_template
        default = t == DEFAULT_STEP_TEMPLATE or t in EARLIER_DEFAULT_STEP_TEMPLATES
        return TEXT_ONLY_STEP_TEMPLATE if not problem and default else t

    def verification_queries(self, prompt: str, steps: list[str]) -> list[str]:
        """One Yes/No question per step: the problem, the previous steps, and the step judged."""
        fmt = self.settings.step_format
        template = self.question_template(prompt)
        return [fill_template(template, problem=prompt,
                              previous_steps=fmt.join(steps[:j], complete=False) if j else "", step=steps[j])
                for j in range(len(steps))]

    def get_reward_for_text(self, text: str) -> float:
        """The reference API's call: with the verification backend the whole ``text`` is one step,
        asked about with :meth:`question_template` (log-odds by default, as in the reference);
        the other backends score it as a solution split into steps."""
        if self.backend != "verification":
            return super().get_reward_for_text(text)
        query = fill_template(self.question_template(""), problem="", previous_steps="", step=text)
        flat = yes_no_logodds(self.model, self.tokenizer, [query], self.candidate_ids, self.pad_token_id, 1,
                              self.max_length)
        return hf_utils.to_output(flat, self.settings.output)[0]

    def _score_verification(self, prompts, steps, rows: list[int]) -> list[list[float]]:
        queries, owner, groups = [], [], []
        for i, (p, st) in enumerate(zip(prompts, steps)):
            try:
                for j, step in enumerate(st):
                    self.settings.step_format.check_step(step, j)
                qs = self.verification_queries(p, st)
            except DataError as e:
                raise e.at(row=rows[i]) from None
            queries += qs
            owner += [rows[i]] * len(qs)
            groups += [p] * len(qs)  # the questions about one problem share their prefix
        ids = tokenize_queries(self.tokenizer, queries, self.max_length, owner)
        shared = self.settings.shared_prefix and self._shared_prefix_works(ids, groups)
        flat, self.last_verification = _yes_no_from_ids(self.model, ids, self.candidate_ids, self.pad_token_id,
                                                        self.settings.batch_size, shared, groups)
        vals = hf_utils.to_output(flat, self.settings.output)
        out, k = [], 0
        for st in steps:
            out.append(vals[k:k + len(st)])
            k += len(st)
        return out

    def _shared_prefix_works(self, ids: list[list[int]], groups: list[str]) -> bool:
        """Whether shared-prefix scoring applies to this model: it takes a custom 4D mask, and (checked
        once, on the questions of the first problem) gives the per-question scores within
        :func:`~reward_models.shared_prefix.exactness_tolerance`; otherwise warn and score per question."""
        if self._shared_prefix_ok is None:
            if not tree_attention_supported(self.model):
                self._shared_prefix_ok = False
                logger.info("verification: %s takes no custom 4D attention mask; scoring one sequence per question",
                            type(self.model).__name__)
                return False
            probe = [x for x, g in zip(ids, groups) if g == groups[0]][:16]
            s = self.settings
            want, _ = _yes_no_from_ids(self.model, probe, self.candidate_ids, self.pad_token_id, s.batch_size, False)
            try:
                got, _ = _yes_no_from_ids(self.model, probe, self.candidate_ids, self.pad_token_id, s.batch_size,
                                          True, force=True)
            except (RuntimeError, TypeError, ValueError) as e:  # e.g. an attention kernel that rejects the mask
                self._shared_prefix_ok = False
                logger.warning("verification: shared-prefix scoring failed on %s (%s: %s); scoring one sequence per "
                               "question", type(self.model).__name__, type(e).__name__, str(e)[:200])
                return False
            diff = float((want - got).abs().max())
            tol = exactness_tolerance(self.model) * max(1.0, float(want.abs().max()))
            self._shared_prefix_ok = diff <= tol
            if not self._shared_prefix_ok:
                logger.warning("verification: shared-prefix scores differ from per-question scores by %.3g (> %.3g) "
                               "on %s; scoring one sequence per question", diff, tol, type(self.model).__name__)
        return self._shared_prefix_ok

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Weights (safetensors; adapter only for LoRA), tokenizer and ``reward_config.json``."""
        hf_utils.save_hf(self.model, self.tokenizer, path)
        write_reward_config(path, "process", **self.settings.to_dict())

    def __repr__(self) -> str:
        return f"ProcessRewardModel(backend={self.backend!r}, model={getattr(self, 'name_or_path', None)!r})"


def tokenize_queries(tokenizer, queries: list[str], max_length: int | None,
                     owner: list[int] | None = None) -> list[list[int]]:
    """Each query tokenized whole (special tokens added), checked against ``max_length``."""
    ids = [list(x) for x in tokenizer(list(queries), add_special_tokens=True)["input_ids"]] if queries else []
    for k, q_ids in enumerate(ids):
        if max_length is not None and len(q_ids) > max_length:
            who = owner[k] if owner is not None else k
            raise ValueError(f"solution {who}: its verification query is {len(q_ids)} tokens long, more than the "
                             f"model's maximum of {max_length}; shorten it (no truncation is applied)")
        if not q_ids:
            raise ValueError(f"query {k} tokenizes to no tokens")
    return ids


def yes_no_logodds(model, tokenizer, queries: list[str], candidate_ids: list[int], pad_token_id: int,
                   batch_size: int, max_length: int | None, owner: list[int] | None = None, *,
                   shared_prefix: bool = False, groups: list[Any] | None = None) -> torch.Tensor:
    """``logit(yes) - logit(no)`` (= log p(Yes) - log p(No)) at the token after each query.

    Queries are tokenized alone. With ``shared_prefix=False`` they are left-padded by hand (with
    matching position ids) in chunks of ``batch_size``, so each score equals the score of its
    query run unpadded. With ``shared_prefix=True`` the queries of each ``groups`` key (all in
    one group when None) are packed as token trees (:mod:`reward_models.shared_prefix`): each
    shared prefix runs once; the scores are the same. The model must take a custom 4D mask
    (:func:`~reward_models.shared_prefix.tree_attention_supported`).
    """
    ids = tokenize_queries(tokenizer, queries, max_length, owner)
    if shared_prefix and not tree_attention_supported(model):
        raise ValueError(f"{type(model).__name__} takes no custom 4D attention mask: use shared_prefix=False")
    return _yes_no_from_ids(model, ids, candidate_ids, pad_token_id, batch_size, shared_prefix,
                            groups if groups is not None else [0] * len(ids))[0]


# a packed row holds the trees of one problem up to this many tokens (or the longest query)
SHARED_ROW_TOKENS = 1024


def _yes_no_from_ids(model, ids: list[list[int]], candidate_ids: list[int], pad_token_id: int, batch_size: int,
                     shared_prefix: bool, groups: list[Any] | None = None,
                     force: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """Yes/No log-odds of tokenized queries, and what went through the model (``path``,
    ``queries``, ``query_tokens``, ``model_tokens``, ``forwards``). The shared-prefix path is
    skipped (unless ``force``) when sharing would save under 10% of the tokens."""
    out = torch.zeros(len(ids), dtype=torch.float64)
    query_tokens = sum(len(x) for x in ids)
    info: dict[str, Any] = {"path": "per_query", "queries": len(ids), "query_tokens": query_tokens,
                            "model_tokens": query_tokens, "forwards": 0}
    if not ids:
        return out, info
    keep = hf_utils.supports_logits_to_keep(model)  # no vocabulary logits where no score is read
    longest = max(len(x) for x in ids)
    if shared_prefix:
        packed = pack_token_trees(ids, groups, max_row_tokens=SHARED_ROW_TOKENS)
        if force or packed.num_tokens <= 0.9 * packed.num_query_tokens:
            budget = batch_size * longest  # the padded tokens of one per-query chunk
            with hf_utils.scoring_mode(model):
                logits = tree_next_token_logits(model, packed, candidate_ids, pad_token_id, budget,
                                                logits_to_keep=keep)
            out[:] = hf_utils.class_logodds(logits, [1.0, 0.0])
            info.update(path="shared_prefix", model_tokens=packed.num_tokens,
                        forwards=len(row_batches(packed.rows, budget)))
            return out, info
    order = sorted(range(len(ids)), key=lambda k: len(ids[k]))  # similar lengths share a chunk: less padding
    extra = {"logits_to_keep": 1} if keep else {}
    with hf_utils.scoring_mode(model):
        dev = hf_utils.model_device(model)
        for idx in hf_utils.batches(len(order), batch_size):
            rows = [order[k] for k in idx]
            x, mask = hf_utils.pad_left([ids[i] for i in rows], pad_token_id)
            logits = model(input_ids=x.to(dev), attention_mask=mask.to(dev),
                           position_ids=hf_utils.position_ids(mask).to(dev), **extra).logits[:, -1, candidate_ids]
            out[rows] = hf_utils.class_logodds(logits.float(), [1.0, 0.0]).cpu()
            info["forwards"] += 1
    return out, info


def chat_layout(tokenizer, prompt: str, steps: list[str], answer: str) -> tuple[list[int], list[int]]:
    """Ids of a chat where each step is a user turn answered ``answer``, and for each step the
    position whose next-token logits predict that answer (the RLHFlow PRM convention).

    The first user turn is ``prompt + " " + steps[0]`` (or just the step with no prompt).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("layout='chat' needs a tokenizer with a chat_template")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("layout='chat' needs a fast tokenizer (offsets)")
    conv: list[dict[str, str]] = []
    starts = []
    for k, st in enumerate(steps):
        conv.append({"role": "user", "content": f"{prompt} {st}" if k == 0 and prompt else st})
        starts.append(len(tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)))
        conv.append({"role": "assistant", "content": answer})
    text = tokenizer.apply_chat_template(conv, tokenize=False)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    first = {}
    for j, (a, _b) in enumerate(enc["offset_mapping"]):
        first.setdefault(a, j)
    positions = []
    for k, c in enumerate(starts):
        j = first.get(c)
        if j is None or j == 0 or text[c:c + len(answer)] != answer:
            raise DataError(f"the answer token of step {k} merges with the chat template's text; cannot read it",
                            field=f"steps[{k}]")
        positions.append(j - 1)
    return list(enc["input_ids"]), positions


__all__ = ["BACKENDS", "DEFAULT_STEP_TEMPLATE", "ProcessRewardModel", "ProcessSettings", "chat_layout",
           "fill_template", "token_convention", "tokenize_queries", "yes_no_logodds"]
