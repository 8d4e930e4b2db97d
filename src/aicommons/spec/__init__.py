"""The site file: models, loading with line numbers, and `init`'s default."""

from aicommons.spec.load import LineIndex, load_site, load_text
from aicommons.spec.models import Site

__all__ = ["LineIndex", "Site", "load_site", "load_text"]
