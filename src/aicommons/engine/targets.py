"""Moved to `aicommons.drivers.targets` (the file target is part of the driver contract).

Kept only for engine/api.py and drivers/lxc/driver.py, which other branches are changing;
delete this module once they import from `aicommons.drivers.targets`.
"""

from aicommons.drivers.targets import FileTarget, LocalDirTarget, digest

__all__ = ["FileTarget", "LocalDirTarget", "digest"]
