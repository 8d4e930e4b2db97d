"""Write rendered files safely: check every file parses, then write each atomically.

A temporary name Traefik ignores (`.205200.yml.tmp`: it reads only .yml/.yaml/.toml), fsync,
rename in the same directory, fsync the directory. Unchanged files are not touched, so a
watcher sees only real changes. One unparsable file in Traefik's directory freezes every update
of the whole directory, so nothing is written unless every file parses.
"""

from __future__ import annotations

import configparser
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from aicommons.fsutil import fsync_dir
from aicommons.render.authentik import TagLoader
from aicommons.render.envfile import RenderError, parse_env
from aicommons.render.files import RenderedFile


@dataclass
class WriteResult:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _is_ini(path: str) -> bool:
    name = PurePosixPath(path).name
    return name.endswith((".ini", ".service")) or (name.endswith(".conf") and "/systemd/" in f"/{path}")


def parse_problem(path: str, content: str) -> str | None:
    """Why `content` would not parse as the kind of file `path` names (None when it parses)."""
    name = PurePosixPath(path).name
    try:
        if name.endswith((".yml", ".yaml")):
            yaml.load(content, Loader=TagLoader)  # noqa: S506 - a SafeLoader that also accepts !tags
        elif name.endswith(".json"):
            json.loads(content)
        elif name.endswith(".toml"):
            tomllib.loads(content)
        elif name == ".env" or name.endswith(".env"):
            parse_env(content)
        elif _is_ini(path):
            configparser.ConfigParser(interpolation=None, strict=False).read_string(content)
    except (yaml.YAMLError, ValueError, tomllib.TOMLDecodeError, configparser.Error) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def _safe_rel(path: str) -> PurePosixPath:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise RenderError(f"refusing to write {path!r}: rendered paths must be relative and stay in the output")
    return p


def check_all(files: Iterable[RenderedFile]) -> None:
    bad = [f"{f.path}: {msg}" for f in files if (msg := parse_problem(f.path, f.content))]
    if bad:
        raise RenderError("refusing to write files that do not parse (nothing was written):\n  " + "\n  ".join(bad))


def _same(target: Path, f: RenderedFile, data: bytes) -> bool:
    try:
        st = target.stat()
    except FileNotFoundError:
        return False
    return st.st_mode & 0o7777 == f.mode and st.st_size == len(data) and target.read_bytes() == data


def _stage(out_dir: Path, f: RenderedFile, made: list[Path]) -> tuple[Path, Path]:
    """Write one file's content beside its target under a temporary name: (tmp, target)."""
    target = out_dir / Path(*_safe_rel(f.path).parts)
    missing = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    made.extend(reversed(missing))  # outermost first; undone innermost first
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, f.mode)
    made.append(tmp)
    try:
        os.fchmod(fd, f.mode)  # the umask must not widen or narrow it
        view = memoryview(f.content.encode())
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp, target


def _undo(made: list[Path]) -> None:
    for p in reversed(made):
        try:
            p.rmdir() if p.is_dir() else p.unlink()
        except OSError:
            pass


def write_file(out_dir: Path, f: RenderedFile) -> bool:
    """Write one file atomically; False when it already holds this content and mode."""
    target = out_dir / Path(*_safe_rel(f.path).parts)
    if _same(target, f, f.content.encode()):
        return False
    made: list[Path] = []
    try:
        tmp, target = _stage(out_dir, f, made)
    except BaseException:
        _undo(made)
        raise
    os.replace(tmp, target)
    fsync_dir(target.parent)
    return True


def write_tree(files: Mapping[str, RenderedFile] | Iterable[RenderedFile], out_dir: str | os.PathLike,
               prune: Iterable[str] = ()) -> WriteResult:
    """Check every file parses, then write the changed ones atomically.

    `prune`: directories (relative) where files that were not rendered are removed, e.g.
    `traefik/dynamic` so a removed user's routes disappear. Only regular files directly inside.
    """
    items = list(files.values()) if isinstance(files, Mapping) else list(files)
    out = Path(out_dir)
    result = WriteResult()
    changed = []
    for f in items:
        if _same(out / Path(*_safe_rel(f.path).parts), f, f.content.encode()):
            result.unchanged.append(f.path)
        else:
            changed.append(f)
    check_all(changed)  # only what would be written; what is on disk already passed
    # Every changed file is staged first; only when all are on disk are they renamed into place.
    # A failure while staging (a full disk, an unwritable directory) removes what was staged and
    # the directories made for it: the tree is as it was, with no temporary files left.
    made: list[Path] = []
    staged = []
    try:
        for f in changed:
            staged.append((f, *_stage(out, f, made)))
    except BaseException:
        _undo(made)
        raise
    for f, tmp, target in staged:
        os.replace(tmp, target)
        result.written.append(f.path)
    for parent in {target.parent for _, _, target in staged}:
        fsync_dir(parent)
    keep = {f.path for f in items}
    for d in prune:
        folder = out / Path(*_safe_rel(d).parts)
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            rel = f"{PurePosixPath(d)}/{p.name}"
            if p.is_file() and not p.name.startswith(".") and rel not in keep:
                p.unlink()
                result.removed.append(rel)
    return result
