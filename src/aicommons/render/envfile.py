"""`.env` files for Docker Compose: secrets live here (0600), the compose file says ${VAR}."""

from __future__ import annotations

import re

from aicommons.errors import AicError

_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class RenderError(AicError):
    """A value cannot be rendered safely (bad variable name, control characters)."""


def quote(value: str) -> str:
    """Single quotes: Compose reads the value raw (no ${} interpolation, no escapes)."""
    if any(ch in value for ch in "\n\r\0"):
        raise RenderError("a secret value holds a newline or NUL; rotate it (`aicommons secrets rotate`)")
    if "'" not in value:
        return f"'{value}'"
    # Double quotes: escape what Compose would interpret.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$") + '"'


def render_env(values: dict[str, str], header: str) -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    for name, value in values.items():
        if not _NAME.match(name):
            raise RenderError(f"{name!r} is not a valid environment variable name")
        lines.append(f"{name}={quote(value)}")
    return "\n".join(lines) + "\n"


def parse_env(text: str) -> dict[str, str]:
    """Read back what render_env writes (for the parse check before a file is written)."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not _NAME.match(name):
            raise ValueError(f"line {n}: expected NAME=value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif value[:1] in "'\"":
            raise ValueError(f"line {n}: unterminated quote")
        out[name] = value
    return out
