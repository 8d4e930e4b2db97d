#!/usr/bin/env bash
# Run the test suite (installs what it needs first). Extra arguments go to pytest.
#   1. Debian packages and the pinned, hashed Python dependencies (scripts/install.sh --test)
#   2. the apps' native layers (cached under /var/cache/aicommons/apps: built once per version;
#      the first build takes long, every later one nothing)
#   3. static checks (ruff, mypy, the import contract) when scripts/lint.sh exists
#   4. pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
.venv/bin/aicommons apps build
[ -f scripts/lint.sh ] && bash scripts/lint.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
