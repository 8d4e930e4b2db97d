"""Where a site's gateway database is: $AICOMMONS_GATEWAY_DATABASE (a libpq URL or key=value
string), else the site's PostgreSQL (planned address or `external:`) with its admin login."""

from __future__ import annotations

import os
from pathlib import Path

from psycopg.conninfo import make_conninfo

from aicommons.errors import AicError
from aicommons.render.aicservice import DATABASE_ENV

__all__ = ["DATABASE_ENV", "NoGateway", "conninfo_for", "conninfo_from"]


class NoGateway(AicError):
    exit_code = 2


def conninfo_for(site_file: Path, state_path: str | None = None) -> str:
    from aicommons.engine.api import key_source, open_state
    from aicommons.plan import resolve
    from aicommons.spec.load import load_site

    site, _ = load_site(site_file)
    state = open_state(site_file, state_path, read_only=True)
    try:
        resolved = resolve(site, held=state.held_slots())
        return conninfo_from(resolved, state.secrets(key_source(site, state, site_file)).get,
                             Path(site_file).resolve().parent)
    finally:
        state.close()


def conninfo_from(resolved, secrets, base_dir: Path) -> str:
    """The gateway database of a resolved site, reached with the site's PostgreSQL admin login."""
    from aicommons.tenancy.registry import admin_credentials

    if "gateway" not in resolved.endpoints:
        raise NoGateway("this site has no model gateway: enable services.gateway in site.yaml")
    if os.environ.get(DATABASE_ENV):
        return os.environ[DATABASE_ENV]
    if "postgres" not in resolved.endpoints:
        raise NoGateway("the gateway keeps keys and usage in the site's PostgreSQL: enable services.postgres "
                        f"(or its `external:`), or set ${DATABASE_ENV}")
    host, port, user, pw = admin_credentials(resolved, "postgres", secrets, base_dir, "postgres_admin_password")
    return make_conninfo(host=host, port=port, user=user, password=pw, dbname=resolved.site.gateway.database)
