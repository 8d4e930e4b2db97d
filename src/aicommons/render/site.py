"""render_site / render_user: gather every renderer's files."""

from __future__ import annotations

from aicommons.plan.model import ResolvedSite
from aicommons.plan.secrets import SecretLookup
from aicommons.render.files import RenderedFile


def render_site(resolved: ResolvedSite, secrets: SecretLookup) -> dict[str, RenderedFile]:
    """Every file of the site, keyed by relative path (pure)."""
    return {}


def render_user(resolved: ResolvedSite, user: str, secrets: SecretLookup) -> dict[str, RenderedFile]:
    """The files of one user: its Traefik file, compose bundle, .env and Authentik blueprint."""
    return {}
