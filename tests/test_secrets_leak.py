"""No secret value reaches an output stream, a log, a plan file or the state in clear text.

Real: the `aicommons` CLI in subprocesses (up, plan, plan --json/--out, apply PLAN, secrets
rotate, state show/history, secrets list, down), the default renderer, the state store with
Fernet encryption, the run logs. Simulated: the compute driver and tenancy back ends
(tests/fakeworld.py selects the file-backed fakes from AICOMMONS_FAKE_DIR); one test injects a back end whose error
message carries a password, to prove the redactor catches it.
"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

from aicommons.errors import PermanentError
from aicommons.state import StateStore, default_path
from aicommons.tenancy.fake import FakeBackend
from tests.fakeworld import CLI as FAKE_CLI
from tests.test_engine_support import edit_site, write_site

ROOT = Path(__file__).resolve().parents[1]
AIC = FAKE_CLI  # the real CLI on the fake world (tests/fakeworld.py)


def run(cwd: Path, env: dict, *args: str) -> str:
    p = subprocess.run(AIC + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode in (0, 2), (args, p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    return p.stdout + p.stderr


def all_secret_values(site: Path) -> set[str]:
    st = StateStore.open(default_path(site))
    try:
        return set(st.secrets().values())
    finally:
        st.close()


def test_full_cli_lifecycle_prints_and_logs_no_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "AICOMMONS_SECRET_KEY"}
    env.update(AICOMMONS_FAKE_DIR=str(tmp_path / "world"), PYTHONPATH=str(ROOT), COLUMNS="200")
    site = tmp_path / "site.yaml"
    streams = [run(tmp_path, env, "up", "--yes")]
    secrets = all_secret_values(site)
    streams += [run(tmp_path, env, "plan"), run(tmp_path, env, "plan", "--json"),
                run(tmp_path, env, "plan", "--out", "plan.json", "--detailed-exitcode"),
                run(tmp_path, env, "apply", "plan.json"),
                run(tmp_path, env, "secrets", "rotate", "user1", "postgres_password", "--yes")]
    secrets |= all_secret_values(site)  # the rotated value too
    streams += [run(tmp_path, env, "state", "show"), run(tmp_path, env, "state", "history"),
                run(tmp_path, env, "secrets", "list"), run(tmp_path, env, "down", "--yes")]
    assert len(secrets) > 40 and all(len(s) >= 32 for s in secrets)
    assert "done:" in streams[0] and "user1/postgres_password is now version 2" in streams[5]
    files = [tmp_path / "plan.json", site, *sorted((tmp_path / ".aicommons" / "logs").iterdir())]
    files += sorted((tmp_path / ".aicommons").glob("state.db*"))
    blobs = [s.encode() for s in streams] + [f.read_bytes() for f in files]
    assert len(files) >= 6
    for value in secrets:
        for i, blob in enumerate(blobs):
            assert value.encode() not in blob, f"a secret value appears in {(['stream'] * len(streams) + files)[i]}"


class LeakyBackend(FakeBackend):
    """A back end whose failure message carries the password (as a careless driver's might)."""

    def ensure(self, tenant, secrets):
        if tenant.user == "user2":
            raise PermanentError(f"login failed for {tenant.postgres_role} with password {secrets['postgres_password']}")
        super().ensure(tenant, secrets)


def test_errors_carrying_a_secret_are_redacted_everywhere(tmp_path, monkeypatch):
    monkeypatch.delenv("AICOMMONS_SECRET_KEY", raising=False)
    site = write_site(tmp_path / "site.yaml", users=3)
    world = tmp_path / "world"
    out = io.StringIO()
    from aicommons.drivers.fake import FakeDriver
    from aicommons.engine.api import apply_site
    from tests.test_engine_support import test_renderer

    monkeypatch.setenv("EXT_REDIS_PW", "external-redis-admin-pw-123")
    edit_site(site, lambda d: d["services"].update(
        redis={"external": {"host": "127.0.0.1", "port": 6379, "admin_password": "env:EXT_REDIS_PW"}}))

    class LeakyRedis(FakeBackend):
        def ensure(self, tenant, secrets):
            raise PermanentError("AUTH failed with external-redis-admin-pw-123")

    r = apply_site(site, driver=FakeDriver(world), out=out, renderer=test_renderer,
                   backends=[LeakyBackend("postgres", world), LeakyRedis("redis", world)])
    assert "external-redis-admin-pw-123" not in out.getvalue() and "AUTH failed with [redacted]" in out.getvalue()
    assert r.outcomes["tenant.postgres.user2"].status == "failed"
    st = StateStore.open(default_path(site))
    password = st.secrets().get("user2", "postgres_password")
    logs = b"".join(p.read_bytes() for p in (tmp_path / ".aicommons" / "logs").iterdir())
    journal = " ".join(e[4] for e in st.journal_entries())
    for text in (out.getvalue(), logs.decode(), journal, r.outcomes["tenant.postgres.user2"].detail):
        assert "login failed for u_user2" in text
        assert password not in text and "[redacted]" in text
