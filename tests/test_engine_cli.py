"""The engine's commands end to end: exit codes of plan/apply, refusals, state commands.

Real: the `aicommons` CLI in subprocesses, the default renderer, the state store. Simulated:
the compute driver and tenancy back ends (tests/fakeworld.py selects the file-backed fakes from AICOMMONS_FAKE_DIR).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.fakeworld import CLI as FAKE_CLI

ROOT = Path(__file__).resolve().parents[1]
AIC = FAKE_CLI  # the real CLI on the fake world (tests/fakeworld.py)


@pytest.fixture
def cli(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "AICOMMONS_SECRET_KEY"}
    env.update(AICOMMONS_FAKE_DIR=str(tmp_path / "world"), PYTHONPATH=str(ROOT), COLUMNS="200")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(AIC + list(args), cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300, stdin=subprocess.DEVNULL)
    run.dir = tmp_path
    return run


def test_plan_exit_codes_and_apply_refusals(cli):
    assert cli("init", "--driver", "lxc", "--users", "2", "--out", "site.yaml").returncode == 0
    assert cli("plan", "--detailed-exitcode").returncode == 2
    r = cli("apply")  # no terminal and no --yes: refuse, change nothing
    assert r.returncode == 1 and "pass --yes" in r.stderr
    assert cli("plan", "--detailed-exitcode").returncode == 2
    assert cli("plan", "--out", "plan.json").returncode == 0
    saved = json.loads((cli.dir / "plan.json").read_text())
    assert saved["summary"]["create"] > 0 and all(s["action"] == "create" for s in saved["steps"])
    assert {"containers", "routes"} <= set(saved) and {"ctid", "ip", "hostname", "role", "services"} <= set(
        saved["containers"][0]) and {"host", "url"} <= set(saved["routes"][0])
    r = cli("apply", "plan.json")
    assert r.returncode == 0 and "done:" in r.stdout
    assert cli("plan", "--detailed-exitcode").returncode == 0
    r = cli("apply", "plan.json")
    assert r.returncode == 1 and "stale" in r.stderr
    (cli.dir / "bad.yaml").write_text("name: [unclosed\n")
    assert cli("plan", "-f", "bad.yaml", "--detailed-exitcode").returncode == 1
    r = cli("state", "history")
    assert r.returncode == 0 and "apply" in r.stdout and "ok" in r.stdout
    r = cli("state", "unlock", "--yes")
    assert r.returncode == 0 and "not locked" in r.stdout


def test_failed_apply_exits_nonzero(cli):
    assert cli("init", "--driver", "lxc", "--users", "1", "--out", "site.yaml").returncode == 0
    world = cli.dir / "world"
    world.mkdir()
    (world / "traefik").mkdir()
    (world / "traefik" / "205200.yml").mkdir()  # a directory where the route file must go: that step fails
    r = cli("apply", "--yes")
    assert r.returncode == 1
    assert "failed: traefik.file.205200" in r.stdout and "done:" in r.stdout


def test_rotate_refuses_admin_credentials(cli):
    assert cli("init", "--driver", "lxc", "--users", "1", "--out", "site.yaml").returncode == 0
    r = cli("secrets", "rotate", "site", "postgres_admin_password", "--yes")
    assert r.returncode == 1 and "not automated" in r.stderr
