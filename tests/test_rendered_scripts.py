"""Every shell script the site runs is parsed and linted (issue 24: no shared service's install
script had ever been run or even parsed anywhere).

Real: Debian's /bin/sh (`sh -n`, dash, as in the containers) and ShellCheck 0.9 (Debian's
`shellcheck`, installed by `scripts/install.sh --test`) over every `*.sh` file `render` makes for
the reference architecture's 50-user Proxmox site (each shared service's install.sh, the portal's
included). Nothing is simulated; the scripts are not run here (most need Docker or the Internet).
The configure snippets the Proxmox driver runs with `sh -c` are parsed by the simulator on every
`pct exec` (tests/pvesim: unknown commands fail there).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from aicommons.drivers.proxmox import provision
from aicommons.render import render_site
from tests.test_render import FakeSecrets, make_site


@pytest.fixture(scope="module")
def scripts():
    files = render_site(make_site(50), FakeSecrets())
    out = {path: f.content for path, f in files.items() if path.endswith(".sh")}
    assert len(out) >= 30, sorted(out)  # one per shared service at least
    # and the scripts the Proxmox driver runs itself: Docker's pinned install and its readiness probe
    out["driver/docker-install.sh"] = provision.DOCKER_INSTALL
    out["driver/docker-probe.sh"] = provision.DOCKER_PROBE
    return out


def test_every_rendered_script_parses(scripts):
    bad = {}
    for path, text in scripts.items():
        proc = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True)
        if proc.returncode != 0:
            bad[path] = proc.stderr
    assert not bad, bad


def test_every_rendered_script_is_shellcheck_clean(scripts, tmp_path):
    exe = shutil.which("shellcheck")
    assert exe, "shellcheck is not installed: bash scripts/install.sh --test installs it"
    paths = []
    for i, (path, text) in enumerate(sorted(scripts.items())):
        f = tmp_path / f"{i:03d}-{path.replace('/', '_')}"
        f.write_text(text)
        paths.append(str(f))
    proc = subprocess.run([exe, "-s", "sh", "-f", "gcc", *paths], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
