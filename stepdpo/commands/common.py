"""Shared plumbing of the ``stepdpo`` commands: argument parsing, model and data loading.

Every command module under :mod:`stepdpo.commands` has ``make_parser()`` (a ``trl.TrlParser``
over its dataclasses) and ``main(...)``; :func:`parse` turns ``--config recipe.yaml`` plus
command-line overrides into those dataclasses, and :func:`run` does both for the CLI and the
``scripts/`` entry points.

Model names (``model_name_or_path``):

* ``tiny-gpt2`` or ``tiny-gpt2:<n_layer>x<n_embd>`` - a randomly initialised GPT-2 with the
  tokenizer shipped in :mod:`reward_models.testing` (offline; for dry runs and tests);
* anything else - a local directory or hub id, loaded with safetensors only.

Data sources (``dataset_name``):

* ``arith`` / ``arith:<n>`` - the embedded arithmetic task (:mod:`stepdpo.tasks.arith`);
* a local ``.jsonl``/``.json``/``.parquet`` file or folder, or a hub dataset, read by
  :func:`reward_models.data.load_samples` (format detected per file), or, with
  ``prompt_column`` set, read as plain rows with a prompt (and optional answer) column.

>>> parse_tiny_spec("tiny-gpt2:4x128")
{'n_layer': 4, 'n_embd': 128, 'n_head': 4}
>>> parse_arith_spec("arith:50"), parse_arith_spec("gsm8k")
(50, None)

Why one ~520-line module: it is what every command shares (parsing, loading, data routing,
answer checkers); splitting it would spread each command's setup over several files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny-gpt2"
ARITH_PREFIX = "arith"
DEFAULT_ARITH_SIZE = 256
DRY_RUN_SAMPLES = 8
DRY_RUN_STEPS = 2
DEBUG_ENV = "STEPDPO_DEBUG"  # =1: errors propagate with their traceback, like --debug
ERROR_LINES = 4  # lines of an error message shown on stderr (the whole traceback goes to a log file)
MODEL_FIX = "give an existing model folder, a hub id such as Qwen/Qwen2.5-Math-1.5B, or tiny-gpt2"


# -- shared options --------------------------------------------------------------------------------
@dataclass
class DataArguments:
    """The data options every command reads, declared once: each command's ``ScriptArguments``
    extends this (or :class:`ProblemArguments`) and redeclares only a default it changes."""

    dataset_name: str = field(default="arith", metadata={
        "help": "Data: 'arith' or 'arith:<n>' (the embedded arithmetic task, n examples), a local .jsonl/.json/"
                ".parquet file or folder in any format reward_models.data reads (PRM800K, Math-Shepherd, TRL "
                "stepwise, ProcessBench, Step-DPO, hh-rlhf, ...), or a hub dataset."})
    dataset_config: str | None = field(default=None, metadata={"help": "Configuration name of a hub dataset."})
    dataset_split: str = field(default="train", metadata={"help": "Split to read."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N examples."})
    skip_invalid: bool = field(default=False, metadata={
        "help": "Skip rows that fail validation instead of stopping; each is counted, logged and written to "
                "rejects_path."})
    rejects_path: str | None = field(default=None, metadata={
        "help": "Where skipped rows go (JSONL; default <data file>.rejects.jsonl; rows of a hub dataset are only "
                "logged unless set). Other data files of the run (eval, SFT) use their own default."})


@dataclass
class ProblemArguments(DataArguments):
    """The data options of the commands that read problems, also from plain rows (e.g. openai/gsm8k)."""

    prompt_column: str | None = field(default=None, metadata={
        "help": "Read the data as plain rows and take each problem from this column (e.g. 'question' for "
                "openai/gsm8k). Leave unset for the formats reward_models.data reads."})
    answer_column: str | None = field(default=None, metadata={
        "help": "With prompt_column: the column holding the gold answer (its final number is compared)."})
    prompt_template: str = field(default="{prompt}", metadata={
        "help": "How a problem is shown to the policy; '{prompt}' is replaced by the problem text."})


@dataclass
class RunArguments:
    """Options of the commands that run a model without a Trainer (build-pairs, label, evaluate, decode)."""

    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the model folder."})
    seed: int = field(default=0, metadata={"help": "Random seed (sampling, and the problems of the arith task)."})


# -- parsing -------------------------------------------------------------------------------------
@dataclass
class RecipeArguments:
    """Keys of a recipe read by the command line itself."""

    _argument_group_name = "recipe"

    command: str | None = field(default=None, metadata={
        "help": "The command a --config recipe is for (a recipe's `command:` key); it must match the command run."})


def make_trl_parser(dataclass_types: Sequence[type], prog: str, description: str, epilog: str = ""):
    """A ``TrlParser`` over the command's dataclasses (plus :class:`RecipeArguments`), with a
    readable description (kept verbatim) and usage examples."""
    import argparse

    from trl import TrlParser

    epilog = (epilog.rstrip("\n") + "\n\n" if epilog else "") + ERRORS_EPILOG
    return TrlParser((*dataclass_types, RecipeArguments), prog=prog,
                     usage=f"{prog} [--config FILE.yaml] [--option value ...] [--debug]", description=description,
                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


ERRORS_EPILOG = f"""\
errors:
  an error prints a few lines and the path of a log file with its full traceback;
  --debug (or {DEBUG_ENV}=1) lets it propagate with the traceback instead
