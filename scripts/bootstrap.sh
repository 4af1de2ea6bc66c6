#!/usr/bin/env bash
# Create or update the project's virtual environment (.venv); a no-op when it is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12)))'; then
  echo "bootstrap: OptiShear needs Python 3.11 or 3.12 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

stamp=.venv/.optishear-installed
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: installing OptiShear and its dependencies into .venv" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first, pinned: an unpinned torch would pull a multi-GB CUDA build on CPU machines.
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[service,workers,tasks,dev]"
  echo "$want" > "$stamp"
fi
