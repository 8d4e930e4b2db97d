"""The layer builder's bookkeeping: names, hashes, one build per recipe, nothing half-built.

Real: the catalog's recipes, the filesystem, file locks, threads and tar archives. The package
installs themselves (pip, npm) are replaced by small build functions here; the real builds and the
apps running from them are tests/test_native_apps.py.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time

import pytest

from aicommons.catalog import load_catalog
from aicommons.drivers import applayers
from aicommons.errors import PermanentError

CAT = load_catalog()


def test_every_app_has_a_native_recipe_or_says_why_not():
    for app in CAT.apps.values():
        n = app.native
        assert n is not None, app.name
        if n.source == "none":
            assert n.unavailable and not n.command, app.name
            continue
        assert n.package and n.version and n.command and n.data_dir.startswith("/"), app.name
        assert n.command[0].startswith("{layer}/bin/python" if n.source == "pypi" else "{node}/bin/node"), app.name
        assert (n.source == "npm") == bool(n.node), app.name


def test_layer_names_follow_the_recipe():
    app = CAT.apps["n8n"]
    name = applayers.layer_name(app)
    assert name.startswith(f"n8n-{app.native.version}-") and len(name.rsplit("-", 1)[1]) == 12
    assert applayers.mount_point(app) == f"/opt/aicommons/apps/n8n-{app.native.version}"
    moved = app.model_copy(update={"native": app.native.model_copy(update={"version": "9.9.9"})})
    assert applayers.layer_name(moved) != name and applayers.layer_name(moved).startswith("n8n-9.9.9-")
    # What only changes how the app runs (its env, its command) does not rebuild the layer.
    other = app.model_copy(update={"env": {"X": "1"}, "native": app.native.model_copy(update={"command": ["x"]})})
    assert applayers.layer_name(other) == name
    node = app.model_copy(update={"native": app.native.model_copy(update={"node": "24.0.0"})})
    assert applayers.layer_name(node) != name


def test_source_none_is_a_clear_error(tmp_path):
    with pytest.raises(PermanentError, match="no published package"):
        applayers.ensure_layer(CAT.apps["big-agi"], tmp_path)


def test_one_build_per_layer_even_when_two_ask_at_once(tmp_path):
    builds = []

    def build(tmp, logf):
        builds.append(1)
        tmp.mkdir()
        time.sleep(0.3)
        (tmp / "payload").write_text("x")

    path = tmp_path / "apps" / "demo-1-abc"
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        applayers._locked_build(path, "demo", build, lambda m: None, {"v": 1}))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds == [1] and results == [path] * 3
    assert (path / "payload").read_text() == "x" and json.loads((path / "ready").read_text())["v"] == 1
    assert applayers._locked_build(path, "demo", build, lambda m: None, {}) == path and builds == [1]


def test_a_failed_build_leaves_no_layer_and_the_next_run_builds_it(tmp_path):
    path = tmp_path / "apps" / "demo-1-abc"

    def broken(tmp, logf):
        tmp.mkdir()
        (tmp / "half").write_text("x")
        raise PermanentError("npm failed")

    with pytest.raises(PermanentError, match="npm failed"):
        applayers._locked_build(path, "demo", broken, lambda m: None, {})
    assert not path.exists() and not list(path.parent.glob(".demo*.building"))
    path.mkdir()  # e.g. copied by hand, without a stamp: not trusted, rebuilt
    (path / "stale").write_text("x")
    applayers._locked_build(path, "demo", lambda tmp, logf: tmp.mkdir(), lambda m: None, {})
    assert applayers.is_ready(path) and not (path / "stale").exists()


def _tgz(members: dict[str, tuple[str, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, (kind, data) in members.items():
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, data
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data.encode()))
    return buf.getvalue()


def test_unpack_keeps_the_package_and_refuses_escapes(tmp_path):
    good = tmp_path / "good.tgz"
    good.write_bytes(_tgz({"package/bin/node": ("file", "elf"), "package/bin/n": ("sym", "node")}))
    applayers._unpack(good, tmp_path / "out")
    assert (tmp_path / "out/bin/node").read_text() == "elf" and (tmp_path / "out/bin/n").read_text() == "elf"
    for bad in ({"package/../../evil": ("file", "x")}, {"package/link": ("sym", "/etc/passwd")},
                {"package/a/link": ("sym", "../../../etc")}):
        tgz = tmp_path / "bad.tgz"
        tgz.write_bytes(_tgz(bad))
        with pytest.raises(PermanentError, match="outside the package"):
            applayers._unpack(tgz, tmp_path / "bad")


def test_packages_with_install_scripts_are_found(tmp_path):
    nm = tmp_path / "node_modules"
    for rel, data in {"plain": {"name": "plain"}, "gyp": {"name": "gyp"},
                      "post": {"name": "post", "scripts": {"postinstall": "node x"}},
                      "@scope/inst": {"name": "@scope/inst", "scripts": {"install": "node-gyp rebuild"}},
                      "plain/node_modules/nested": {"name": "nested", "scripts": {"preinstall": "x"}}}.items():
        (nm / rel).mkdir(parents=True)
        (nm / rel / "package.json").write_text(json.dumps(data))
    (nm / "gyp" / "binding.gyp").write_text("{}")
    (nm / "post" / "test").mkdir()
    (nm / "post" / "test" / "package.json").write_text(json.dumps({"name": "fixture", "scripts": {"install": "x"}}))
    assert applayers._packages_with_scripts(nm) == ["@scope/inst", "gyp", "nested", "post"]