"""


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML mapping of a recipe file (``yaml.safe_load``), with a clear error otherwise."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with path.open(encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a config file must hold a YAML mapping of option: value")
    return cfg


def parse(parser, argv: Sequence[str] | None, command: str | None = None) -> tuple:
    """``argv`` (``--config recipe.yaml`` plus ``--option value`` overrides) parsed by TRL's
    ``TrlParser.parse_args_and_config`` into the command's dataclasses (the recipe's ``env:``
    mapping is exported by TRL). A recipe's ``command:`` must name ``command``; unknown keys
    and unknown options are errors that name them.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    source = "the command line"
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise SystemExit("--config needs a file path")
        source = args[i + 1]
        read_recipe(source)  # a missing file or a non-mapping: a clear error before TRL reads it
    *parsed, recipe, from_config, from_args = parser.parse_args_and_config(
        args, return_remaining_strings=True, separate_remaining_strings=True)
    if command is not None and recipe.command is not None and recipe.command != command:
        raise SystemExit(f"{source} is a recipe for `stepdpo {recipe.command}`, not `stepdpo {command}`")
    for where, rest in ((source, from_config), ("the command line", from_args)):
        names = sorted({r[2:] for r in rest if r.startswith("--")}) or rest
        if names:
            raise SystemExit(f"{where}: unknown option(s) {names} for `{parser.prog}`; see `{parser.prog} --help`")
    return tuple(parsed)


def run(module, argv: Sequence[str] | None = None, command: str | None = None):
    """Parse ``argv`` with ``module.make_parser()`` and call ``module.main(*parsed)``.

    An error ends the command with a few lines on stderr and exit status 1 (:func:`reported_errors`);
    a bare ``--debug`` anywhere in ``argv`` (or ``STEPDPO_DEBUG=1``) lets it propagate instead."""
    from stepdpo.distributed import init_distributed, shutdown

    args, debug = strip_debug(sys.argv[1:] if argv is None else argv)
    command = command or getattr(module, "COMMAND", None)
    setup_logging()
    with reported_errors(command, args, debug):
        parsed = parse(module.make_parser(), args, command)
        init_distributed()  # several processes (accelerate launch): join their group before any work
        result = module.main(*parsed)
    shutdown()  # only after a clean run: on an error the processes stop without waiting for each other
    return result


# -- errors --------------------------------------------------------------------------------------
class CommandFailed(SystemExit):
    """A command's error, already reported on stderr: exit status 1; ``str()`` is the message."""

    def __init__(self, message: str):
        super().__init__(1)
        self.message = message

    def __str__(self) -> str:
        return self.message


# messages that are clear without the exception's type (a KeyError's is just the key)
CLEAR_ERRORS = (ValueError, OSError, RuntimeError, ImportError, NotImplementedError, SystemExit)


