"""Where Traefik's dynamic files go: a small interface so each driver can point it somewhere.

`LocalDirTarget` writes into a directory on this host (the LXC driver's Traefik, tests, or a
mounted share); writes are `name.tmp` + rename because Traefik reads only .yml/.yaml/.toml and
one half-written file would stop every update of the whole directory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol


def digest(content: str | bytes) -> str:
    data = content.encode() if isinstance(content, str) else content
    return hashlib.sha256(data).hexdigest()


class FileTarget(Protocol):
    def list(self) -> dict[str, str]:
        """name -> sha256 of the content, for every .yml/.yaml/.toml file."""

    def write(self, name: str, content: str, mode: int = 0o644) -> None: ...

    def delete(self, name: str) -> None: ...


class LocalDirTarget:
    SUFFIXES = (".yml", ".yaml", ".toml")

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)

    def list(self) -> dict[str, str]:
        if not self.dir.is_dir():
            return {}
        return {p.name: digest(p.read_bytes()) for p in self.dir.iterdir()
                if p.suffix in self.SUFFIXES and p.is_file()}

    def write(self, name: str, content: str, mode: int = 0o644) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.dir / name
        tmp = self.dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)

    def delete(self, name: str) -> None:
        (self.dir / name).unlink(missing_ok=True)
