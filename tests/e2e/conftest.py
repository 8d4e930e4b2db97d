"""The default LXC site the end-to-end modules share (test_journey.py, test_lxc_site.py): brought up
once per run of this package (each `up` from nothing costs ~8 minutes on two cores), torn down
after its last test.

The site's name, namespace and lxcpath are the run's own (AICOMMONS_E2E_PREFIX, default `i12e2e`),
never the defaults, so it can run beside another site on the same host.

For development only: AICOMMONS_E2E_KEEP=1 keeps the site under /var/lib/aicommons-<prefix>/dev
up after the run and reuses it when it is already up (no `up`, no `down`); CI never sets it and
always starts from nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

AIC = str(Path(sys.executable).parent / "aicommons")
PREFIX = os.environ.get("AICOMMONS_E2E_PREFIX", "i12e2e")
NS = PREFIX
ROOT = Path(f"/var/lib/aicommons-{PREFIX}")
LXCPATH = ROOT / "lxc"
ARCHIVE = ROOT / "archive"
DOMAIN = "valuechainhackers.xyz"
KEEP = os.environ.get("AICOMMONS_E2E_KEEP") == "1"


def pytest_collection_modifyitems(items):
    """The two small sites of test_lxc_hosts.py come and go before the default site is up, so they
    never share the two cores with it (and the default site is up only once)."""
    where = [i for i, it in enumerate(items) if "tests/e2e/" in it.nodeid]  # the hook sees the whole session
    mine = sorted((items[i] for i in where), key=lambda it: 0 if "tests/e2e/test_lxc_hosts.py" in it.nodeid else 1)
    for i, it in zip(where, mine, strict=True):
        items[i] = it


def cli(where: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([AIC, *args, "-f", str(where / "site.yaml")], cwd=where, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def failed_steps(output: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^  failed: (\S+): (.*)$", output, re.M))


def unexpected(output: str) -> dict[str, str]:
    return failed_steps(output)


def sh(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def _write_site(where: Path) -> None:
    """The default site (3 users, the reference architecture's services), under names of the run's own."""
    r = subprocess.run([AIC, "init", "--driver", "lxc", "--users", "3", "-o", str(where / "site.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = (where / "site.yaml").read_text()
    text = text.replace("name: valuechainhackers", f"name: {PREFIX}", 1)
    text = re.sub(r"^  netns: .*\n", "", text, flags=re.M)
    text = re.sub(r"^  kind: lxc(.*)$", rf"  kind: lxc\1\n  netns: {NS}\n  lxcpath: {LXCPATH}", text, count=1, flags=re.M)
    assert f"netns: {NS}" in text and f"lxcpath: {LXCPATH}" in text
    assert re.search(r"^  lemonldap: \{\}", text, re.M) and not re.search(r"^  authentik:", text, re.M), text
    (where / "site.yaml").write_text(text + f"backups:\n  dir: {where / 'backups'}\n")


@pytest.fixture(scope="package")
def site(tmp_path_factory):
    from aicommons.drivers.lxc import netns

    if KEEP:
        where = ROOT / "dev"
        if netns.exists(NS) and (where / "site.yaml").exists():
            yield where
            return
        where.mkdir(parents=True, exist_ok=True)
    else:
        where = tmp_path_factory.mktemp("site")
    if netns.exists(NS) or LXCPATH.exists():
        pytest.fail(f"a site {PREFIX!r} is already up on this host; run `aicommons down` first")
    started_archives = set(ARCHIVE.glob("*.tar.gz"))
    _write_site(where)
    yield where
    if KEEP:
        return
    if (where / "site.yaml").exists():
        cli(where, "down", "--yes", "--purge")
    from aicommons.drivers.lxc.driver import LxcDriver
    from aicommons.spec.load import load_site

    if (where / "site.yaml").exists():  # whatever down could not remove
        LxcDriver.from_site(load_site(where / "site.yaml")[0], join=False).down()
    for f in started_archives.symmetric_difference(set(ARCHIVE.glob("*.tar.gz"))):
        f.unlink()  # the archives this run made (`users remove` keeps data)
    for d in (ARCHIVE, ROOT):
        if d.exists() and not any(d.iterdir()):
            d.rmdir()


@pytest.fixture(scope="package")
def site_up(site: Path) -> subprocess.CompletedProcess:
    """`aicommons up` from nothing, once for the package; its output is kept in up.log and its
    duration in up.took (test_lxc_site.py's test_up_from_nothing judges them)."""
    if (site / "up.log").exists() and (site / "up.rc").exists():  # kept up (AICOMMONS_E2E_KEEP)
        return subprocess.CompletedProcess([], int((site / "up.rc").read_text()), (site / "up.log").read_text(), "")
    started = time.monotonic()
    r = cli(site, "up", "--yes", timeout=5400)
    (site / "up.took").write_text(f"{time.monotonic() - started:.0f}")
    (site / "up.log").write_text(r.stdout + r.stderr)
    (site / "up.rc").write_text(str(r.returncode))
    return r


def driver(where: Path):
    from aicommons.drivers.lxc.driver import LxcDriver
    from aicommons.spec.load import load_site

    return LxcDriver.from_site(load_site(where / "site.yaml")[0], join=False)


def secret(where: Path, scope: str, key: str) -> str:
    from aicommons.engine.api import key_source, open_state
    from aicommons.spec.load import load_site

    s = load_site(where / "site.yaml")[0]
    st = open_state(where / "site.yaml")
    try:
        return st.secrets(key_source(s, st, where / "site.yaml")).get(scope, key)
    finally:
        st.close()


def ns_http(method: str, url: str, *, host: str | None = None, headers: dict | None = None,
            data: str | None = None, timeout: int = 20) -> tuple[int, str]:
    """curl from inside the site's namespace (where Traefik and the containers live)."""
    argv = ["ip", "netns", "exec", NS, "curl", "-s", "-k", "-m", str(timeout), "-X", method, "-o", "-",
            "-w", "\n%{http_code}"]
    if host:
        argv += ["--resolve", f"{host}:443:10.0.4.10"]
    for k, v in (headers or {}).items():
        argv += ["-H", f"{k}: {v}"]
    if data is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", data]
    proc = subprocess.run([*argv, url], capture_output=True, timeout=timeout + 10)
    body, _, code = proc.stdout.decode(errors="replace").rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the item (test_journey.py screenshots the browser when a step fails)."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