def strip_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without a bare ``--debug``, and whether errors propagate (that flag or ``STEPDPO_DEBUG=1``).

    ``--debug`` followed by a value (``--debug underflow_overflow``) is the ``transformers``
    training option and stays.

    >>> strip_debug(["--dry_run", "--debug"])[0], strip_debug(["--debug", "underflow_overflow"])[0]
    (['--dry_run'], ['--debug', 'underflow_overflow'])
    """
    argv = list(argv)
    debug = debug_from_env()
    args = []
    for i, arg in enumerate(argv):
        if arg == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            debug = True
        else:
            args.append(arg)
    return args, debug


def debug_from_env() -> bool:
    """Whether ``STEPDPO_DEBUG`` asks for errors to propagate with their traceback."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def error_message(err: BaseException, max_lines: int = ERROR_LINES, width: int = 400) -> str:
    """The first ``max_lines`` non-blank lines of ``err``'s message (each cut at ``width``), led by
    its type when the message alone would be unclear.

    >>> error_message(KeyError("label")), error_message(ValueError("a\\n\\nb\\nc"), max_lines=2)
    ("KeyError: 'label'", 'a\\nb ...')
    """
    text = str(err.code) if isinstance(err, SystemExit) else str(err)
    lines = [line.rstrip()[:width] for line in text.strip().splitlines() if line.strip()]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " ..."
    if not lines or not isinstance(err, CLEAR_ERRORS):
        lines[:1] = [f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__]
    return "\n".join(lines)


def write_traceback(err: BaseException, command: str | None, argv: Sequence[str]) -> str | None:
    """Write ``err``'s full traceback to ``<tempdir>/stepdpo-<command>-<time>-<pid>.log``; its path,
    or None when it cannot be written."""
    import shlex
    import tempfile
    import time
    import traceback

    path = Path(tempfile.gettempdir()) / f"stepdpo-{command or 'cli'}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    head = f"stepdpo {command or ''} {shlex.join(argv)}".replace("  ", " ").strip()
    try:
        path.write_text(head + "\n\n" + "".join(traceback.format_exception(err)), encoding="utf-8")
    except OSError:
        return None
    return str(path)


def report_error(err: BaseException, command: str | None, argv: Sequence[str] = ()) -> CommandFailed:
    """Print ``err`` on stderr as ``stepdpo <command>: error: <message>`` plus, unless it is a
    deliberate ``SystemExit`` message, where its full traceback was written; returns the
    :class:`CommandFailed` to raise. Every failing process reports its own error (no collective)."""
    from stepdpo.distributed import world

    n, rank = world()
    where = f" (process {rank} of {n})" if n > 1 else ""
    message = error_message(err)
    lines = [f"stepdpo {command}: error{where}: " if command else f"stepdpo: error{where}: "]
    lines[0] += message.replace("\n", "\n  ")
    if not isinstance(err, SystemExit):
        log = write_traceback(err, command, argv)
        lines.append(f"full traceback: {log} (or rerun with --debug)" if log
                     else "rerun with --debug for the full traceback")
    print("\n".join(lines), file=sys.stderr, flush=True)
    return CommandFailed(message)


@contextmanager
def reported_errors(command: str | None, argv: Sequence[str] = (), debug: bool = False) -> Iterator[None]:
    """Turn an error in the block into :func:`report_error`'s few lines and exit status 1.

    ``KeyboardInterrupt`` and a ``SystemExit`` with a status (``--help``: 0, a usage error: 2)
    pass unchanged; a ``SystemExit`` with a message is shown without a traceback log. With
    ``debug`` every error propagates unchanged."""
    try:
        yield
    except SystemExit as e:
        if debug or e.code is None or isinstance(e.code, int):
            raise
        raise report_error(e, command, argv) from None
    except Exception as e:
        if debug:
            raise
        raise report_error(e, command, argv) from None


def setup_logging(level: int = logging.INFO) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    for name in ("stepdpo", "reward_models"):
        logging.getLogger(name).setLevel(level)


