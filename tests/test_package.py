"""Package-level checks: public names resolve, imports stay light, no unsafe calls in the code."""

import ast
import pathlib
import subprocess
import sys

import reward_models
import stepdpo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_public_names_resolve():
    for pkg in (reward_models, stepdpo):
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None, name


def test_import_is_light():
    code = "import sys, stepdpo, reward_models; print('torch' in sys.modules, 'trl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_no_eval_exec_or_pickle_in_the_packages():
    banned = {"eval", "exec"}
    for pkg in ("reward_models", "stepdpo"):
        for path in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    fn = node.func
                    # the builtins only (model.eval() is a method, not code evaluation)
                    if isinstance(fn, ast.Name):
                        assert fn.id not in banned, f"{path}:{node.lineno} calls {fn.id}()"
                    if isinstance(fn, ast.Attribute) and fn.attr in ("load", "loads") and \
                            isinstance(fn.value, ast.Name) and fn.value.id in ("pickle", "dill", "cloudpickle"):
                        raise AssertionError(f"{path}:{node.lineno} unpickles")
                if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                    v = node.value
                    assert not (isinstance(v, ast.Constant) and v.value is True), f"{path}:{node.lineno}"


# -- issue 8, point 4: unsafe loading, anywhere in the packages ------------------------------------
UNPICKLERS = {"pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "_pickle"}
NOT_WEIGHTS = {"AutoTokenizer", "AutoConfig", "AutoProcessor", "PeftModel", "PeftConfig", "LoraConfig"}


def _kw(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def _is_true(v) -> bool:
    return isinstance(v, ast.Constant) and v.value is True


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every call in ``source`` that could execute code from data or load pickled weights."""
    problems = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            problems += [f"{node.lineno}: imports {n}" for n in names if n.split(".")[0] in UNPICKLERS]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults) \
                + list(node.args.kw_defaults)
            for a, d in zip(args, defaults):
                if a.arg == "trust_remote_code" and d is not None and not (isinstance(d, ast.Constant)
                                                                           and d.value is False):
                    problems.append(f"{node.lineno}: {node.name}(trust_remote_code=...) must default to False")
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                node.target.id == "trust_remote_code" and isinstance(node.value, ast.Call):
            if not (isinstance(_kw(node.value, "default"), ast.Constant) and _kw(node.value, "default").value is False):
                problems.append(f"{node.lineno}: the trust_remote_code field must default to False")
        if not isinstance(node, ast.Call):
            continue
        fn = node.func
        if isinstance(fn, ast.Name) and fn.id in ("eval", "exec", "compile", "__import__"):
            problems.append(f"{node.lineno}: calls {fn.id}()")
        if _is_true(_kw(node, "trust_remote_code")):
            problems.append(f"{node.lineno}: trust_remote_code=True")
        if _is_true(_kw(node, "allow_pickle")):
            problems.append(f"{node.lineno}: allow_pickle=True")
        if not isinstance(fn, ast.Attribute):
            continue
        owner = fn.value.id if isinstance(fn.value, ast.Name) else None
        if owner in UNPICKLERS:
            problems.append(f"{node.lineno}: {owner}.{fn.attr}()")
        if owner == "torch" and fn.attr == "load" and not _is_true(_kw(node, "weights_only")):
            problems.append(f"{node.lineno}: torch.load without weights_only=True")
        if owner == "yaml" and fn.attr in ("load", "load_all", "unsafe_load", "full_load"):
            problems.append(f"{node.lineno}: yaml.{fn.attr}() (use yaml.safe_load)")
        if owner in ("pd", "pandas") and fn.attr == "read_pickle":
            problems.append(f"{node.lineno}: pandas.read_pickle()")
        if fn.attr == "from_pretrained" and owner not in NOT_WEIGHTS and "Tokenizer" not in (owner or ""):
            # weights: safetensors only, stated at the call (or through **kwargs that state it)
            if not _is_true(_kw(node, "use_safetensors")) and not any(k.arg is None for k in node.keywords):
                problems.append(f"{node.lineno}: {owner or '?'}.from_pretrained without use_safetensors=True")
    return problems


def test_scanner_catches_each_unsafe_pattern():
    hostile = {
        "eval(text)": "calls eval", "exec(code)": "calls exec", "compile(s, 'f', 'exec')": "calls compile",
        "__import__(name)": "calls __import__", "import pickle": "imports pickle", "import dill": "imports dill",
        "pickle.loads(b)": "pickle.loads", "torch.load(p)": "weights_only", "yaml.load(f)": "yaml.load",
        "np.load(p, allow_pickle=True)": "allow_pickle", "pd.read_pickle(p)": "read_pickle",
        "AutoModel.from_pretrained(p)": "use_safetensors", "auto_cls.from_pretrained(p, trust_remote_code=True, "
        "use_safetensors=True)": "trust_remote_code=True",
        "def f(trust_remote_code=True): pass": "default to False",
        "@dataclass\nclass C:\n    trust_remote_code: bool = field(default=True)": "field must default",
    }
    for src, what in hostile.items():
        found = unsafe_calls(src)
        assert found and what in " ".join(found), (src, found)
    safe = ("model.eval()\ntorch.load(p, weights_only=True)\nyaml.safe_load(f)\n"
            "AutoModel.from_pretrained(p, use_safetensors=True)\nAutoTokenizer.from_pretrained(p)\n"
            "cls.from_pretrained(p, **kwargs)\ndef f(trust_remote_code: bool = False): pass\n")
    assert unsafe_calls(safe) == []


def test_packages_hold_no_unsafe_call():
    problems = []
    for pkg in ("reward_models", "stepdpo"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            problems += [f"{path.relative_to(ROOT)}:{p}" for p in unsafe_calls(path.read_text(), str(path))]
    assert problems == []


def test_docstring_examples_run():
    """Every ``>>>`` example in the two packages' docstrings gives the output it shows."""
    import doctest
    import importlib

    failed, ran = [], 0
    for pkg in ("reward_models", "stepdpo"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=False)
            ran += result.attempted
            if result.failed:
                failed.append(f"{name}: {result.failed} of {result.attempted}")
    assert not failed, failed
    assert ran > 50


def _package_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (at any level: lazy imports count)."""
    out = {}
    for pkg in ("reward_models", "stepdpo"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            deps = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    deps |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module:
                    deps.add(node.module)
                    deps |= {f"{node.module}.{a.name}" for a in node.names}
            out[name] = {d for d in deps if d.split(".")[0] in ("reward_models", "stepdpo")}
    return out


def test_no_import_cycles_between_modules():
    graph = _package_imports()
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    packages = {"reward_models", "stepdpo", "stepdpo.commands", "stepdpo.tasks"}  # lazy export tables
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph[m] - packages):
            if state.get(d) == 1:
                cycles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_no_private_name_is_imported_from_another_module():
    private = []
    for pkg in ("reward_models", "stepdpo"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("reward_models", "stepdpo"):
                    private += [f"{path.relative_to(ROOT)}: from {node.module} import {a.name}"
                                for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                    if any(part.startswith("_") for part in node.module.split(".")):
                        private.append(f"{path.relative_to(ROOT)}: from {node.module} (a private module)")
    assert not private, private
