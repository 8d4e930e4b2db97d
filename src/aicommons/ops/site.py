"""What every operations command needs from a site file: its secrets, its backup sources.

Shared by the CLI (`status`, `backup …`) and the portal, so both log in the same way and
refuse the same mistakes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aicommons.errors import PermanentError

KINDS = ("postgres", "redis", "qdrant", "s3")


def secrets_for(site_file: Path, site, required: bool = False):
    """The state store's secrets when the site has been applied, else None (checks log in without);
    with `required`, a lookup that explains what is missing when a secret is first needed."""
    from aicommons.state.store import StateStore, default_path

    path = default_path(site_file)
    if not path.exists():
        if not required:
            return None

        def missing(scope: str, key: str) -> str:
            raise PermanentError(f"secret {scope}/{key} is needed but there is no state at {path}; run "
                                 "`aicommons apply` first, or give the server as `external:` with admin_password")
        return missing
    from aicommons.state.secrets import KeySource

    store = StateStore.open(path, create=False)
    ks = KeySource.default(path.parent, site.secrets.key_file, site.secrets.key_env)
    secrets = store.secrets(ks)
    return secrets if required else existing_only(secrets)


def existing_only(secrets):
    """A lookup that never generates: status only reads (KeyError for a secret not made yet)."""
    def existing(scope: str, key: str) -> str:
        if not secrets.version(scope, key):
            raise KeyError(f"{scope}/{key}")
        return secrets.get(scope, key)
    return existing


def backup_context(site_file: Path, resolved, dir_: Path | None = None, only: str | None = None,
                   targets: Mapping[str, str] | None = None):
    """(sources with admin logins, the backup repository) for `backup run|verify|restore`."""
    from aicommons.ops.backup.repo import Repo
    from aicommons.ops.backup.site import backup_dir, sources_for

    base = Path(site_file).resolve().parent
    src = sources_for(resolved, secrets_for(site_file, resolved.site, required=True), base, targets or {})
    if only:
        keep = {k.strip() for k in only.split(",") if k.strip()}
        unknown = keep - set(KINDS)
        if unknown:
            raise PermanentError(f"--only {only!r}: unknown {', '.join(sorted(unknown))}; use {', '.join(KINDS)}")
        for k in set(KINDS) - keep:
            setattr(src, k, None)
    return src, Repo(dir_ or backup_dir(resolved, base))


def backup_repo(site_file: Path, resolved, dir_: Path | None = None):
    """The backup repository alone (listing needs no logins)."""
    from aicommons.ops.backup.repo import Repo
    from aicommons.ops.backup.site import backup_dir

    return Repo(dir_ or backup_dir(resolved, Path(site_file).resolve().parent))


def check_user(resolved, user: str | None) -> str | None:
    if user is not None and user not in {t.user for t in resolved.tenants}:
        raise PermanentError(f"--user {user!r} is not a user of site {resolved.site.name}; see `aicommons users`")
    return user


def fetch_if_remote(repo, backup_id: str, resolved) -> None:
    """Fetch a backup from backups.s3_url when it is not in the local directory."""
    from aicommons.ops.backup.site import fetch

    if not (repo.root / backup_id / "manifest.json").exists() and resolved.site.backups.s3_url:
        fetch(repo, backup_id, resolved.site.backups.s3_url)
