"""Errors that reach the operator: each names where the problem is and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the site, found by loading or validating it."""

    path: str  # YAML path, e.g. "users[3].name"
    message: str
    fix: str = ""
    line: int | None = None

    def render(self) -> str:
        where = self.path or "(file)"
        if self.line is not None:
            where = f"{where} (line {self.line})"
        text = f"{where}: {self.message}"
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


class AicError(Exception):
    """Base for errors the CLI prints cleanly (no traceback)."""

    exit_code = 1


@dataclass
class SiteInvalid(AicError):
    problems: list[Problem] = field(default_factory=list)
    exit_code: int = 2

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"site is invalid: {n} problem{'s' if n != 1 else ''}"
        return head + "\n" + "\n".join("  " + p.render() for p in self.problems)


class PermanentError(AicError):
    """Retrying will not help; the operator must change something."""


class TemporaryError(AicError):
    """A transient failure; the caller may retry after `delay` seconds."""

    def __init__(self, message: str, delay: float = 1.0):
        super().__init__(message)
        self.delay = delay
