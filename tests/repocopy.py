"""A copy of this repository as a `git clone` has it: tracked (and untracked, not ignored) files,
never this checkout's .venv or caches. Used by the tests that run scripts/install.sh elsewhere."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copy_repo(dest: Path) -> None:
    if not (ROOT / ".git").exists() or not shutil.which("git"):
        shutil.copytree(ROOT, dest, dirs_exist_ok=True, symlinks=True,
                        ignore=shutil.ignore_patterns(".venv", ".venv-lock", ".git", "__pycache__", ".pytest_cache",
                                                      ".hypothesis"))
        return
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
