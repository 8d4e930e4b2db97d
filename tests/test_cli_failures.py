"""Bad input and a failing machine give a clear message and exit code, never a crash, a traceback,
a partial tree or temporary-file litter. Each case was reproduced first (segfault exit 139,
"internal error" exit 70, `.tmp` files, a duplicate `users:` accepted).

Real: the `aicommons` command run as a subprocess, libyaml, SQLite, the kernel's tmpfs (a real
full disk, 64 KiB, in a private mount namespace made with `unshare`; skipped when not root).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from aicommons.spec.default import render_site_yaml
from aicommons.state import StateStore

AIC = str(Path(sys.executable).parent / "aicommons")


def cli(where: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([AIC, *args], cwd=where, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, **kw)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "site.yaml").write_text(render_site_yaml(users=3, driver="lxc", domain="example.org"))
    return tmp_path


def litter(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp"))


def test_a_duplicate_key_is_refused_with_both_lines(site: Path):
    text = (site / "site.yaml").read_text()
    (site / "site.yaml").write_text(text + "users:\n  - name: mallory\n")
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("users:"))
    last = len(text.splitlines()) + 1
    for cmd in ("validate", "plan"):
        r = cli(site, cmd)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert f"duplicate key 'users' (lines {first} and {last})" in r.stderr


def test_a_duplicate_nested_key_is_refused(site: Path):
    (site / "site.yaml").write_text(render_site_yaml(users=1, driver="lxc", domain="example.org")
                                    .replace("driver:\n", "driver:\n  kind: lxc\n", 1))
    r = cli(site, "validate")
    assert r.returncode == 2 and "duplicate key 'kind'" in r.stderr, r.stderr


@pytest.mark.parametrize("text", ["[" * 60_000, "- " * 30_000 + "x", "{a: " * 20_000], ids=["flow", "block", "mapping"])
def test_deep_nesting_is_refused_before_libyaml_sees_it(tmp_path: Path, text: str):
    (tmp_path / "site.yaml").write_text(text)
    r = cli(tmp_path, "validate")
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])  # was 139 (segfault)
    assert "nests deeper than" in r.stderr


def test_an_unwritable_out_is_a_clear_error_with_no_litter(site: Path):
    r = cli(site, "render", "--out", "site.yaml/rendered")
    assert r.returncode == 74, r.stderr
    assert "Not a directory" in r.stderr and "internal error" not in r.stderr
    assert litter(site) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="a private tmpfs needs root")
def test_a_full_disk_leaves_no_partial_tree(site: Path):
    """render --out onto a 64 KiB tmpfs: ENOSPC part-way; nothing of the new tree stays."""
    disk = site / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {disk} && mkdir {disk}/out && echo keep > {disk}/out/mine "
              f"&& {AIC} render --out {disk}/out; echo rc=$?; cd {disk}/out && find . | sort")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=site,
                       capture_output=True, text=True, timeout=300)
    assert "rc=74" in r.stdout, (r.stdout, r.stderr)
    assert "No space left on device" in r.stderr and "internal error" not in r.stderr
    assert r.stdout.split("rc=74", 1)[1].split() == [".", "./mine"]  # as it was: no files, dirs or .tmp


def test_a_damaged_state_database_is_a_clear_error(site: Path):
    db = site / ".aicommons" / "state.db"
    store = StateStore.open(db)  # an applied site's state (read-only commands make none)
    store.allocate("user1", "10.0.5.200", 200)
    store.close()
    assert cli(site, "users", "list").returncode == 0
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        size = c.execute("PRAGMA page_size").fetchone()[0]
    raw = bytearray(db.read_bytes())
    for page in range(1, pages):  # every page but the header's: b-tree pages become garbage
        raw[page * size:(page + 1) * size] = b"\xa5" * size
    db.write_bytes(bytes(raw))
    for cmd in (("users", "list"), ("plan",), ("state", "show")):
        r = cli(site, *cmd)
        assert r.returncode == 1, (cmd, r.returncode, r.stderr)
        assert "internal error" not in r.stderr and "state.db" in r.stderr, r.stderr
        assert "restore it from a backup" in r.stderr.replace("\n", " ").lower()
