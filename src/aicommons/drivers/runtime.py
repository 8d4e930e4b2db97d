"""The aicommons runtime: this checkout as a wheel, and a layer that runs it (the portal and any
other aicommons service in its own container).

No registry name is ever installed for aicommons itself: the wheel is built here from the
checkout's files (the package files and package data pyproject.toml names), byte-for-byte the
same for the same files (sorted entries, fixed timestamps), and installed by its sha256 with
`--require-hashes`, after the runtime lock exactly as scripts/install.sh installs it
(`--no-deps --require-hashes --only-binary :all:`, then `pip check`). setuptools' own
bdist_wheel needs the `wheel` package, which the locks do not carry; a wheel is a zip with a
dist-info directory (PEP 427, core metadata 2.1), so it is written directly.

The LXC driver builds the layer once under `<cache_dir>/runtime/aicommons-<version>-<hash>`
(a venv made by Debian's /usr/bin/python3, the containers' Python) and binds it read-only at
`/opt/aicommons/runtime`; the hash covers the lock, the wheel and the build steps, so a changed
checkout gets a new layer — a hard-linked copy of the lock's venv (`deps-<hash>`, built once
per lock) plus the wheel, a few MB each. The Proxmox driver pushes the same wheel and lock into the container
and installs them there the same way (render/aicservice.py's install script).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from aicommons.drivers import applayers
from aicommons.errors import PermanentError
from aicommons.render.aicservice import MOUNT, WHEEL_TAG

BUILD_VERSION = "1"  # bump when the steps below change what ends up in a layer
LOCK = "requirements.lock"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: the same files give the same bytes


@dataclass(frozen=True)
class Wheel:
    path: Path
    sha256: str
    version: str


def checkout() -> Path:
    """The source checkout this aicommons runs from (an editable install, as install.sh makes)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file() or not (root / LOCK).is_file():
        raise PermanentError(f"aicommons runs from {Path(__file__).resolve().parents[1]}, not from a source checkout "
                             f"(no pyproject.toml and {LOCK} in {root}); the portal's runtime is built from the "
                             "checkout: run aicommons from one (`bash scripts/install.sh`)")
    return root


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel_files(root: Path) -> tuple[dict, dict[str, bytes]]:
    """(pyproject's [project], {path in the wheel: bytes}) of the package: every module of it and
    the package data pyproject.toml lists, as setuptools would pack them."""
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    project = meta["project"]
    src = root / "src"
    pkg = src / "aicommons"
    files: dict[str, bytes] = {}
    for p in sorted(pkg.rglob("*.py")):
        if "__pycache__" not in p.parts:
            files[p.relative_to(src).as_posix()] = p.read_bytes()
    data = meta.get("tool", {}).get("setuptools", {}).get("package-data", {}).get("aicommons", [])
    for pattern in data:
        for p in sorted(pkg.glob(pattern)):
            if p.is_file() and "__pycache__" not in p.parts:
                files[p.relative_to(src).as_posix()] = p.read_bytes()
    return project, files


def _metadata(project: dict) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {project['version']}",
             f"Summary: {project.get('description', '')}"]
    if project.get("requires-python"):
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {d}" for d in project.get("dependencies", [])]
    return "\n".join(lines) + "\n"


def wheel_bytes(root: Path) -> tuple[str, str, bytes]:
    """(file name, version, the wheel's bytes), the same bytes for the same checkout files."""
    project, files = wheel_files(root)
    name, version = project["name"], project["version"]
    if not re.fullmatch(r"[a-z0-9_]+", name) or not re.fullmatch(r"[0-9][0-9a-z.+]*", version):
        raise PermanentError(f"pyproject.toml: name {name!r} / version {version!r} cannot name a wheel")
    info = f"{name}-{version}.dist-info"
    files[f"{info}/METADATA"] = _metadata(project).encode()
    files[f"{info}/WHEEL"] = (f"Wheel-Version: 1.0\nGenerator: aicommons\nRoot-Is-Purelib: true\n"
                              f"Tag: {WHEEL_TAG}\n").encode()
    scripts = project.get("scripts", {})
    if scripts:
        files[f"{info}/entry_points.txt"] = ("[console_scripts]\n" + "".join(
            f"{k} = {v}\n" for k, v in sorted(scripts.items()))).encode()
    record = [f"{p},{_record_hash(b)},{len(b)}" for p, b in sorted(files.items())] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in sorted(files.items()):
            zi = zipfile.ZipInfo(path, date_time=_EPOCH)
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    return f"{name}-{version}-{WHEEL_TAG}.whl", version, buf.getvalue()


