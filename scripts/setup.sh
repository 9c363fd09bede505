#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv and install the
# project with its dev extras. Idempotent: a second run only re-installs when
# pyproject.toml changed.
#
# torch: a torch already importable by $PYTHON (for example a CUDA build on a GPU
# machine) is kept, by giving the venv access to the system site-packages.
# Otherwise torch==2.13.0 is installed first (on this project's CPU machines pip
# takes the CPU wheel that lies on disk), so the project's unpinned `torch`
# requirement never pulls a multi-GB CUDA build. Override with TORCH_SPEC, e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  if "$PY" -c "import torch" 2>/dev/null; then
    echo "[setup] keeping the torch already installed for $PY"
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  .venv/bin/python -m pip install -q $TORCH_SPEC 2>&1 | grep -v "is neither a file nor a directory" || true
  .venv/bin/python -W ignore -c "import torch" # fail loudly if the install did not work
fi
stamp=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ] || ! .venv/bin/python -c "import stepdpo, reward_models" 2>/dev/null; then
  echo "[setup] installing the project (pip install -e '.[dev]')"
  .venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is neither a file nor a directory" || true
  .venv/bin/python -c "import stepdpo, reward_models" # fail loudly if the install did not work
  echo "$stamp" > .venv/.setup-stamp
fi
