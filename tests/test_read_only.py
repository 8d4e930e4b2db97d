"""`validate`, `plan`, `render`, `users list` and `users show` change nothing but what they print
(and render's --out): no state file, key file or secret is made beside a site never applied, and an
applied site's state keeps the same rows. Reproduced first: each of plan, render and users list
created `.aicommons/state.db` and `secret.key` and stored generated secrets.

Real: the `aicommons` command as separate processes, SQLite, the secrets key handling, the engine's
plan and a saved plan applied later. Simulated: the compute driver and tenancy back ends
(AICOMMONS_FAKE_DIR through tests/fakeworld.py, the engine's file-backed fakes, kept outside the site's directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from aicommons.spec.default import LXC_CORE, render_site_yaml
from tests.fakeworld import CLI as FAKE_CLI

AIC = FAKE_CLI[0]  # the real CLI on the fake world (tests/fakeworld.py)
AIC_ARGS = FAKE_CLI[1:]
NOT_YET = "(not made yet"


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, dict]:
    where = tmp_path / "site"
    where.mkdir()
    (where / "site.yaml").write_text(render_site_yaml(users=2, driver="lxc", domain="example.org",
                                                      services=LXC_CORE))
    env = {**os.environ, "AICOMMONS_FAKE_DIR": str(tmp_path / "world"), "COLUMNS": "200"}
    env.pop("AICOMMONS_STATE", None)
    return where, env


def cli(where: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([AIC, *AIC_ARGS, *args], cwd=where, env=env, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def files(root: Path) -> dict[str, str]:
    """Every file under root with its content hash; SQLite's -wal/-shm come and go with readers."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def rows(db: Path) -> list[str]:
    """The state's content, row by row (the file's bytes move when a reader checkpoints the WAL)."""
    with sqlite3.connect(db) as c:
        return list(c.iterdump())


def read_only_commands(where: Path, env: dict, out: Path) -> dict[str, str]:
    cli(where, env, "validate")
    cli(where, env, "plan")
    cli(where, env, "plan", "--json")
    r = cli(where, env, "render", "--out", str(out))
    cli(where, env, "users", "list")
    shown = json.loads(cli(where, env, "users", "show", "user1", "--secrets", "--json").stdout)
    return {"render": r.stdout, "postgres": shown.get("postgres", {}).get("password", "")}


def test_a_site_never_applied_gets_no_state_no_key_no_secret(site, tmp_path: Path):
    where, env = site
    before = files(where)
    seen = read_only_commands(where, env, tmp_path / "out")
    assert files(where) == before  # no .aicommons/, no secret.key, nothing
    assert (tmp_path / "out" / "traefik").is_dir()  # render did write where it was told
    assert "throwaway values" in seen["render"]
    assert seen["postgres"].startswith(NOT_YET)  # a made-up value is never shown as a credential


def test_an_applied_site_keeps_its_state_rows_and_key(site, tmp_path: Path):
    where, env = site
    cli(where, env, "apply", "--yes")
    db, key = where / ".aicommons" / "state.db", where / ".aicommons" / "secret.key"
    before_rows, before_files = rows(db), files(where)
    # user3 arrives in site.yaml: plan/render/show need its secrets; none may be stored before apply
    text = (where / "site.yaml").read_text()
    (where / "site.yaml").write_text(text.replace("users:\n", "users:\n  - name: user3\n    email: user3@example.org\n", 1))
    before_files["site.yaml"] = files(where)["site.yaml"]
    seen = read_only_commands(where, env, tmp_path / "out")
    shown = json.loads(cli(where, env, "users", "show", "user3", "--json").stdout)
    assert rows(db) == before_rows and files(where) == before_files and key.exists()
    assert seen["postgres"] not in ("", "********") and not seen["postgres"].startswith(NOT_YET)  # applied: real
    assert shown["postgres"]["password"].startswith(NOT_YET)


def test_a_plan_saved_before_the_first_apply_still_applies(site, tmp_path: Path):
    """The plan read an empty state in memory; the apply creates the real one and must agree."""
    where, env = site
    cli(where, env, "plan", "--out", str(tmp_path / "plan.json"))
    assert not (where / ".aicommons").exists()
    cli(where, env, "apply", str(tmp_path / "plan.json"), "--yes")
    assert (where / ".aicommons" / "state.db").exists()
    r = cli(where, env, "plan", "--detailed-exitcode")
    assert "no changes" in r.stdout
