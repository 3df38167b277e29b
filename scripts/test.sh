#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs uv, the locked Python environment
# and every peer (scripts/install-peers.sh), runs the static checks, then pytest.
# `make test` and `.ci/run` call this. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.local/bin:$PATH"

if ! command -v uv >/dev/null 2>&1; then
  echo "test: installing uv from PyPI"
  python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
fi
uv sync --frozen --quiet

echo "test: installing peers (cached in ${DTR_PEERS_DIR:-$HOME/.cache/dtr/peers})"
scripts/install-peers.sh

echo "test: static checks"
uv run ruff check dtr tests migrations scripts
uv run mypy
uv run lint-imports --no-cache >/dev/null
uv run python scripts/check_migrations.py

echo "test: pytest"
uv run pytest "$@"
