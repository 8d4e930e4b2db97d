"""The `aicommons` command on the file-backed fake world (tests only; the shipped CLI has no switch).

`CLI` runs the real CLI in a subprocess after pointing `drivers.registry.FAKE_WORLD` at the
directory named by AICOMMONS_FAKE_DIR (read here, then removed from the environment): the
compute driver and tenancy back ends are then `drivers/fake.py` and `tenancy/fake.py`, and the
host-network guard has no namespace to join. The installed `aicommons` ignores that variable
and says so (issue 23).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c",
       f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.fakeworld import main; sys.exit(main())"]


def install(directory: str | os.PathLike) -> None:
    from aicommons.drivers import registry

    registry.FAKE_WORLD = str(directory)


def main() -> int:
    directory = os.environ.pop("AICOMMONS_FAKE_DIR", None)
    if directory:
        install(directory)
    from aicommons.cli import main as cli_main

    return cli_main()
