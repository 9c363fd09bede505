"""The embedded task: multi-step integer arithmetic with checkable steps.

A problem is an expression such as ``(3+4)*2-5``; its gold solution reduces one innermost
operation per step, then states the answer::

    Q: (3+4)*2-5
    3+4=7
    7*2=14
    14-5=9
    Answer: 9

Everything here is deterministic given a seed, and nothing ever evaluates text as code: the
:func:`check_solution` checker is a small parser over digits and ``+ - * ( )`` with hard
limits on lengths and number sizes, so hostile steps (``__import__('os')...``, ``9**9**9**9``,
``1e999999``, 10,000-character strings) are simply invalid steps.

>>> check_solution("(3+4)*2-5", ["3+4=7", "7*2=14", "14-5=9", "Answer: 9"]).correct
True
>>> check_solution("(3+4)*2-5", ["3+4=7", "7*2=15", "15-5=10", "Answer: 10"]).first_error
1
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Union

from reward_models.steps import StepFormat
from reward_models.types import StepSample

MAX_STEP_CHARS = 200  # longer steps are invalid without being parsed
MAX_EXPR_CHARS = 400
MAX_DIGITS = 18  # larger literals are invalid (keeps every product small and fast)
MAX_DEPTH = 32  # parenthesis nesting

STEP_FORMAT = StepFormat(separator="\n")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
PRECEDENCE = {"+": 1, "-": 1, "*": 2}
ERROR_KINDS = ("slip", "wrong_operand", "dropped_term")


@dataclass(frozen=True)
class Op:
    """An operation node of an expression tree."""

    op: str
    left: Tree
    right: Tree


Tree = Union[int, Op]

_NUM = rf"-?\d{{1,{MAX_DIGITS}}}"
_STEP_RE = re.compile(rf"^\s*({_NUM})\s*([-+*])\s*({_NUM})\s*=\s*({_NUM})\s*$")
_ANSWER_RE = re.compile(rf"^\s*Answer:\s*({_NUM})\s*$")
_ANSWER_SEARCH = re.compile(rf"Answer:\s*({_NUM})(?!\d)")
_TOKEN_RE = re.compile(r"\s*(\d+|[-+*()])")


# -- parsing and rendering -------------------------------------------------------------------
class ParseError(ValueError):
    pass


def parse_expression(text: str) -> Tree:
    """Parse ``text`` (integers, ``+ - *``, parentheses) into a tree. Raises :class:`ParseError`."""
    if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
        raise ParseError("not a string or too long")
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise ParseError(f"unexpected character {text[pos]!r}")
        tok = m.group(1)
        if tok.isdigit() and len(tok) > MAX_DIGITS:
            raise ParseError("number too long")
        tokens.append(tok)
        pos = m.end()
    tree, i = _parse_sum(tokens, 0, 0)
    if i != len(tokens):
        raise ParseError(f"unexpected {tokens[i]!r}")
    return tree


def _parse_sum(toks: list[str], i: int, depth: int) -> tuple[Tree, int]:
    left, i = _parse_product(toks, i, depth)
    while i < len(toks) and toks[i] in "+-":
        op = toks[i]
        right, i = _parse_product(toks, i + 1, depth)
        left = Op(op, left, right)
    return left, i


def _parse_product(toks: list[str], i: int, depth: int) -> tuple[Tree, int]:
    left, i = _parse_atom(toks, i, depth)
    while i < len(toks) and toks[i] == "*":
        right, i = _parse_atom(toks, i + 1, depth)
        left = Op("*", left, right)
    return left, i


def _parse_atom(toks: list[str], i: int, depth: int) -> tuple[Tree, int]:
    if depth > MAX_DEPTH:
        raise ParseError("nested too deeply")
    if i >= len(toks):
        raise ParseError("unexpected end")
    tok = toks[i]
    if tok == "(":
        tree, i = _parse_sum(toks, i + 1, depth + 1)
        if i >= len(toks) or toks[i] != ")":
            raise ParseError("missing ')'")
        return tree, i + 1
    if tok == "-" and i + 1 < len(toks) and toks[i + 1].isdigit():
        return -int(toks[i + 1]), i + 2
    if tok.isdigit():
        return int(tok), i + 1
    raise ParseError(f"unexpected {tok!r}")


def render(tree: Tree) -> str:
    """Render a tree with the minimal parentheses (left-associative ``+ - *``)."""
    if isinstance(tree, int):
        return str(tree)
    left, right = render(tree.left), render(tree.right)
    p = PRECEDENCE[tree.op]
    if isinstance(tree.left, Op) and PRECEDENCE[tree.left.op] < p:
        left = f"({left})"
    if isinstance(tree.right, Op) and PRECEDENCE[tree.right.op] <= p:
        right = f"({right})"
    return f"{left}{tree.op}{right}"


def evaluate(tree: Tree) -> int:
    """Value of a tree (integer arithmetic on the parsed tree; never ``eval``)."""
    if isinstance(tree, int):
        return tree
    return OPS[tree.op](evaluate(tree.left), evaluate(tree.right))


def count_ops(tree: Tree) -> int:
    return 0 if isinstance(tree, int) else 1 + count_ops(tree.left) + count_ops(tree.right)


def format_step(a: int, op: str, b: int, c: int) -> str:
    return f"{a}{op}{b}={c}"


def format_answer(value: int) -> str:
    return f"Answer: {value}"


# -- reduction -------------------------------------------------------------------------------
def _innermost(tree: Tree, path: tuple[int, ...] = ()) -> list[tuple[tuple[int, ...], Op]]:
    """All nodes whose children are both numbers, left to right, with their paths."""
    if isinstance(tree, int):
        return []
    if isinstance(tree.left, int) and isinstance(tree.right, int):
        return [(path, tree)]
    return _innermost(tree.left, path + (0,)) + _innermost(tree.right, path + (1,))


def _replace(tree: Tree, path: tuple[int, ...], new: Tree) -> Tree:
    if not path:
        return new
    assert isinstance(tree, Op)
    if path[0] == 0:
        return Op(tree.op, _replace(tree.left, path[1:], new), tree.right)
    return Op(tree.op, tree.left, _replace(tree.right, path[1:], new))


def _get(tree: Tree, path: tuple[int, ...]) -> Tree:
    for k in path:
        assert isinstance(tree, Op)
        tree = tree.left if k == 0 else tree.right
    return tree


def gold_steps(tree: Tree) -> list[str]:
    """Canonical solution: reduce the leftmost innermost operation each step, then the answer."""
    steps = []
    while isinstance(tree, Op):
        path, node = _innermost(tree)[0]
        c = OPS[node.op](node.left, node.right)
        steps.append(format_step(node.left, node.op, node.right, c))
        tree = _replace(tree, path, c)
    steps.append(format_answer(tree))
    return steps


# -- checking --------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """Outcome of :func:`check_solution`.

    ``step_ok[i]`` is True when steps ``0..i`` are all valid reductions of the problem (so a
    correct answer is still reachable); ``first_error`` is the index of the first invalid step
    (None when there is none); ``correct`` means no invalid step and the right final answer.
    """

    step_ok: list[bool]
    first_error: int | None
    answer: int | None
    correct: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[float]:
        return [1.0 if ok else 0.0 for ok in self.step_ok]


def _check_step(state: Tree, step: object) -> tuple[Tree | None, int | None, str]:
    """Apply one step to ``state``; return (new state or None if invalid, answer, reason)."""
    if not isinstance(step, str) or len(step) > MAX_STEP_CHARS:
        return None, None, "not a string or longer than %d characters" % MAX_STEP_CHARS
    m = _ANSWER_RE.match(step)
    if m:
        value = int(m.group(1))
        if isinstance(state, Op):
            return None, value, "answer given before the expression is fully reduced"
        if value != state:
            return None, value, f"wrong answer {value}, expected {state}"
        return state, value, ""
    m = _STEP_RE.match(step)
    if not m:
        return None, None, "not of the form 'a op b = c' or 'Answer: n'"
    a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
    if isinstance(state, int):
        return None, None, "the expression is already reduced"
    for path, node in _innermost(state):
        if node.op == op and node.left == a and node.right == b:
            if OPS[op](a, b) != c:
                return None, None, f"arithmetic error: {a}{op}{b} is {OPS[op](a, b)}, not {c}"
            return _replace(state, path, c), None, ""
    return None, None, f"{a}{op}{b} is not an operation that can be done next"


def check_solution(problem: str | Tree, steps: list[str]) -> CheckResult:
    """Verify a step-by-step solution of ``problem`` (expression text or tree) without eval.

    Steps after the answer, unparseable steps and anything too long are invalid steps.
    """
    tree = parse_expression(problem) if isinstance(problem, str) else problem
    target = evaluate(tree)
    state: Tree | None = tree
    ok, reasons, answer, done = [], [], None, False
    for step in steps:
        if state is None or done:
            ok.append(False)
            reasons.append("after an invalid step" if state is None else "step after the final answer")
            continue
        new, value, reason = _check_step(state, step)
        if value is not None:
            answer = value
        if new is None:
            state = None
            ok.append(False)
            reasons.append(reason)
            continue
        state = new
        ok.append(True)
        reasons.append("")
        if value is not None:
            done = True
    first_error = next((i for i, v in enumerate(ok) if not v), None)
    correct = first_error is None and done and answer == target
    return CheckResult(step_ok=ok, first_error=first_error, answer=answer, correct=correct, reasons=reasons)


def extract_answer(text_or_steps: str | list[str]) -> int | None:
    """The last ``Answer: n`` in a solution, or None."""
    text = "\n".join(text_or_steps) if isinstance(text_or_steps, list) else text_or_steps
    if not isinstance(text, str):
        return None
    found = _ANSWER_SEARCH.findall(text[-10_000:])
    return int(found[-1]) if found else None


# -- generation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArithConfig:
    """Difficulty knobs of the arithmetic task.

    Args:
        min_steps, max_steps: number of operations (2 to 6).
        min_operand, max_operand: range of operands after the first.
        start_min, start_max: range of the first operand (defaults to the operand range).
        ops: operators to draw from, a subset of ``"+-*"``.
        paren_prob: probability of wrapping a random sub-chain in parentheses.
        allow_negative: whether intermediate values may be negative.
        max_value: bound on the absolute value of every intermediate result.
        prompt_template: how a problem is shown to the policy; ``{expr}`` is the expression.
    """

    min_steps: int = 2
    max_steps: int = 3
    min_operand: int = 2
    max_operand: int = 9
    start_min: int | None = 2
    start_max: int | None = 19
    ops: str = "+-"
    paren_prob: float = 0.0
    allow_negative: bool = False
    max_value: int = 10_000
    prompt_template: str = "Q: {expr}\n"

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps <= 6:
            raise ValueError("need 1 <= min_steps <= max_steps <= 6")
        if not 0 <= self.min_operand <= self.max_operand:
            raise ValueError("need 0 <= min_operand <= max_operand")
        if not self.ops or set(self.ops) - set(OPS):
            raise ValueError(f"ops must be a non-empty subset of '+-*', got {self.ops!r}")
        if not 0.0 <= self.paren_prob <= 1.0:
            raise ValueError("paren_prob must be in [0, 1]")
        if "{expr}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{expr}'")

    def prompt(self, expr: str) -> str:
        return self.prompt_template.format(expr=expr)

    def expression_of(self, prompt: str) -> str:
        """Inverse of :meth:`prompt`."""
        head, _, tail = self.prompt_template.partition("{expr}")
        if not (prompt.startswith(head) and prompt.endswith(tail)):
            raise ValueError(f"prompt {prompt[:60]!r} does not follow the template {self.prompt_template!r}")
        return prompt[len(head): len(prompt) - len(tail) if tail else None]


def _values_ok(tree: Tree, cfg: ArithConfig) -> bool:
    if isinstance(tree, int):
        return True
    if not (_values_ok(tree.left, cfg) and _values_ok(tree.right, cfg)):
        return False
    v = evaluate(tree)
    return abs(v) <= cfg.max_value and (cfg.allow_negative or v >= 0)


def random_problem(rng: random.Random, cfg: ArithConfig) -> Tree:
    """Draw one expression tree satisfying ``cfg`` (rejection sampling)."""
    for _ in range(10_000):
        n = rng.randint(cfg.min_steps, cfg.max_steps)
        lo, hi = cfg.start_min if cfg.start_min is not None else cfg.min_operand, \
            cfg.start_max if cfg.start_max is not None else cfg.max_operand
        nums = [rng.randint(lo, hi)] + [rng.randint(cfg.min_operand, cfg.max_operand) for _ in range(n)]
        ops = [rng.choice(cfg.ops) for _ in range(n)]
        toks = [str(nums[0])]
        for op, x in zip(ops, nums[1:]):
            toks += [op, str(x)]
        if n >= 2 and rng.random() < cfg.paren_prob:
            i = rng.randint(0, n - 1)  # operand index where the group starts
            j = rng.randint(i + 1, n)  # operand index where it ends
            if not (i == 0 and j == n):
                toks[2 * i] = "(" + toks[2 * i]
                toks[2 * j] = toks[2 * j] + ")"
        tree = parse_expression("".join(toks))
        if count_ops(tree) == n and _values_ok(tree, cfg):
            return tree
    raise RuntimeError(f"could not draw a problem satisfying {cfg}")


def inject_error(tree: Tree, rng: random.Random, cfg: ArithConfig | None = None,
                 kind: str | None = None) -> tuple[list[str], int, str]:
    """Corrupt one step of the gold solution and propagate the error to the answer.

    Returns ``(steps, first_error_index, kind)`` where ``kind`` is one of ``slip`` (wrong
    result), ``wrong_operand`` (right arithmetic on a wrong number) or ``dropped_term`` (an
    operation is skipped). The returned index is confirmed by :func:`check_solution`.
    """
    cfg = cfg or ArithConfig()
    n = count_ops(tree)
    if n == 0:
        raise ValueError("a problem without operations has no step to corrupt")
    kinds = [kind] if kind else list(ERROR_KINDS)
    for _ in range(200):
        k = rng.choice(kinds)
        at = rng.randrange(n)
        out = _corrupt(tree, at, k, rng, cfg)
        if out is None:
            continue
        steps, idx = out
        if check_solution(tree, steps).first_error == idx:
            return steps, idx, k
    raise RuntimeError(f"could not inject a {kind or 'any'} error into {render(tree)}")


def _corrupt(tree: Tree, at: int, kind: str, rng: random.Random, cfg: ArithConfig):
    steps: list[str] = []
    state = tree
    for _ in range(at):
        path, node = _innermost(state)[0]
        c = OPS[node.op](node.left, node.right)
        steps.append(format_step(node.left, node.op, node.right, c))
        state = _replace(state, path, c)
    path, node = _innermost(state)[0]
    a, b = node.left, node.right
    if kind == "slip":
        c = OPS[node.op](a, b) + rng.choice([-3, -2, -1, 1, 2, 3, 10, -10])
        steps.append(format_step(a, node.op, b, c))
        state = _replace(state, path, c)
    elif kind == "wrong_operand":
        choices = [v for v in range(cfg.min_operand, cfg.max_operand + 1) if v not in (a, b)]
        if not choices:
            return None
        v = rng.choice(choices)
        a, b = (v, b) if rng.random() < 0.5 else (a, v)
        c = OPS[node.op](a, b)
        steps.append(format_step(a, node.op, b, c))
        state = _replace(state, path, c)
    elif kind == "dropped_term":
        if not path:
            return None
        parent_path = path[:-1]
        parent = _get(state, parent_path)
        assert isinstance(parent, Op)
        other = parent.right if path[-1] == 0 else parent.left
        if not isinstance(other, int):
            return None
        kept = a  # drop the node's right operand: "a op b" collapses to "a"
        x, y = (kept, other) if path[-1] == 0 else (other, kept)
        c = OPS[parent.op](x, y)
        steps.append(format_step(x, parent.op, y, c))
        state = _replace(state, parent_path, c)
    else:
        raise ValueError(f"unknown error kind {kind!r}; expected one of {ERROR_KINDS}")
    idx = len(steps) - 1
    rest = gold_steps(state)
    return steps + rest, idx


HABITS = ("carry", "borrow")


def habit_applies(habit: str, a: int, op: str, b: int) -> bool:
    """Whether a systematic slip of kind ``habit`` can happen on the step ``a op b``.

    ``"carry"``: an addition whose ones digits carry (``16+9``); ``"borrow"``: a subtraction whose
    ones digit borrows (``23-7``).

    >>> habit_applies("carry", 16, "+", 9), habit_applies("carry", 12, "+", 3), habit_applies("borrow", 23, "-", 7)
    (True, False, True)
    """
    if habit == "carry":
        return op == "+" and a >= 0 and b >= 0 and a % 10 + b % 10 >= 10
    if habit == "borrow":
        return op == "-" and a >= 0 and b >= 0 and a >= b and a % 10 < b % 10
    raise ValueError(f"unknown habit {habit!r}; expected one of {HABITS}")


def habit_result(habit: str, a: int, op: str, b: int) -> int:
    """The result a solver with the habit writes: the carry (borrow) is forgotten.

    >>> habit_result("carry", 16, "+", 9), habit_result("borrow", 23, "-", 7)
    (15, 26)
    """
    return OPS[op](a, b) - 10 if habit == "carry" else OPS[op](a, b) + 10


def habit_steps(tree: Tree, habit: str, rate: float, rng: random.Random) -> list[str]:
    """A solution written by a solver with a systematic habit: the gold reduction order, but each
    step where the habit applies gets the habit's wrong result with probability ``rate``, and the
    solution then carries on consistently from the wrong value (as a person with the habit would),
    ending with the answer it reached.

    >>> habit_steps(parse_expression("16+9-3"), "carry", 1.0, random.Random(0))
    ['16+9=15', '15-3=12', 'Answer: 12']
    """
    steps = []
    while isinstance(tree, Op):
        path, node = _innermost(tree)[0]
        a, op, b = node.left, node.op, node.right
        c = OPS[op](a, b)
        if habit_applies(habit, a, op, b) and rng.random() < rate:
            c = habit_result(habit, a, op, b)
        steps.append(format_step(a, op, b, c))
        tree = _replace(tree, path, c)
    steps.append(format_answer(tree))
    return steps


def make_samples(n: int, seed: int, cfg: ArithConfig | None = None, error_rate: float = 0.0,
                 exclude: set[str] | None = None, habit: str | None = None,
                 habit_rate: float = 0.0) -> list[StepSample]:
    """``n`` distinct problems with gold (or, at ``error_rate``, corrupted) labeled solutions.

    Labels follow Math-Shepherd/ProcessBench semantics: 1 before the first error, 0 from it on.
    Deterministic in ``seed``; problems whose expression is in ``exclude`` are skipped.

    ``habit`` (``"carry"`` or ``"borrow"``) with ``habit_rate`` > 0 writes the solutions as a solver
    with that systematic slip would (:func:`habit_steps`): the imperfect demonstrations of the task's
    "habit" variant. Labels and ``meta["first_error"]`` then come from the checker, and
    ``meta["habit_errors"]`` counts the slipped steps. ``answer`` is always the true value.
    """
    if habit is not None and habit not in HABITS:
        raise ValueError(f"unknown habit {habit!r}; expected one of {HABITS}")
    if not 0.0 <= habit_rate <= 1.0:
        raise ValueError("habit_rate must be in [0, 1]")
    cfg = cfg or ArithConfig()
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[StepSample] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"only {len(out)} distinct problems found for {cfg}; ask for fewer")
        tree = random_problem(rng, cfg)
        expr = render(tree)
        if expr in seen:
            continue
        seen.add(expr)
        value = evaluate(tree)
        if habit is not None and habit_rate > 0:
            steps = habit_steps(tree, habit, habit_rate, rng)
            res = check_solution(tree, steps)
            labels = res.labels
            meta = {"expression": expr, "first_error": res.first_error, "error_kind": "habit" if res.first_error
                    is not None else None, "source": "arith", "habit": habit,
                    "habit_errors": sum(1 for st in steps[:-1] if not _step_is_right(st))}
            out.append(StepSample(prompt=cfg.prompt(expr), steps=steps, labels=labels, answer=str(value), meta=meta))
            continue
        if rng.random() < error_rate:
            steps, first_error, kind = inject_error(tree, rng, cfg)
            labels = [1.0 if i < first_error else 0.0 for i in range(len(steps))]
        else:
            steps, first_error, kind = gold_steps(tree), None, None
            labels = [1.0] * len(steps)
        meta = {"expression": expr, "first_error": first_error, "error_kind": kind, "source": "arith"}
        out.append(StepSample(prompt=cfg.prompt(expr), steps=steps, labels=labels, answer=str(value), meta=meta))
    return out


def _step_is_right(step: str) -> bool:
    m = _STEP_RE.match(step)
    return bool(m) and OPS[m.group(2)](int(m.group(1)), int(m.group(3))) == int(m.group(4))


def make_splits(seed: int = 0, n_train: int = 1000, n_test: int = 200, cfg: ArithConfig | None = None,
                error_rate: float = 0.0):
    """Deterministic ``datasets.DatasetDict`` with disjoint ``train``/``test`` problems.

    Columns: ``prompt``, ``steps``, ``labels``, ``answer``, ``meta`` (the StepSample fields).
    """
    from datasets import Dataset, DatasetDict

    test = make_samples(n_test, seed * 2 + 1, cfg, error_rate)
    train = make_samples(n_train, seed * 2, cfg, error_rate, exclude={s.meta["expression"] for s in test})
    return DatasetDict(train=Dataset.from_list([s.to_dict() for s in train]),
                       test=Dataset.from_list([s.to_dict() for s in test]))


def is_correct(problem: str | Tree, steps: list[str]) -> bool:
    """True when ``steps`` solve ``problem`` without an invalid step."""
    try:
        return check_solution(problem, steps).correct
    except ParseError:
        return False


def checker_reward_model(cfg: ArithConfig | None = None):
    """The task's checker as a process reward model: 1.0 for each step that keeps the
    solution on a correct path, 0.0 from the first invalid step on (prompts are task prompts)."""
    from reward_models.rules import FunctionRewardModel

    cfg = cfg or ArithConfig()

    def arith_checker(prompt: str, steps: list[str]) -> list[float]:
        try:
            return check_solution(cfg.expression_of(prompt), steps).labels
        except (ParseError, ValueError):
            return [0.0] * len(steps)

    return FunctionRewardModel(arith_checker, step_format=STEP_FORMAT, aggregation="min", name="arith_checker")


EASY = dict(min_steps=1, max_steps=2, ops="+-", start_min=2, start_max=9, min_operand=1, max_operand=5)
"""Easy problems (one or two additions/subtractions of small numbers): what :func:`fit_tiny_policy` learns."""


def fit_tiny_policy(steps: int = 250, seed: int = 0):
    """A 2-layer, 64-wide GPT-2 fitted for ``steps`` steps on gold solutions of 400 :data:`EASY`
    problems, on one thread (a few seconds; deterministic for a seed): it then writes well-formed
    steps that are right only part of the time. For tests and benchmarks that need a policy with
    errors to find. Returns ``(model, tokenizer, ArithConfig)``."""
    import torch

    from reward_models.testing import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = ArithConfig(**EASY)
    samples = make_samples(400, seed=seed, cfg=cfg)
    seqs = [STEP_FORMAT.tokenize(tok, s.prompt, s.steps).input_ids + [tok.eos_token_id] for s in samples]
    model = tiny_causal_lm(tok, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(steps):
            idx = torch.randint(len(seqs), (16,), generator=g).tolist()
            batch = [seqs[i] for i in idx]
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), tok.pad_token_id)
            labels = torch.full((len(batch), width), -100)
            for r, s in enumerate(batch):
                ids[r, : len(s)] = torch.tensor(s)
                labels[r, : len(s)] = torch.tensor(s)
            loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(n)
    model.eval()
    return model, tok, cfg


__all__ = ["EASY", "fit_tiny_policy", "ArithConfig", "checker_reward_model", "CheckResult", "ERROR_KINDS", "HABITS", "Op", "ParseError",
           "STEP_FORMAT", "Tree", "habit_applies", "habit_result", "habit_steps",
           "check_solution", "count_ops", "evaluate", "extract_answer", "gold_steps", "inject_error",
           "is_correct", "make_samples", "make_splits", "parse_expression", "random_problem", "render"]
