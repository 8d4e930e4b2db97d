"""Parallel edits of site.yaml: two `users add` at once both land, or one is refused before it
changed anything; a refused one never exits after writing. Reproduced first: without the lock,
5 rounds of two parallel adds lost 3 users, and a loser exited 3 after appending its user.

Real: the `aicommons` command as separate processes, the engine, the state's lock (SQLite),
the site.yaml edit. Simulated: the compute driver and tenancy back ends (AICOMMONS_FAKE_DIR through tests/fakeworld.py,
the engine's file-backed fakes): the race is in the edit and the lock, not in the containers.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from aicommons.ops import users as manage
from aicommons.spec.default import LXC_CORE, render_site_yaml
from aicommons.spec.load import load_site
from tests.fakeworld import CLI as FAKE_CLI

AIC = FAKE_CLI[0]  # the real CLI on the fake world (tests/fakeworld.py)
AIC_ARGS = FAKE_CLI[1:]
ROUNDS = 10


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, dict]:
    (tmp_path / "site.yaml").write_text(render_site_yaml(users=1, driver="lxc", domain="example.org",
                                                         services=LXC_CORE))
    env = {**os.environ, "AICOMMONS_FAKE_DIR": str(tmp_path / "world"), "COLUMNS": "200"}
    return tmp_path, env


def users_in(where: Path) -> list[str]:
    return [u.name for u in load_site(where / "site.yaml")[0].users]


@pytest.mark.parametrize("wait", [False, True], ids=["refuse", "wait"])
def test_parallel_users_add_lose_nobody(site, wait: bool):
    where, env = site
    extra = ["--lock-timeout", "300"] if wait else []
    for r in range(ROUNDS):
        names = [f"r{r}a", f"r{r}b"]
        procs = [subprocess.Popen([AIC, *AIC_ARGS, "users", "add", n, "--email", f"{n}@example.org", "-f", "site.yaml", *extra],
                                  cwd=where, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL) for n in names]
        outcomes = [(n, p.wait(timeout=600), *p.communicate()) for n, p in zip(names, procs, strict=False)]
        present = users_in(where)
        for name, rc, out, err in outcomes:
            if rc == 0:
                assert name in present, (r, name, out, err)  # said "ready": it is in site.yaml
            else:
                assert not wait, (r, name, rc, err)  # waiting, both land
                assert rc == 3 and "locked by" in err, (r, name, rc, err)
                assert name not in present, (r, name, err)  # refused before anything changed
        assert all(not p.name.endswith(".tmp") for p in where.iterdir())
    if wait:
        assert {f"r{r}{x}" for r in range(ROUNDS) for x in "ab"} <= set(users_in(where))


def test_an_edit_made_outside_aicommons_meanwhile_is_not_overwritten(tmp_path: Path, monkeypatch):
    """Compare-and-swap: if site.yaml changed after it was read, the edit is refused, nothing written."""
    f = tmp_path / "site.yaml"
    f.write_text(render_site_yaml(users=1, driver="lxc", domain="example.org"))
    real_load = manage._append_text

    def meanwhile(text, entry):  # someone saves the file between our read and our write
        f.write_text(text.replace("users:", "# edited by hand\nusers:", 1))
        return real_load(text, entry)

    monkeypatch.setattr(manage, "_append_text", meanwhile)
    with pytest.raises(manage.SiteChanged, match="nothing was written"):
        manage.append_user(f, manage.validate_new_user("late", "late@example.org"))
    assert "# edited by hand" in f.read_text() and "name: late" not in f.read_text()


def test_parallel_inits_write_one_whole_file_and_refuse_the_rest(tmp_path: Path):
    """Reproduced first: five `init` at once all said "wrote" (the exists-check and the write were
    apart, and they shared one temp name), and some died with FileNotFoundError on it."""
    for r in range(3):
        out = tmp_path / f"r{r}" / "site.yaml"
        procs = [subprocess.Popen([AIC, *AIC_ARGS, "init", "--out", str(out), "--users", str(n)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL) for n in range(1, 6)]
        outcomes = [(n, p.wait(timeout=300), *p.communicate()) for n, p in zip(range(1, 6), procs, strict=False)]
        won = [n for n, rc, out_, _ in outcomes if rc == 0 and "wrote" in out_]
        assert len(won) == 1, outcomes
        assert all(rc == 1 and "exists; pass --force" in err for n, rc, _, err in outcomes if n not in won), outcomes
        assert len(load_site(out)[0].users) == won[0]  # the winner's file, whole
        assert [p.name for p in out.parent.iterdir()] == ["site.yaml"]  # no temp files left
