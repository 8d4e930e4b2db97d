"""What every command shares: the console, loading the site file, clean errors."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from aicommons.errors import SiteInvalid
from aicommons.spec import LineIndex, Site, load_site

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

DEFAULT_SITE = "site.yaml"

SiteFile = typer.Option(
    Path(os.environ.get("AICOMMONS_SITE", DEFAULT_SITE)), "-f", "--file", help="The site file.",
    show_default=True,
)


def load(path: Path) -> tuple[Site, LineIndex]:
    """Load and validate the site file's structure (not yet allocation)."""
    return load_site(path)


def load_resolved(path: Path, held: dict[str, str] | None = None, certificates: dict | None = None):
    """Load the site file and resolve it; SiteInvalid lists every problem."""
    from aicommons.plan import resolve

    site, index = load(path)
    return resolve(site, held=held, index=index, certificates=certificates)


__all__ = ["console", "err_console", "load", "load_resolved", "SiteFile", "SiteInvalid"]
