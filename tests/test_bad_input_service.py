"""Bad input found by issue 23's review: each is refused with exit 2 and a message naming the field
and the fix, and nothing is written.

Real: the installed `aicommons` command in subprocesses (libyaml, the state store); `users add`
runs the real engine against an `external:` PostgreSQL whose admin password cannot be resolved,
so it stops before any server is dialled. Nothing is simulated.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aicommons.spec.default import render_site_yaml

AIC = str(Path(sys.executable).parent / "aicommons")

BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9 if p else ['lol'] * 9)}]\n"
               for c, p in zip("abcdefghi", ["", *"abcdefgh"], strict=True))


def cli(where: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([AIC, *args], cwd=where, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "site.yaml").write_text(render_site_yaml(users=2, driver="lxc", domain="example.org"))
    return tmp_path


def edit(where: Path, old: str, new: str) -> None:
    p = where / "site.yaml"
    text = p.read_text()
    assert old in text, old
    p.write_text(text.replace(old, new, 1))


def test_an_alias_bomb_is_measured_not_expanded(tmp_path):
    (tmp_path / "site.yaml").write_text(BOMB)  # 9^9 values from a few hundred bytes
    for cmd in ("validate", "plan"):
        r = cli(tmp_path, cmd, "-f", "site.yaml")  # used to run for minutes (timeout 120 here)
        assert r.returncode == 2, r.stderr
        assert "expands to more than" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("old,new,field", [
    ("memory_mb: 8192", "memory_mb: 81920000", "user_template.resources.memory_mb"),
    ("dynamic_dir: /opt/traefik-stack/dynamic", "dynamic_dir: traefik/dynamic", "network.traefik.dynamic_dir"),
    ("  postgres: {}", "  postgres: {external: {host: 192.0.2.10, port: 5432}}",
     "services.postgres.external.admin_password"),
    # containers reach only the mirror's host: a security archive elsewhere would silently never update
    ("  kind: lxc ", "  security_mirror: http://security.example.org/debian-security\n  kind: lxc ",
     "driver.security_mirror"),
])
def test_out_of_range_values_are_refused_by_field(site, old, new, field):
    edit(site, old, new)
    for cmd in ("validate", "plan"):
        r = cli(site, cmd, "-f", "site.yaml")
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert field in r.stderr and "Traceback" not in r.stderr


def test_an_unresolvable_backend_login_is_an_error_not_a_plan_without_tenants(site):
    """engine/api.py turned a back end it could not build into a note and planned no tenant slices."""
    edit(site, "  postgres: {}", "  postgres: {external: {host: 192.0.2.10, port: 5432, "
                                  "admin_password: 'env:AIC_TEST_UNSET_PW'}}")
    r = cli(site, "plan", "-f", "site.yaml")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "services.postgres.external.admin_password" in r.stderr and "AIC_TEST_UNSET_PW" in r.stderr


def test_a_failed_users_add_leaves_site_yaml_as_it_was(site):
    edit(site, "  postgres: {}", "  postgres: {external: {host: 192.0.2.10, port: 5432, "
                                  "admin_password: 'env:AIC_TEST_UNSET_PW'}}")
    before = (site / "site.yaml").read_text()
    r = cli(site, "users", "add", "carol", "--email", "carol@example.org", "-f", "site.yaml")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "carol was not added: site.yaml is as it was" in r.stderr
    assert (site / "site.yaml").read_text() == before


def test_the_shipped_cli_has_no_fake_switch(site):
    """AICOMMONS_FAKE_DIR used to swap every driver and back end for JSON fakes, silently, and turn
    off the guard against dialling site addresses from the host."""
    world = site / "world"
    r = cli(site, "plan", "-f", "site.yaml", env={"AICOMMONS_FAKE_DIR": str(world)})
    assert "AICOMMONS_FAKE_DIR is ignored" in r.stderr
    assert not world.exists()  # the fakes would have made their JSON world here
