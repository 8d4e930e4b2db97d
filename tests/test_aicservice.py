"""The aicommons runtime (this checkout's wheel, the layer's name) and an aicommons service's
rendered files (unit, env file, Proxmox install script, LXC mounts).

Real: the wheel built from this checkout's files and read back with zipfile, the renderer, the
LXC config renderer, `sh -n` on the install script. Nothing runs in a container here
(tests/test_portal_lxc.py and tests/test_portal_proxmox.py do).
"""

from __future__ import annotations

import base64
import hashlib
import io
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from aicommons.catalog import load_catalog
from aicommons.drivers import runtime
from aicommons.drivers.lxc import config
from aicommons.plan import resolve
from aicommons.plan.access import proxy_source
from aicommons.render import aicservice as R
from aicommons.spec.load import load_text
from aicommons.state.secrets import KeySource

ROOT = Path(__file__).resolve().parents[1]


def _copy_checkout(dest: Path) -> Path:
    for name in ("pyproject.toml", "requirements.lock"):
        shutil.copy(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def test_the_wheel_is_the_same_bytes_for_the_same_files_and_holds_the_package(tmp_path):
    name, version, a = runtime.wheel_bytes(ROOT)
    assert (name, version) == (f"aicommons-{version}-py3-none-any.whl", tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["version"])
    assert runtime.wheel_bytes(_copy_checkout(tmp_path))[2] == a  # no timestamps, no order from the disk
    z = zipfile.ZipFile(io.BytesIO(a))
    names = set(z.namelist())
    for f in ("aicommons/cli/__main__.py", "aicommons/catalog/services/portal.yaml", "aicommons/py.typed",
              "aicommons/portal/templates/person.html", "aicommons/catalog/evidence.yaml"):
        assert f in names, f
    assert not any("__pycache__" in n for n in names)
    info = f"aicommons-{version}.dist-info"
    meta = z.read(f"{info}/METADATA").decode()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [ln.split(": ", 1)[1] for ln in meta.splitlines() if ln.startswith("Requires-Dist")] == deps
    assert "aicommons = aicommons.cli:main" in z.read(f"{info}/entry_points.txt").decode()
    # RECORD: every file with its urlsafe sha256 and size, as pip checks on install
    for line in z.read(f"{info}/RECORD").decode().splitlines():
        path, digest, size = line.rsplit(",", 2)
        if path.endswith("RECORD"):
            continue
        data = z.read(path)
        want = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert (digest, int(size)) == (want, len(data)), path


def test_a_changed_checkout_or_lock_names_a_new_layer(tmp_path):
    lock = (ROOT / "requirements.lock").read_text()
    _, version, data = runtime.wheel_bytes(ROOT)
    w = runtime.Wheel(tmp_path / "x.whl", hashlib.sha256(data).hexdigest(), version)
    base = runtime.layer_name(w, lock)
    assert base.startswith(f"aicommons-{version}-") and base == runtime.layer_name(w, lock)
    (tmp_path / "c").mkdir()
    copy = _copy_checkout(tmp_path / "c")
    mod = copy / "src" / "aicommons" / "errors.py"
    mod.write_text(mod.read_text() + "\n# changed\n")
    _, _, changed = runtime.wheel_bytes(copy)
    w2 = runtime.Wheel(w.path, hashlib.sha256(changed).hexdigest(), version)
    assert runtime.layer_name(w2, lock) != base
    assert runtime.layer_name(w, lock + "\n") != base


def test_the_wheel_is_written_once_under_the_cache_dir(tmp_path):
    w = runtime.build_wheel(tmp_path)
    assert w.path.parent.parent == tmp_path / "runtime" / "wheels" and w.path.parent.name == w.sha256[:16]
    before = w.path.stat().st_mtime_ns
    assert runtime.build_wheel(tmp_path) == w and w.path.stat().st_mtime_ns == before


def _site(kind: str):
    data = {"version": 1, "name": "site1", "domain": "example.org", "services": {"postgres": {}, "portal": {}},
            "user_template": {"apps": ["code-server"]}, "users": []}
    if kind == "lxc":
        data["driver"] = {"kind": "lxc"}
    else:
        data["driver"] = {"kind": "proxmox", "api_url": "https://pve.internal:8006", "token_id": "a@pve!t",
                          "token_secret": "x", "nodes": ["pve1"], "storage": "local-lvm",
                          "template": "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst"}
    site, _ = load_text(yaml.safe_dump(data))
    return site


@pytest.mark.parametrize("kind,proxy", [("lxc", "10.0.5.1"), ("proxmox", "10.0.4.10")])
def test_the_unit_runs_serve_from_the_runtime_trusting_traefiks_source(kind, proxy):
    site = _site(kind)
    assert proxy_source(site) == proxy
    svc = load_catalog().services["portal"]
    c = next(c for c in resolve(site).containers if c.name == "portal")
    unit = R.unit(svc, c, site)
    assert (f"ExecStart=/opt/aicommons/runtime/bin/python -m aicommons.cli serve --listen 10.0.5.129:8080 "
            f"--trusted-proxy {proxy}\n") in unit
    assert "EnvironmentFile=/etc/aicommons/portal.env\n" in unit
    assert "CapabilityBoundingSet=\n" in unit and "NoNewPrivileges=yes\n" in unit
    assert "WantedBy=multi-user.target" in unit


def test_the_proxmox_install_script_installs_the_pushed_wheel_by_hash_and_starts_the_unit():
    from aicommons.render.shared_compose import shared_files

    site = _site("proxmox")
    files = {f.path: f for f in shared_files(resolve(site), lambda scope, key: "pw")}
    script = files["services/portal/install.sh"].content
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    assert "aicommons==" not in script and "pip install aicommons" not in script
    assert "--no-deps --require-hashes --only-binary :all: -r /opt/aicommons/portal/requirements.lock" in script
    assert "-r /opt/aicommons/portal/aicommons-wheel.txt" in script and '"$new/bin/python" -m pip' in script
    assert script.rstrip().endswith("systemctl restart aicommons-portal.service")
    assert "services/portal/aicommons-portal.service" in files


def test_env_file_quotes_values_and_refuses_what_systemd_would_misread():
    text = R.env_file({"AICOMMONS_STATE": 'postgresql://u:p"w\\x@h/db', "K": "v"})
    assert 'AICOMMONS_STATE="postgresql://u:p\\"w\\\\x@h/db"' in text and 'K="v"' in text
    with pytest.raises(ValueError, match="EnvironmentFile"):
        R.env_file({"K": "a\nb"})
    with pytest.raises(ValueError, match="EnvironmentFile"):
        R.env_file({"K=1": "a"})


def test_lxc_config_binds_read_only_unless_rw_is_said():
    from aicommons.plan.model import Container

    c = Container(ctid=129, ip="10.0.5.129", prefixlen=24, gateway="10.0.5.1", hostname="portal", role="shared",
                  name="portal", services=("portal",), phase=2, memory_mb=1024, cores=1, disk_gb=8, traefik_file="")
    text = config.render(c, site="s", bridge="vmbr0", lower="/l", rootfs="/r", idmap_base=1 << 20, ns="aic-s",
                         mounts=[("/cache/runtime/aicommons-0.1.0-abc", R.MOUNT, "ro"), ("/srv/site", "/etc/aicommons/site"),
                                 ("/srv/site/.aicommons", "/var/lib/aicommons/state", "rw")])
    assert "lxc.mount.entry = /cache/runtime/aicommons-0.1.0-abc opt/aicommons/runtime none bind,ro,create=dir,idmap=container 0 0" in text
    assert "lxc.mount.entry = /srv/site etc/aicommons/site none bind,ro,create=dir,idmap=container 0 0" in text
    # idmapped like the layers: the host's root-owned state is the container root's to write
    assert "lxc.mount.entry = /srv/site/.aicommons var/lib/aicommons/state none bind,rw,create=dir,idmap=container 0 0" in text


def test_the_key_is_exported_as_the_process_would_read_it(tmp_path, monkeypatch):
    from aicommons.state.store import StateStore

    monkeypatch.delenv("AICOMMONS_SECRET_KEY", raising=False)
    store = StateStore.open(tmp_path / "state.db")
    keys = KeySource(key_file=tmp_path / "secret.key")
    store.secrets(keys).get("portal", "session_key")
    exported = keys.export(store)
    assert exported == {"AICOMMONS_SECRET_KEY": (tmp_path / "secret.key").read_text().strip()}
    monkeypatch.setenv("AICOMMONS_SECRET_KEY", exported["AICOMMONS_SECRET_KEY"])
    assert KeySource(key_file=None).export(store) == exported  # the env var, as the portal gets it
    store.close()


def test_the_portal_is_deployed_on_the_default_lxc_site():
    from aicommons.plan.deployed import lxc_unsupported
    from aicommons.spec.default import LXC_CORE

    assert "portal" in LXC_CORE
    assert lxc_unsupported(load_catalog().services["portal"]) is None


def test_a_portal_container_on_an_older_runtime_layer_reads_as_stale():
    """A changed checkout names a new layer; the LXC driver then reports the running portal's
    container stopped, so the next apply restarts it with the new layer (mounts are set at start)."""
    from aicommons.drivers.lxc.aicservice import stale_runtime

    now = runtime.current_layer_name()
    assert now is not None and now.startswith("aicommons-")
    meta = {"role": "shared", "services": ["portal"]}
    line = "lxc.mount.entry = /var/cache/aicommons/runtime/{} opt/aicommons/runtime none bind,ro,create=dir 0 0\n"
    assert not stale_runtime(meta, line.format(now))
    assert stale_runtime(meta, line.format("aicommons-0.1.0-000000000000"))
    assert stale_runtime(meta, "")  # made before it ran from a layer
    assert not stale_runtime({"role": "shared", "services": ["postgres"]}, "")
