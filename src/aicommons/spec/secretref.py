"""Resolve secret references from site.yaml: a literal, `env:VAR` or `file:PATH`."""

from __future__ import annotations

import os
from pathlib import Path

from aicommons.errors import Problem, SiteInvalid


def resolve_ref(value: str, field: str, base_dir: Path | None = None) -> str:
    """The secret's value. `field` names the YAML path for the error message (never the value); a
    reference that does not resolve is bad input (SiteInvalid: exit 2)."""
    if value.startswith("env:"):
        var = value[4:]
        if var not in os.environ:
            raise SiteInvalid([Problem(field, f"environment variable {var} is not set", "export it, or use file:PATH")])
        return os.environ[var]
    if value.startswith("file:"):
        path = Path(value[5:]).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SiteInvalid([Problem(field, f"cannot read {path}: {exc.strerror}", "check the path")]) from None
    return value
