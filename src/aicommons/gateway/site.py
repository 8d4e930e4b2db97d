"""Where a site's gateway database is: $AICOMMONS_GATEWAY_DATABASE (a libpq URL or key=value
string), else the site's PostgreSQL (planned address or `external:`) with its admin login."""

from __future__ import annotations

import os
from pathlib import Path

from psycopg.conninfo import make_conninfo

from aicommons.errors import PermanentError

DATABASE_ENV = "AICOMMONS_GATEWAY_DATABASE"


def conninfo_for(site_file: Path, state_path: str | None = None) -> str:
    if os.environ.get(DATABASE_ENV):
        return os.environ[DATABASE_ENV]
    from aicommons.engine.api import key_source, open_state
    from aicommons.plan import resolve
    from aicommons.spec.load import load_site
    from aicommons.tenancy.registry import admin_credentials

    site, _ = load_site(site_file)
    if "gateway" not in site.services:
        raise PermanentError(f"{site_file}: services.gateway is not enabled; the site has no model gateway")
    state = open_state(site_file, state_path, read_only=True)
    try:
        resolved = resolve(site, held=state.held_slots())
        if "postgres" not in resolved.endpoints:
            raise PermanentError("the gateway keeps keys and usage in the site's PostgreSQL: enable services.postgres "
                                 f"or set ${DATABASE_ENV}")
        secrets = state.secrets(key_source(site, state, site_file))
        host, port, user, pw = admin_credentials(resolved, "postgres", secrets.get, Path(site_file).resolve().parent,
                                                 "postgres_admin_password")
    finally:
        state.close()
    return make_conninfo(host=host, port=port, user=user, password=pw, dbname=site.gateway.database)