# -- models --------------------------------------------------------------------------------------
def parse_tiny_spec(name: str | None) -> dict[str, int] | None:
    """Sizes of a ``tiny-gpt2[:<n_layer>x<n_embd>]`` model name, or None for any other name."""
    if not name or not str(name).startswith(TINY_PREFIX):
        return None
    rest = str(name)[len(TINY_PREFIX):]
    if not rest:
        return {"n_layer": 2, "n_embd": 64, "n_head": 2}
    m = re.fullmatch(r":(\d+)x(\d+)", rest)
    if not m:
        raise ValueError(f"model name {name!r}: expected 'tiny-gpt2' or 'tiny-gpt2:<n_layer>x<n_embd>' "
                         "(e.g. tiny-gpt2:4x128)")
    n_layer, n_embd = int(m.group(1)), int(m.group(2))
    n_head = max(1, n_embd // 32)
    if n_layer < 1 or n_embd < 8 or n_embd % n_head:
        raise ValueError(f"model name {name!r}: need n_layer >= 1 and n_embd >= 8")
    return {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head}


def is_tiny(name: str | None) -> bool:
    return parse_tiny_spec(name) is not None


def check_model_path(name: str | os.PathLike, what: str = "model", fix: str = MODEL_FIX) -> None:
    """Raise ``FileNotFoundError`` (naming the path and ``fix``) when ``name`` looks like a local
    path - starts with ``/ ./ ../ ~``, ends with ``/``, has two or more ``/``, or its parent folder
    exists here - but does not exist (``transformers`` would report a malformed hub repo id).

    >>> check_model_path("Qwen/Qwen2.5-Math-1.5B"); check_model_path("/no/such/model")
    Traceback (most recent call last):
    FileNotFoundError: model folder /no/such/model does not exist: give an existing model folder, ...
    """
    text = str(name)
    path = Path(text).expanduser()
    if is_tiny(text) or path.exists():
        return
    looks_local = (text.startswith(("/", "./", "../", "~")) or text.endswith("/") or text.count("/") >= 2
                   or ("/" in text and path.parent.exists()))
    if looks_local:
        shown = text if path.is_absolute() else f"{text} (looked for {path.absolute()})"
        raise FileNotFoundError(f"{what} folder {shown} does not exist: {fix}")


def load_tokenizer(name: str, trust_remote_code: bool = False, revision: str | None = None):
    """The tokenizer of ``name`` (the shipped tiny tokenizer for ``tiny-gpt2``)."""
    if is_tiny(name):
        from reward_models.testing import tiny_tokenizer

        return tiny_tokenizer()
    check_model_path(name)
    from transformers import AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    tok = AutoTokenizer.from_pretrained(name, **kwargs)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # a copy owned by this run; nothing shared is mutated
    return tok


def save_tiny_base(name: str, build, output_dir: str | os.PathLike, seed: int = 0) -> str:
    """Build the tiny model ``name`` with ``build(tokenizer, seed=, **sizes)`` and save it (with its
    tokenizer) to ``<output_dir>/base_model``; returns that folder.

    The run then loads it like any checkpoint, so a LoRA adapter saved later names a base
    model that exists on disk and the saved folder reloads.
    """
    from reward_models.testing import save_tiny, tiny_tokenizer
    from stepdpo.distributed import is_main_process, main_process_first

    spec = parse_tiny_spec(name)
    if spec is None:
        raise ValueError(f"{name!r} is not a tiny-gpt2 model name")
    path = Path(output_dir) / "base_model"
    with main_process_first():  # built and saved once per run: the other processes wait, then load it
        if is_main_process():
            tok = tiny_tokenizer()
            save_tiny(build(tok, seed=seed, **spec), tok, path)
    return str(path)


def absolute_if_local(name: str) -> str:
    """``name`` made absolute when it is a local folder: a LoRA adapter saved later names its base
    model by this path, and must load from any working directory. Hub ids pass unchanged."""
    return os.path.abspath(name) if os.path.isdir(name) else name


def kbit_device_map() -> dict[str, int] | None:
    """Where a 4/8-bit model goes: this process's GPU (one model copy per process)."""
    import torch

    if not torch.cuda.is_available():
        return None
    from accelerate import PartialState

    return {"": PartialState().local_process_index}


def check_quantization(model_args) -> None:
    if model_args is None or not (model_args.load_in_4bit or model_args.load_in_8bit):
        return
    import torch

    if not torch.cuda.is_available():
        raise ValueError("load_in_4bit/load_in_8bit need a CUDA GPU with bitsandbytes; this machine has none. "
                         "Drop the option to train in full precision (LoRA still works).")
    if not model_args.use_peft:
        raise ValueError("a 4/8-bit base model can only be trained through adapters: set use_peft: true")


def load_causal_lm(name: str, model_args=None, *, trust_remote_code: bool = False, seed: int = 0):
    """A causal LM policy from ``name`` (tiny spec, directory or hub id), safetensors only.

    With ``model_args`` (a ``trl.ModelConfig``): revision, dtype, attention implementation and
    4/8-bit loading (``load_in_4bit``, placed on this process's GPU) apply. The tiny model
    ignores them (it is always float32, never quantized).
    """
    spec = parse_tiny_spec(name)
    if spec is not None:
        from reward_models.testing import tiny_causal_lm

        if model_args is not None and (model_args.load_in_4bit or model_args.load_in_8bit):
            logger.warning("%s: the tiny test model is never quantized; load_in_4bit/load_in_8bit ignored", name)
        return tiny_causal_lm(load_tokenizer(name), seed=seed, **spec)
    check_model_path(name)
    check_quantization(model_args)
    from transformers import AutoModelForCausalLM

    from reward_models.hf_utils import safe_from_pretrained

    kwargs: dict[str, Any] = {}
    if model_args is not None:
        from trl import get_quantization_config

        kwargs["revision"] = model_args.model_revision
        if model_args.dtype not in (None, "auto"):
            import torch

            kwargs["dtype"] = getattr(torch, model_args.dtype)
        elif model_args.dtype == "auto":
            kwargs["dtype"] = "auto"
        if model_args.attn_implementation:
            kwargs["attn_implementation"] = model_args.attn_implementation
        quant = get_quantization_config(model_args)
        if quant is not None:
            kwargs["quantization_config"] = quant
            kwargs["device_map"] = kbit_device_map()
    return safe_from_pretrained(AutoModelForCausalLM, name, trust_remote_code=trust_remote_code, **kwargs)


def bf16_available() -> bool:
    from reward_models.hf_utils import bf16_supported

    return bf16_supported()


def to_device(model):
    """Move a model that is not quantized/dispatched to this process's device (inference
    commands): its own GPU under ``accelerate launch``, cuda when there is one, else cpu."""
    from stepdpo.distributed import device

    if getattr(model, "hf_device_map", None) or getattr(model, "is_loaded_in_4bit", False) \
            or getattr(model, "is_loaded_in_8bit", False):
        return model
    return model.to(device())


# -- data ----------------------------------------------------------------------------------------
def parse_arith_spec(source: str | None) -> int | None:
    """Size of an ``arith`` / ``arith:<n>`` source, or None for any other source."""
    if source is None:
        return None
    source = str(source)
    if source == ARITH_PREFIX:
        return DEFAULT_ARITH_SIZE
    m = re.fullmatch(r"arith:(\d+)", source)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise ValueError(f"{source!r}: need at least one problem")
        return n
    if source.startswith(ARITH_PREFIX + ":") and not Path(source).exists():
        raise ValueError(f"data source {source!r}: expected 'arith' or 'arith:<n>'")
    return None


@dataclass
class Data:
    """What a data source held, in canonical types.

    ``items``: StepSample / StepPair / PreferencePair objects (from a known format);
    ``prompts``/``answers``: the prompts (and gold answers, or None) of every item or row;
    ``checker``: ``checker(prompt, steps, answer) -> bool`` when correctness can be judged
    (the arithmetic task's checker, or a numeric final-answer match); ``rejected``: rows skipped
    as invalid (``skip_invalid``), written to ``rejects_path`` when it is set.
    """

    source: str
    items: list[Any] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    answers: list[Any] | None = None
    checker: Callable[[str, list[str], Any], bool] | None = None
    is_arith: bool = False
    rejected: int = 0
    rejects_path: str | None = None

    def of_type(self, *types) -> list[Any]:
        return [x for x in self.items if isinstance(x, types)]


def arith_checker(prompt: str, steps: list[str], answer: Any = None) -> bool:
    """Whether ``steps`` solve the arithmetic ``prompt`` (the answer argument is not needed)."""
    from stepdpo.tasks.arith import ArithConfig, is_correct

    try:
        return is_correct(ArithConfig().expression_of(prompt), list(steps))
    except ValueError:
        return False


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str | None) -> float | None:
    """The number a solution or gold answer ends with: after ``####`` (GSM8K), inside the last
    ``\\boxed{}``, after the last "answer is", else the last number in the text.

    >>> final_number("... so 5+7=12.\\n#### 12"), final_number("The answer is: 3,400"), final_number("none")
    (12.0, 3400.0, None)
    """
    if text is None:
        return None
    text = str(text)[-2000:]
    for marker in ("####", "\\boxed{", "answer is"):
        k = text.rfind(marker)
        if k >= 0:
            found = _NUMBER.findall(text[k + len(marker):])
            if found:
                return _to_float(found[0])
    found = _NUMBER.findall(text)
    return _to_float(found[-1]) if found else None


