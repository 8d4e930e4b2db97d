#!/usr/bin/env bash
# Regenerate the hashed lock files from pyproject.toml (run after changing a dependency):
#   requirements.lock       runtime: what `scripts/install.sh` installs
#   requirements-test.lock  runtime + the test extra: what `scripts/install.sh --test` installs
#   requirements-build.lock `wheel`, which the editable install of aicommons builds with (both modes)
# Every transitive dependency is pinned with its hashes (pip installs them with --require-hashes).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
tool=.venv-lock
[ -x $tool/bin/uv ] && [ "$($tool/bin/uv --version | cut -d' ' -f2)" = $UV_VERSION ] \
  || { python3 -m venv $tool && $tool/bin/pip install -q --disable-pip-version-check "uv==$UV_VERSION"; }
common=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_36 --no-header
        --custom-compile-command "bash scripts/lock.sh")
$tool/bin/uv pip compile pyproject.toml "${common[@]}" -o requirements.lock
$tool/bin/uv pip compile pyproject.toml --extra test "${common[@]}" -o requirements-test.lock
# Debian 12's venv setuptools (66.1) builds editable installs with `wheel`; 0.45.1 needs nothing else.
echo "wheel==0.45.1" | $tool/bin/uv pip compile - "${common[@]}" -o requirements-build.lock
