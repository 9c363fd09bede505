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
