"""One rendered file: where it goes (relative path), what it holds, and its mode."""

from __future__ import annotations

from dataclasses import dataclass

SECRET_MODE = 0o600


@dataclass(frozen=True, slots=True)
class RenderedFile:
    path: str  # relative to the output directory, e.g. `traefik/dynamic/205200.yml`
    content: str
    mode: int = 0o644  # 0o600 for anything that holds a secret

