#!/usr/bin/env bash
# Static checks, all configured in pyproject.toml: ruff (lint), mypy (types), lint-imports (the
# layer contract). Runs every check, then exits non-zero if any of them reported a finding.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${VENV:-.venv}/bin
rc=0
echo "== ruff";         "$bin/ruff" check src tests benchmarks || rc=1
echo "== mypy";         "$bin/mypy" || rc=1
echo "== lint-imports"; "$bin/lint-imports" || rc=1
exit $rc
