"""Wiring a site to its backups: where each back end is reached, where backups go, and what
happens after a good one (retention, the monitoring metric, the off-site copy)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlparse

from aicommons.ops.backup.objects import S3, Qdrant
from aicommons.ops.backup.postgres import Server
from aicommons.ops.backup.repo import MANIFEST, BackupError, Manifest, Repo, to_prune, write_metric
from aicommons.ops.backup.run import Sources
from aicommons.ops.targets import retarget
from aicommons.plan.model import ResolvedSite
from aicommons.plan.secrets import SITE_SCOPE

Lookup = Callable[[str, str], str]


def sources_for(resolved: ResolvedSite, secrets: Lookup, base_dir: Path,
                targets: Mapping[str, str] | None = None) -> Sources:
    from aicommons.tenancy.registry import admin_credentials

    targets = targets or {}
    src = Sources()
    # What the driver does not run is skipped (and said so), never dialled.
    src.skipped = {n: f"not deployed here ({why})" for n, why in resolved.undeployed.items()
                   if n in ("postgres", "redis", "qdrant", "garage", "minio", "gitea")}
    eps = {k: v for k, v in resolved.endpoints.items() if k not in src.skipped}

    def server(service: str, key: str) -> Server:
        host, port, user, pw = admin_credentials(resolved, service, secrets, base_dir, key)
        h, p = retarget(host, port, targets)
        return Server(h, p, user, pw)

    if "postgres" in eps:
        src.postgres = server("postgres", "postgres_admin_password")
    if "redis" in eps:
        src.redis = server("redis", "redis_admin_password")
    if "qdrant" in eps:
        q = server("qdrant", "qdrant_api_key")
        src.qdrant = Qdrant(f"http://{q.host}:{q.port}", q.password)
    store = "garage" if "garage" in eps else ("minio" if "minio" in eps else None)
    if store:
        s = server(store, "s3_admin_token")
        if store == "garage":
            h, p = retarget(eps[store].host, eps[store].ports.get("s3", 3900), targets)
            src.s3 = S3(f"http://{h}:{p}", secrets(SITE_SCOPE, "s3_admin_access_key"), s.password)
        else:
            src.s3 = S3(f"http://{s.host}:{s.port}", s.user, s.password)
    if "gitea" in eps:
        src.gitea_ctid = next((c.ctid for c in resolved.containers if "gitea" in c.services), None)
    return src


def backup_dir(resolved: ResolvedSite, base_dir: Path) -> Path:
    d = Path(resolved.site.backups.dir).expanduser()
    return d if d.is_absolute() else Path(base_dir) / d


def apply_retention(repo: Repo, daily: int, weekly: int) -> list[str]:
    gone = to_prune(repo.list(), daily, weekly)
    for backup_id in gone:
        repo.remove(backup_id)
    return gone


def record_success(manifest: Manifest, textfile_dir: Path | None) -> Path | None:
    """The metric the `BackupTooOld` alert reads; only whole-site backups count."""
    if textfile_dir is None or manifest.user is not None:
        return None
    return write_metric(textfile_dir, manifest.site, dt.datetime.fromisoformat(manifest.created))


# ---- off-site copy (site.backups.s3_url = s3://bucket/prefix) --------------------------------

def _split(url: str) -> tuple[str, str]:
    u = urlparse(url)
    if u.scheme != "s3" or not u.netloc:
        raise BackupError(f"backups.s3_url {url!r}: write it as s3://BUCKET/PREFIX")
    return u.netloc, u.path.strip("/")


def _client():
    import boto3

    # Credentials and endpoint from the usual AWS variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL ...).
    return boto3.client("s3")


def upload(repo: Repo, backup_id: str, url: str, client=None) -> int:
    """Copy a finished backup; its manifest goes last, so a partial upload never looks complete."""
    bucket, prefix = _split(url)
    s3 = client or _client()
    _, root = repo.get(backup_id)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    for p in [*files, root / MANIFEST]:
        key = "/".join(x for x in (prefix, backup_id, p.relative_to(root).as_posix()) if x)
        s3.upload_file(str(p), bucket, key)
    return len(files) + 1


def fetch(repo: Repo, backup_id: str, url: str, client=None) -> Path:
    """Bring an off-site backup into the local repository (atomically, like a new backup)."""
    bucket, prefix = _split(url)
    s3 = client or _client()
    base = "/".join(x for x in (prefix, backup_id) if x) + "/"
    tmp = repo.begin(backup_id)
    try:
        found = False
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(base):]
                if not rel or ".." in rel.split("/"):
                    continue
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                s3.download_file(bucket, obj["Key"], str(dest))
                dest.chmod(0o600)
                found = found or rel == MANIFEST
        if not found:
            raise BackupError(f"no complete backup {backup_id} under {url}")
        manifest = Manifest.from_json((tmp / MANIFEST).read_text())
        return repo.commit(tmp, manifest)
    except BaseException:
        repo.abort(tmp)
        raise
