"""Running host commands: one place that turns a failed command into an AicError with its stderr."""

from __future__ import annotations

import subprocess

from aicommons.errors import PermanentError, TemporaryError


def run(argv: list[str], *, input: bytes | None = None, timeout: float = 600, check: bool = True,
        temporary: bool = False) -> subprocess.CompletedProcess:
    """Run argv (never through a shell). Failures raise PermanentError (or TemporaryError)."""
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise PermanentError(f"{argv[0]} is not installed: scripts/install.sh installs it (`aicommons doctor` "
                             "lists every program the LXC driver runs; add it to drivers/lxc/needs.py if it is "
                             "not there)") from None
    except subprocess.TimeoutExpired:
        raise TemporaryError(f"{' '.join(argv[:6])} did not finish within {timeout:.0f}s", delay=5) from None
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).decode(errors="replace").strip()[-2000:]
        cls = TemporaryError if temporary else PermanentError
        raise cls(f"`{' '.join(argv[:8])}` failed (exit {proc.returncode}): {err}")
    return proc


def out(argv: list[str], **kw) -> str:
    return run(argv, **kw).stdout.decode(errors="replace")
