"""Time travel: scripts/install.sh installs exactly the lock, whatever the registry offers later.

The registry moves on after a lock is made: newer releases of locked packages appear (issue #20:
httpx 0.29.0 appeared, and Debian 12's pip 23.0.1 resolved qdrant-client's `httpx[http2]` extra
against it, failing every fresh install). Here the future is made locally: small but complete
wheels (METADATA, WHEEL, RECORD with hashes) of httpx 99.0 (with an `http2` extra asking for h2
99.0), h2 99.0, pydantic-core 99.0, and of the editable install's build tools wheel 99.0 and
setuptools 99.0 are put in a directory that pip is offered as an extra
find-links location, next to whatever this machine's pip already uses (PyPI, its own
PIP_FIND_LINKS or pip.conf: the test adds to them and depends on none of them).

Real: scripts/install.sh itself (runtime lock), run in a copy of the repository so it makes a
fresh .venv with Debian's python3 -m venv (pip 23.0.1, setuptools 66.1.1); pip downloads from PyPI (its download
cache makes that about a minute). Simulated: only the future releases (the local wheels).

The proof: every package in the venv has exactly its locked version, nothing outside the lock was
installed, no file of a future wheel is there (pip's --require-hashes checked every wheel against
the lock's hashes while installing). The control: in the same environment, pip asked for
`httpx[http2]` does take httpx 99.0 and h2 99.0, so the future was really on offer.

With the previous install line (`pip install -q --require-hashes -r "$lock"`, no --no-deps) this
test fails: run by hand against the same wheels, pip 23.0.1 stopped with "ERROR: In
--require-hashes mode, all requirements must have their versions pinned with ==. These do not:
httpx[http2]>=0.20.0 from file:///.../future/httpx-99.0-py3-none-any.whl (from
qdrant-client==1.20.0->-r requirements.lock (line 1226))" and install.sh exited 1: the failure
of issue #20, with 99.0 in the place of 0.29.0. Its first run also found that the runtime install
(without --test) could not make the editable install at all: Debian 12's venv setuptools 66.1
builds it with the `wheel` package, which only the test lock brought in (requirements-build.lock
now pins it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.repocopy import ROOT, copy_repo

pytestmark = [
    pytest.mark.install,
    pytest.mark.skipif(not shutil.which("dpkg-query"), reason="scripts/install.sh is for Debian (no dpkg-query)"),
]

FUTURE = "99.0"
MARK = "aicommons-time-travel"  # in every file of a future wheel


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(directory: Path, name: str, version: str, *, module: str,
               requires: tuple[str, ...] = (), extras: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel as the wheel spec (PEP 427/491) has it: the package, METADATA, WHEEL, RECORD."""
    dist = re.sub(r"[-_.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    meta = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {MARK}"]
    meta += [f"Provides-Extra: {e}" for e in extras]
    meta += [f"Requires-Dist: {r}" for r in requires]
    files = {
        f"{module}/__init__.py": f'"""{MARK}: a release from the future."""\n__version__ = "{version}"\n'.encode(),
        f"{info}/METADATA": ("\n".join(meta) + "\n").encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: aicommons-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [_record_line(p, d) for p, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p, d in files.items():
            zf.writestr(p, d)
    return path


def future_wheels(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [
        make_wheel(directory, "httpx", FUTURE, module="httpx", extras=("http2",),
                   requires=(f'h2>={FUTURE}; extra == "http2"',)),
        make_wheel(directory, "h2", FUTURE, module="h2"),
        make_wheel(directory, "pydantic-core", FUTURE, module="pydantic_core"),
        # the editable install's build tools: a future one would break the build if it were taken
        make_wheel(directory, "wheel", FUTURE, module="wheel"),
        make_wheel(directory, "setuptools", FUTURE, module="setuptools"),
    ]


def locked(lock: Path) -> dict[str, str]:
    """{canonical name: version} of a `uv pip compile --generate-hashes` lock."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", lock.read_text(), re.M)
    return {_canon(n): v for n, v in pins}


def test_the_wheels_are_what_pip_expects(tmp_path: Path):
    """The future wheels are valid: RECORD covers every file with its hash and size."""
    for whl in future_wheels(tmp_path):
        with zipfile.ZipFile(whl) as zf:
            names = set(zf.namelist())
            record = next(n for n in names if n.endswith(".dist-info/RECORD"))
            rows = [line.split(",") for line in zf.read(record).decode().splitlines()]
            assert {r[0] for r in rows} == names
            for path, digest, size in rows:
                if path != record:
                    assert [digest, size] == _record_line(path, zf.read(path)).split(",")[1:]


@pytest.mark.timeout(1200)  # pip downloads the lock (cached after the first run: about a minute)
def test_install_takes_the_lock_not_the_future(tmp_path: Path):
    wheels = tmp_path / "future"
    future_wheels(wheels)
    repo = tmp_path / "repo"
    repo.mkdir()
    copy_repo(repo)
    # Added to this machine's own find-links (pip reads PIP_FIND_LINKS as a space-separated list).
    env = {**os.environ, "PIP_FIND_LINKS": " ".join(filter(None, [str(wheels), os.environ.get("PIP_FIND_LINKS")]))}
    for k in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(k, None)
    # Debian's python3, which makes the venv (install.sh's default), not the interpreter running this test.
    py = env.get("PYTHON") or shutil.which("python3", path="/usr/bin") or sys.executable
    env["PYTHON"] = py
    r = subprocess.run(["bash", "scripts/install.sh"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=1100)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]

    venv_py = repo / ".venv" / "bin" / "python"
    have = json.loads(subprocess.run(
        [str(venv_py), "-c", "import importlib.metadata as m, json; "
                             "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"],
        capture_output=True, text=True, check=True, env=env).stdout)
    have = {_canon(n): v for n, v in have.items()}
    want = locked(ROOT / "requirements.lock") | locked(ROOT / "requirements-build.lock")
    assert {n: have.get(n) for n in want} == want  # every locked package, at its locked version
    # ... and nothing else but the venv's own pip/setuptools and aicommons (editable) itself
    assert set(have) - set(want) <= {"pip", "setuptools", "aicommons"}, set(have) - set(want)
    site = subprocess.run([str(venv_py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    for module in ("httpx", "h2", "pydantic_core", "wheel", "setuptools"):
        assert MARK not in (Path(site) / module / "__init__.py").read_text()
    assert not list(Path(site).glob(f"*-{FUTURE}.dist-info"))

    # The control: the same pip, in the same environment, offered the future does take it.
    report = subprocess.run(
        [str(repo / ".venv" / "bin" / "pip"), "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", "-", "httpx[http2]"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    would = {_canon(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.stdout)["install"]}
    assert would.get("httpx") == FUTURE and would.get("h2") == FUTURE, would
