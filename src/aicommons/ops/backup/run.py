"""`backup run | verify | restore`: what a site backup holds and how it comes back.

The whole site: every PostgreSQL database + globals, the Redis RDB + ACL users + key dumps
grouped by tenant, Qdrant snapshots, object-store buckets; Gitea is a recipe (it runs inside its
container). `--user`: only that user's databases, keys, collections and buckets, so a one-user
restore never touches anyone else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aicommons.ops.backup import objects
from aicommons.ops.backup import postgres as pgb
from aicommons.ops.backup import redis_keys as rk
from aicommons.ops.backup.postgres import Server
from aicommons.ops.backup.repo import BackupError, Item, Manifest, Repo, file_item, new_id, sha256_file, write_private
from aicommons.plan.model import ResolvedSite, Tenant

Step = Callable[[str], None]
GITEA_RECIPE = ("pct exec {ctid} -- docker exec -u git shared-gitea gitea dump -c /data/gitea/conf/app.ini "
                "--file /data/gitea-dump.zip  # then copy /data/gitea-dump.zip off the container")


@dataclass
class Sources:
    """Where each back end is reached from the control host, with admin credentials."""

    postgres: Server | None = None
    redis: Server | None = None
    qdrant: objects.Qdrant | None = None
    s3: objects.S3 | None = None
    gitea_ctid: int | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # back end -> why it is not covered


@contextmanager
def _reaching(what: str, address: str):
    """A back end that does not answer is a clear error naming it, never an internal error."""
    import httpx
    import psycopg
    import redis

    try:
        yield
    except (OSError, httpx.TransportError, psycopg.OperationalError, redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError) as exc:
        raise BackupError(f"{what} at {address} cannot be reached ({str(exc).strip() or type(exc).__name__}); "
                          "is it running? `aicommons status` shows what answers") from None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("aicommons")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def tools() -> dict[str, str]:
    return {"aicommons": _version(), "python": platform.python_version(),
            "pg_dump": pgb.tool_version("pg_dump"), "redis-cli": rk.tool_version()}


def _route(tenants: list[Tenant]) -> Callable[[bytes], str | None]:
    prefixes = [(t.redis_prefix.encode(), t.user) for t in tenants]

    def route(key: bytes) -> str | None:
        for p, user in prefixes:
            if key.startswith(p):
                return user
        return rk.SITE_GROUP

    return route


def run_backup(resolved: ResolvedSite, src: Sources, repo: Repo, *, user: str | None = None,
               now: dt.datetime | None = None, step: Step | None = None) -> Manifest:
    """Write one complete backup or none: on any failure the partial directory is removed."""
    now = now or dt.datetime.now(dt.UTC)
    tenants = [resolved.tenant(user)] if user else list(resolved.tenants)
    manifest = Manifest(id=new_id(now, user), site=resolved.site.name, created=now.isoformat(), user=user,
                        tools=tools(), items=[])
    tmp = repo.begin(manifest.id)
    items = manifest.items
    say = step or (lambda _m: None)
    try:
        for name, why in sorted(src.skipped.items()):
            say(f"{name}: {why}; skipped")
            items.append(Item(kind="skipped", name=name, detail={"reason": why}))
        if src.postgres is not None:
            with _reaching("PostgreSQL", f"{src.postgres.host}:{src.postgres.port}"):
                (tmp / "postgres").mkdir(mode=0o700)
                owner = {db: t.user for t in resolved.tenants for db in t.databases}
                dbs = [db for t in tenants for db in t.databases] if user else pgb.list_databases(src.postgres)
                for db in pgb.reopen_closed(src.postgres, dbs, set(owner)):
                    say(f"postgres {db}: its owner had closed it to connections; reopened")
                if user is None:
                    pgb.dump_globals(src.postgres, tmp / "postgres/globals.sql")
                    items.append(file_item(tmp, "postgres/globals.sql", "postgres_globals", "globals"))
                for db in dbs:
                    say(f"postgres {db}")
                    rel = f"postgres/{db}.dump"
                    rows = pgb.dump_database(src.postgres, db, tmp / rel)
                    items.append(file_item(tmp, rel, "postgres_db", db, owner.get(db), rows=rows))
        if src.redis is not None:
            with _reaching("Redis", f"{src.redis.host}:{src.redis.port}"):
                say("redis")
                r = rk.client(src.redis)
                try:
                    acl = rk.acl_lines(r)
                    mine = {t.redis_user for t in tenants}
                    match = rk.glob_escape(tenants[0].redis_prefix) + "*" if user else "*"
                    counts = rk.dump_keys(r, match, _route(tenants), tmp / "redis/keys")
                finally:
                    r.close()
                for t in tenants:  # a user's own server (redis.isolation=instance) holds its keys and login
                    if t.redis_port:
                        say(f"redis {t.user} (port {t.redis_port})")
                        o = rk.client(dataclasses.replace(src.redis, port=t.redis_port))
                        try:
                            acl += [ln for ln in rk.acl_lines(o) if (ln.split(" ") + [""])[1] == t.redis_user]
                            counts.update(rk.dump_keys(o, rk.glob_escape(t.redis_prefix) + "*",
                                                       _route([t]), tmp / "redis/keys"))
                        finally:
                            o.close()
                if user:
                    acl = [ln for ln in acl if (ln.split(" ") + [""])[1] in mine]
                write_private(tmp / "redis/acl.txt", "\n".join(acl) + "\n")
                items.append(file_item(tmp, "redis/acl.txt", "redis_acl", "acl", user, users=len(acl)))
                for group in [t.user for t in tenants] + ([] if user else [rk.SITE_GROUP]):
                    rel = f"redis/keys/{group}.jsonl"
                    if not (tmp / rel).exists():
                        write_private(tmp / rel, "")
                    items.append(file_item(tmp, rel, "redis_keys", group, None if group == rk.SITE_GROUP else group,
                                           keys=counts.get(group, 0)))
                if user is None:
                    rk.dump_rdb(src.redis, tmp / "redis/dump.rdb")
                    items.append(file_item(tmp, "redis/dump.rdb", "redis_rdb", "dump.rdb"))
        if src.qdrant is not None:
            with _reaching("Qdrant", src.qdrant.url):
                for t in tenants:
                    for coll in t.qdrant_collections:
                        say(f"qdrant {coll}")
                        items.append(src.qdrant.snapshot(coll, tmp, t.user))
        if src.s3 is not None:
            with _reaching("the object store", src.s3.endpoint):
                for t in tenants:
                    for bucket in t.buckets:
                        say(f"s3 {bucket}")
                        items.append(src.s3.mirror(bucket, tmp, t.user))
        if user is None and "gitea" in resolved.endpoints and "gitea" not in src.skipped:
            items.append(Item(kind="skipped", name="gitea", detail={
                "reason": "Gitea's dump runs inside its container; run the recipe on the node",
                "recipe": GITEA_RECIPE.format(ctid=src.gitea_ctid or 120)}))
        say("commit")
        repo.commit(tmp, manifest)
    except BaseException:
        repo.abort(tmp)
        raise
    return manifest


# ---- verify --------------------------------------------------------------------------------

def verify_backup(repo: Repo, backup_id: str, src: Sources) -> list[str]:
    """Problems found (empty = good): checksums, then real restores into scratch places."""
    manifest, root = repo.get(backup_id)
    problems: list[str] = []
    for it in manifest.items:
        if not it.path or it.kind == "s3_bucket":
            continue
        path = root / it.path
        if not path.is_file():
            problems.append(f"{it.path}: missing")
        elif it.sha256 and sha256_file(path) != it.sha256:
            problems.append(f"{it.path}: sha256 differs from the manifest (the file is damaged)")
    for it in manifest.items:
        p = root / it.path if it.path else None
        try:
            if it.kind == "postgres_db" and src.postgres is not None and p and p.is_file():
                problems += pgb.verify_dump(src.postgres, p, it.detail.get("rows", {}))
            elif it.kind == "redis_rdb" and p and p.is_file():
                problems += rk.check_rdb(p)
            elif it.kind == "redis_keys" and p and p.is_file():
                n = len(rk.read_keys(p))
                if n != it.detail.get("keys"):
                    problems.append(f"{it.path}: {n} keys, the manifest says {it.detail.get('keys')}")
            elif it.kind == "s3_bucket":
                problems += objects.verify_bucket(root, it)
            elif it.kind == "qdrant_snapshot" and p and p.is_file():
                problems += objects.verify_snapshot(p)
        except BackupError as exc:
            problems.append(str(exc))
    return problems


# ---- restore -------------------------------------------------------------------------------

def restore_backup(resolved: ResolvedSite, repo: Repo, backup_id: str, src: Sources, *,
                   user: str | None = None, step: Step | None = None) -> list[str]:
    """Restore the whole backup, or one user's slice of it. Returns what was restored."""
    manifest, root = repo.get(backup_id)
    if manifest.user and user and manifest.user != user:
        raise BackupError(f"backup {backup_id} holds only user {manifest.user}, not {user}")
    if user:
        resolved.tenant(user)  # KeyError -> reported by the CLI as an unknown user
    scope = user or manifest.user
    say = step or (lambda _m: None)
    done: list[str] = []
    bad = [p for p in verify_checksums(root, manifest) if scope is None or p[1] in (scope, None)]
    if bad:
        raise BackupError(f"backup {backup_id} is damaged, nothing was restored: " + "; ".join(p[0] for p in bad))
    wanted = [it for it in manifest.items if scope is None or it.user == scope]
    for name, why in sorted(src.skipped.items()):
        say(f"{name}: {why}; skipped")
    if src.postgres is not None:
        with _reaching("PostgreSQL", f"{src.postgres.host}:{src.postgres.port}"):
            glob = root / "postgres/globals.sql"
            if glob.exists():
                only = {resolved.tenant(scope).postgres_role} if scope else None
                done += [f"role {r}" for r in pgb.restore_roles(src.postgres, glob, only)]
            for it in wanted:
                if it.kind == "postgres_db":
                    say(f"postgres {it.name}")
                    pgb.restore_database(src.postgres, it.name, root / it.path)
                    done.append(f"database {it.name}")
    if src.redis is not None:
        with _reaching("Redis", f"{src.redis.host}:{src.redis.port}"):
            r = rk.client(src.redis)
            try:
                acl_file = root / "redis/acl.txt"
                acl = acl_file.read_text().splitlines() if acl_file.exists() else []
                for it in wanted if scope else manifest.items:
                    if it.kind != "redis_keys":
                        continue
                    say(f"redis {it.name}")
                    if it.name == rk.SITE_GROUP:
                        done.append(f"redis {rk.restore_site_keys(r, root / it.path)} shared-service keys")
                        continue
                    t = resolved.tenant(it.name)
                    o = rk.client(dataclasses.replace(src.redis, port=t.redis_port)) if t.redis_port else r
                    try:
                        n = rk.restore_keys(o, rk.glob_escape(t.redis_prefix) + "*", root / it.path)
                        if rk.restore_acl_user(o, acl, t.redis_user):
                            done.append(f"redis user {t.redis_user}")
                    finally:
                        if o is not r:
                            o.close()
                    done.append(f"redis {n} keys of {it.name}")
            finally:
                r.close()
    for it in wanted:
        if it.kind in ("qdrant_snapshot", "s3_bucket") and (src.qdrant if it.kind == "qdrant_snapshot" else src.s3) is None:
            what = "qdrant" if it.kind == "qdrant_snapshot" else "object storage"
            done.append(f"skipped {it.name}: no {what} to restore into here")
        elif it.kind == "qdrant_snapshot" and src.qdrant is not None:
            say(f"qdrant {it.name}")
            src.qdrant.recover(it.name, root / it.path)
            done.append(f"collection {it.name}")
        elif it.kind == "s3_bucket" and src.s3 is not None:
            say(f"s3 {it.name}")
            src.s3.restore(it.name, root, it)
            done.append(f"bucket {it.name}")
    return done


def verify_checksums(root: Path, manifest: Manifest) -> list[tuple[str, str | None]]:
    out = []
    for it in manifest.items:
        if it.path and it.kind != "s3_bucket":
            p = root / it.path
            if not p.is_file() or sha256_file(p) != it.sha256:
                out.append((f"{it.path} is missing or damaged", it.user))
        elif it.kind == "s3_bucket":
            out += [(msg, it.user) for msg in objects.verify_bucket(root, it)]
    return out
