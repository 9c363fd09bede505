"""Fixtures for the stepdpo tests: a tiny GPT-2 policy that has learned a little arithmetic."""

from __future__ import annotations

import pytest

from stepdpo.tasks.arith import fit_tiny_policy


@pytest.fixture(scope="session")
def arith_policy():
    return fit_tiny_policy()


@pytest.fixture
def dpo_args(tmp_path):
    """``dpo_args(sub="out", **overrides)``: a small, fast StepwiseDPOConfig writing under tmp_path/sub."""
    from stepdpo.config import StepwiseDPOConfig

    def make(sub: str = "out", **kw):
        base = dict(output_dir=str(tmp_path / sub), report_to=[], max_steps=2, per_device_train_batch_size=4,
                    learning_rate=5e-3, save_strategy="no", gradient_checkpointing=False, logging_steps=1,
                    disable_tqdm=True, seed=0)
        return StepwiseDPOConfig(**{**base, **kw})

    return make


def launch_two(script, *args: str, check: bool = True, timeout: int = 300):
    """``accelerate launch --config_file configs/accelerate/multi_cpu.yaml --num_processes 2 SCRIPT ARGS``
    (gloo on the CPU, one thread per process); ``script`` is a path, or a name in ``scripts/``.

    Returns ``(CompletedProcess, seconds)``. The launcher and its workers run in a session of their
    own: on a timeout all are killed and the test fails, instead of processes waiting on each other
    forever. With ``check`` a non-zero exit fails the test with the end of stderr."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    path = Path(script) if "/" in str(script) else root / "scripts" / f"{script}.py"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "configs/accelerate/multi_cpu.yaml"), "--num_processes", "2", "--main_process_port", str(port),
           str(path), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{path.name} with 2 processes did not finish in {timeout} s:\n{err[-3000:]}")
    seconds = time.monotonic() - start
    if check:
        assert proc.returncode == 0, err[-4000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), seconds


@pytest.fixture
def two_processes():
    """:func:`launch_two`, for tests that run a script under 2 processes."""
    return launch_two
