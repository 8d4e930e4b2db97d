"""Pure renderers: a resolved site -> every file the data plane runs on (no I/O here).

`render_site(resolved, secrets)` returns {relative path: RenderedFile}; `render_user` only the
files of one user (what changes when one user changes). `write.write_tree` puts them on disk.
"""

from __future__ import annotations

from aicommons.render.files import RenderedFile
from aicommons.render.site import render_site, render_user

__all__ = ["RenderedFile", "render_site", "render_user"]
