#!/usr/bin/env bash
# Installs the pinned tree into $VENV. torch first, alone: `torch==2.13.0` is a CPU build that pip takes
# from this machine's local wheel; any resolver run that sees torch's PyPI metadata would pull GBs of CUDA.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.13.0
"$VENV/bin/pip" install --quiet --disable-pip-version-check uv==0.13.9
grep -v '^torch==' requirements.lock > "$VENV/requirements.no-torch.txt"
for attempt in 1 2 3; do
  if "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --no-deps -r "$VENV/requirements.no-torch.txt"; then
    break
  fi
  echo "uv install attempt $attempt failed; retrying" >&2
  if [ "$attempt" = 3 ]; then
    "$VENV/bin/pip" install --quiet --no-deps -r "$VENV/requirements.no-torch.txt"
  fi
  sleep 5
done
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" --no-deps -e .
"$VENV/bin/python" -c "import torch, dagster, pymilvus, sentence_transformers; print('installed: torch', torch.__version__, '| dagster', dagster.__version__)"