def build_wheel(cache_dir: str | Path) -> Wheel:
    """The checkout's wheel under `<cache_dir>/runtime/wheels/<sha256[:16]>/` (written once)."""
    fname, version, data = wheel_bytes(checkout())
    sha = _sha(data)
    path = Path(cache_dir) / "runtime" / "wheels" / sha[:16] / fname
    if not (path.is_file() and _sha(path.read_bytes()) == sha):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{fname}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o644)
        tmp.rename(path)
    return Wheel(path, sha, version)


def lock_text() -> str:
    return (checkout() / LOCK).read_text()


def recipe(wheel: Wheel, lock: str) -> dict:
    return {"build": BUILD_VERSION, "lock": _sha(lock.encode()), "wheel": wheel.sha256,
            "python": applayers.PYTHON}


def layer_name(wheel: Wheel, lock: str) -> str:
    h = _sha(json.dumps(recipe(wheel, lock), sort_keys=True).encode())[:12]
    return f"aicommons-{wheel.version}-{h}"


def current_layer_name() -> str | None:
    """The layer this checkout would run now (no build); None where aicommons does not run from
    a checkout (inside the portal's own container): then nothing is compared."""
    try:
        _, version, data = wheel_bytes(checkout())
        lock = lock_text()
    except PermanentError:
        return None
    return layer_name(Wheel(Path(), _sha(data), version), lock)


def mount_point() -> str:
    return MOUNT


def _pip(venv: Path) -> tuple[list[str], list[str], dict[str, str]]:
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    install = [*pip, "install", "--progress-bar", "off", "--no-deps", "--require-hashes", "--only-binary", ":all:"]
    return pip, install, applayers.clean_env([str(venv / "bin")])


def ensure_deps(cache_dir: str | Path, lock: str, log=print) -> Path:
    """`<cache_dir>/runtime/deps-<lock hash>`: a venv with the runtime lock installed exactly.
    Built once per lock (~450 MB); every runtime layer is a hard-linked copy of it plus the wheel,
    so a changed checkout costs a few MB, not another copy of the dependencies."""
    path = Path(cache_dir) / "runtime" / f"deps-{_sha(f'{BUILD_VERSION}:{applayers.PYTHON}:{lock}'.encode())[:12]}"
    if applayers.is_ready(path):
        return path

    def build(tmp: Path, logf) -> None:
        applayers._sh([applayers.PYTHON, "-m", "venv", str(tmp)], logf)
        (tmp / "aicommons-requirements.lock").write_text(lock)
        pip, install, env = _pip(tmp)
        applayers._sh([*install, "-r", str(tmp / "aicommons-requirements.lock")], logf, env)

    return applayers._locked_build(path, "aicommons runtime dependencies (the runtime lock)", build, log,
                                   stamp={"runtime": "deps", "lock": _sha(lock.encode()), "build": BUILD_VERSION})


def ensure_layer(cache_dir: str | Path, log=print) -> Path:
    """`<cache_dir>/runtime/aicommons-<version>-<hash>`, built first if it is not there yet."""
    wheel, lock = build_wheel(cache_dir), lock_text()
    path = Path(cache_dir) / "runtime" / layer_name(wheel, lock)
    if applayers.is_ready(path):
        return path
    deps = ensure_deps(cache_dir, lock, log)

    def build(tmp: Path, logf) -> None:
        # Hard links: nothing in a finished layer is ever written again, and pip only adds files.
        applayers._sh(["cp", "-al", str(deps), str(tmp)], logf)
        for own in ("ready", "build.log"):  # the base's, not this layer's: unlinked, never written through
            (tmp / own).unlink(missing_ok=True)
        # The wheel by its hash, like every line of the lock (pip refuses any other bytes).
        (tmp / "aicommons-wheel.txt").write_text(f"aicommons @ {wheel.path.as_uri()} --hash=sha256:{wheel.sha256}\n")
        pip, install, env = _pip(tmp)
        applayers._sh([*install, "-r", str(tmp / "aicommons-wheel.txt")], logf, env)
        applayers._sh([*pip, "check"], logf, env)
        applayers._sh([str(tmp / "bin" / "python"), "-m", "aicommons.cli", "--help"], logf, env)

    return applayers._locked_build(path, f"aicommons {wheel.version} runtime (wheel {wheel.sha256[:12]})", build,
                                   log, stamp={"runtime": "aicommons", **recipe(wheel, lock)})