def _to_float(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def numeric_checker(prompt: str, steps: list[str], answer: Any) -> bool:
    """A solution is correct when its final number equals the gold answer's final number."""
    want = final_number(answer)
    got = final_number("\n".join(steps[-2:])) if steps else None
    return want is not None and got is not None and math.isclose(want, got, rel_tol=1e-6, abs_tol=1e-6)


def read_data(source: str, *, split: str = "train", config: str | None = None, max_samples: int | None = None,
              step_format=None, prompt_column: str | None = None, answer_column: str | None = None,
              prompt_template: str = "{prompt}", arith_error_rate: float = 0.0, seed: int = 0,
              neutral: str = "positive", skip_invalid: bool = False, rejects_path: str | None = None) -> Data:
    """Read a data source (see the module docstring) into :class:`Data`.

    A row that fails validation raises a ``DataError`` naming file, row and field; with
    ``skip_invalid`` it is skipped, counted in ``Data.rejected``, logged, and written (by the
    main process only) to ``rejects_path`` (default ``<data file>.rejects.jsonl``).
    """
    from reward_models.types import StepPair, StepSample

    if not source:
        raise ValueError("no dataset given: set dataset_name (e.g. arith:200, a JSONL file or a hub dataset)")
    if "{prompt}" not in prompt_template:
        raise ValueError(f"prompt_template must contain '{{prompt}}', got {prompt_template!r}")
    n = parse_arith_spec(source)
    if n is not None:
        from stepdpo.tasks.arith import STEP_FORMAT as ARITH_FORMAT
        from stepdpo.tasks.arith import make_splits

        if split not in ("train", "test"):
            raise ValueError(f"the arith task has splits 'train' and 'test', not {split!r}")
        if step_format is not None and step_format.separator != ARITH_FORMAT.separator:
            raise ValueError("the arith task uses the step separator '\\n'")
        n = min(n, max_samples) if max_samples else n
        ds = make_splits(seed=seed, n_train=n, n_test=n, error_rate=arith_error_rate)[split]
        items = [StepSample.from_dict(row) for row in ds]
        return Data(source=source, items=items, prompts=[s.prompt for s in items],
                    answers=[s.answer for s in items], checker=arith_checker, is_arith=True)

    rejects_path = _rejects_path(source, rejects_path) if skip_invalid else None
    if prompt_column:
        from reward_models.data import RejectsWriter
        from reward_models.types import DataError

        rows = _raw_rows(source, split, config)
        if max_samples:
            rows = rows[:max_samples]
        prompts, answers, rejected = [], [], 0
        with RejectsWriter(rejects_path) as reject:
            for i, row in rows:
                try:
                    if isinstance(row, DataError):  # a line that is not JSON or not UTF-8
                        raise row.at(source=source, row=i)
                    value = row.get(prompt_column) if isinstance(row, dict) else None
                    if not isinstance(value, str) or not value.strip():
                        raise DataError("missing or empty", source=source, row=i, field=prompt_column)
                    if answer_column and row.get(answer_column) is None:
                        raise DataError("missing", source=source, row=i, field=answer_column)
                except DataError as err:
                    if not skip_invalid:
                        raise
                    rejected += 1
                    logger.warning("skipping invalid row: %s", err)
                    reject(err, row)
                    continue
                prompts.append(prompt_template.replace("{prompt}", value))
                if answer_column:
                    answers.append(str(row[answer_column]))
        if rejected and not prompts:
            raise DataError(f"no valid rows ({rejected} of {len(rows)} rejected)", source=source)
        return Data(source=source, prompts=prompts, answers=answers if answer_column else None,
                    checker=numeric_checker if answer_column else None, rejected=rejected,
                    rejects_path=rejects_path if rejected else None)

    from reward_models.data import load_samples_with_stats

    kwargs: dict[str, Any] = {"split": split, "config": config, "neutral": neutral, "skip_invalid": skip_invalid,
                              "rejects_path": rejects_path}
    if step_format is not None:
        kwargs["step_format"] = step_format
    items, stats = load_samples_with_stats(source, **kwargs)
    if max_samples:
        items = items[:max_samples]
    prompts = [x.prompt for x in items]
    answers = None
    if items and all(isinstance(x, StepSample) and x.answer is not None for x in items):
        answers = [x.answer for x in items]
    elif items and all(isinstance(x, StepPair) for x in items):
        answers = None
    return Data(source=source, items=items, prompts=prompts, answers=answers,
                checker=numeric_checker if answers is not None else None, rejected=stats.rejected,
                rejects_path=rejects_path if stats.rejected else None)


def _rejects_path(source: str, rejects_path: str | None) -> str | None:
    """Where this process writes skipped rows: ``rejects_path``, else ``<data file>.rejects.jsonl``
    for local data (None for a hub dataset); None on all but the main process (one writer)."""
    from stepdpo.distributed import is_main_process

    if not is_main_process():
        return None
    if rejects_path:
        return str(rejects_path)
    path = Path(source).expanduser()
    return f"{str(path).rstrip('/')}.rejects.jsonl" if path.exists() else None


def rejected_rows(*datas: Data | None) -> dict[str, int]:
    """``{"rejected_rows": n}`` for a command's summary when rows were skipped as invalid, else ``{}``."""
    n = sum(d.rejected for d in datas if d is not None)
    return {"rejected_rows": n} if n else {}


def _raw_rows(source: str, split: str, config: str | None) -> list[tuple[int, Any]]:
    path = Path(source)
    if path.is_file():
        from reward_models.data import iter_file_rows

        return list(iter_file_rows(path))
    if path.exists() or source.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{source}: not a data file (folders are read without prompt_column)")
    import datasets

    return list(enumerate(datasets.load_dataset(source, config, split=split).to_list()))


def reward_model_from_spec(spec: str | None, *, policy=None, tokenizer=None, step_format=None):
    """A reward model from a command-line value.

    ``checker:arith`` - the arithmetic task's exact checker; ``self`` (or empty) - the policy's
    own Yes/No verification prompt (needs ``policy``/``tokenizer``; returns None when they are
    not given, so a trainer picks its default judge); anything else - a saved reward-model
    directory (:func:`reward_models.base.load_reward_model`).
    """
    if spec in (None, "", "self"):
        if policy is None:
            return None
        from stepdpo.trainer import default_judge

        return default_judge(policy, tokenizer, step_format)
    if spec == "checker:arith":
        from stepdpo.tasks.arith import checker_reward_model

        return checker_reward_model()
    if str(spec).startswith("checker:"):
        raise ValueError(f"unknown checker {spec!r}; available: checker:arith")
    from reward_models.base import load_reward_model
    from stepdpo.distributed import device

    check_model_path(spec, "reward model", "give a saved reward-model folder (e.g. the output_dir of `stepdpo "
                     "train-prm`), a hub id, checker:arith or self")
    return load_reward_model(spec, device=str(device()))  # this process's own GPU under accelerate launch


# -- outputs -------------------------------------------------------------------------------------
def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write a command's result JSON atomically (a uniquely named temporary file, then rename);
    a dict gets the library versions it was produced with under ``versions``."""
    from stepdpo.distributed import atomic_write_text
    from stepdpo.report import library_versions

    if isinstance(obj, dict) and "versions" not in obj:
        obj = {**obj, "versions": library_versions()}
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def write_jsonl(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """Write one JSON object per line, atomically (a uniquely named temporary file, then rename)."""
    from stepdpo.distributed import atomic_write_text

    return atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


def read_problems(args: ProblemArguments, step_format, seed: int) -> tuple[Data, list[str], list[Any] | None]:
    """The data named by ``args`` (:func:`read_data`), and its distinct problems with their answers."""
    data = read_data(args.dataset_name, split=args.dataset_split, config=args.dataset_config,
                     max_samples=args.max_samples, step_format=step_format, prompt_column=args.prompt_column,
                     answer_column=args.answer_column, prompt_template=args.prompt_template, seed=seed,
                     skip_invalid=args.skip_invalid, rejects_path=args.rejects_path)
    prompts, answers = unique_prompts(data.prompts, data.answers)
    return data, prompts, answers


def shrink_training_for_dry_run(training_args) -> None:
    """The training settings of every ``--dry_run``: a few optimizer steps on small batches, no
    checkpoints, evaluation or reporting, every step logged."""
    training_args.max_steps = DRY_RUN_STEPS
    training_args.save_strategy = "no"
    training_args.eval_strategy = "no"
    training_args.logging_steps = 1
    training_args.report_to = []
    training_args.gradient_accumulation_steps = 1
    training_args.per_device_train_batch_size = min(training_args.per_device_train_batch_size, 4)


def shrink_for_dry_run(script_args, **caps: int) -> None:
    """With ``--dry_run``: at most :data:`DRY_RUN_SAMPLES` problems and each option named in
    ``caps`` lowered to its cap (never raised)."""
    if not script_args.dry_run:
        return
    script_args.max_samples = min(script_args.max_samples or DRY_RUN_SAMPLES, DRY_RUN_SAMPLES)
    for name, cap in caps.items():
        setattr(script_args, name, min(getattr(script_args, name), cap))


def policy_name(model_args) -> str:
    """The policy's ``model_name_or_path``; exits with the fix when none was given."""
    if not model_args.model_name_or_path:
        raise SystemExit("no policy given: set model_name_or_path")
    return model_args.model_name_or_path


def unique_prompts(prompts, answers):
    """Problems in first-seen order (labeled data holds several solutions per problem).

    >>> unique_prompts(["a", "b", "a"], ["1", "2", "1"])
    (['a', 'b'], ['1', '2'])
    """
    seen: dict[str, int] = {}
    for i, p in enumerate(prompts):
        seen.setdefault(p, i)
    idx = list(seen.values())
    return [prompts[i] for i in idx], ([answers[i] for i in idx] if answers is not None else None)


def chunks(items: Sequence[Any], size: int):
    """Consecutive slices of ``items`` of at most ``size``.

    >>> [list(c) for c in chunks([1, 2, 3], 2)]
    [[1, 2], [3]]
    """
    if size < 1:
        raise ValueError("chunk size must be >= 1")
    for start in range(0, len(items), size):
        yield items[start:start + size]


def print_summary(title: str, values: dict[str, Any]) -> None:
    """One readable block on stdout at the end of a command (what it did, where outputs went)."""
    print(f"[stepdpo {title}]")
    for k, v in values.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        print(f"  {k}: {v}")


def use_answers(check_answers: bool | None, answers, checker) -> bool:
    """Whether pair building uses gold answers: ``None`` = when the data has them (said in the log),
    ``True`` = required (a clear error otherwise), ``False`` = never."""
    available = answers is not None and checker is not None
    if check_answers and not available:
        raise SystemExit("check_answers needs gold answers: the arith task, or --answer_column with a checkable "
                         "answer")
    if check_answers is None:
        logger.info("gold answers %s: %s", "found" if available else "not found",
                    "only wrong solutions are searched for errors and rollout-verified chosen steps are preferred"
                    if available else "pairs rely on the judge alone")
    return bool(available if check_answers is None else check_answers)


__all__ = ["CommandFailed", "Data", "DataArguments", "ProblemArguments", "RecipeArguments", "RunArguments", "arith_checker", "use_answers", "check_model_path", "chunks", "final_number", "is_tiny", "kbit_device_map", "load_causal_lm",
           "load_tokenizer", "make_trl_parser", "numeric_checker", "parse", "parse_arith_spec", "parse_tiny_spec",
           "print_summary", "read_data", "read_problems", "rejected_rows", "reported_errors", "shrink_training_for_dry_run", "unique_prompts", "read_recipe", "reward_model_from_spec", "run", "to_device", "write_json",
           "write_jsonl"]

