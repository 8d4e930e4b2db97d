"""Object storage tenancy: per-user buckets, one key that may use only those, and a quota.

One interface, two admin APIs: Garage's admin API v2 (the default; `Authorization: Bearer`,
POST /v2/ImportKey, CreateBucket, AllowBucketKey, DenyBucketKey, UpdateBucket for quotas) and
MinIO's admin API through `minio.MinioAdmin` (existing sites; tenancy/minio.py). Bucket data (archive before
delete) goes through plain S3 with the site's own admin key, which is granted access only for
the moment of archiving.

Keys are IMPORTED with values derived from the user's stored secrets (`s3_credentials`), so the
state stays the single source of every credential and a re-run never makes a second key.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan.model import Tenant
from aicommons.plan.policy import SERVICE_BUCKETS, s3_credentials, tenant_credentials
from aicommons.tenancy.base import AuditCheck, Expected, Observed, Secrets

QUOTA_BYTES = 50 * 1024**3
ADMIN_KEY_NAME = "aicommons-admin"


class StoreAdmin(Protocol):
    def import_key(self, key_id: str, secret: str, name: str) -> None: ...
    def delete_key(self, key_id: str) -> None: ...
    def bucket(self, alias: str) -> dict | None: ...  # {"id", "keys": {key_id: {"read","write","owner"}}, "quota"}
    def create_bucket(self, alias: str) -> str: ...
    def delete_bucket(self, bucket_id: str) -> None: ...
    def set_access(self, bucket_id: str, key_id: str, read: bool, write: bool) -> None: ...
    def set_quota(self, bucket_id: str, max_bytes: int | None) -> None: ...
    def buckets(self) -> list[str]: ...
    def ensure_admin_key(self, key_id: str, secret: str) -> None: ...  # the key archiving uses


class GarageAdmin:
    """Garage admin API v2 over HTTP (port 3903)."""

    def __init__(self, url: str, token: str, transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=10,
                                 transport=transport)

    def _req(self, method: str, path: str, *, params=None, body=None, ok404: bool = False):
        try:
            r = self.http.request(method, f"/v2/{path}", params=params, json=body)
        except httpx.TransportError as exc:
            raise TemporaryError(f"Garage admin API at {self.url} is not reachable: {exc}", delay=2.0) from None
        if ok404 and r.status_code in (400, 404):
            return None
        if r.status_code == 401 or r.status_code == 403:
            raise PermanentError(f"Garage admin API refused the admin token ({r.status_code}); check s3_admin_token")
        if r.status_code >= 500:
            raise TemporaryError(f"Garage {path} failed: {r.status_code} {r.text[:200]}", delay=2.0)
        if r.status_code >= 400:
            raise PermanentError(f"Garage {path} failed: {r.status_code} {r.text[:200]}")
        return r.json() if r.content else None

    def import_key(self, key_id: str, secret: str, name: str) -> None:
        if self._req("GET", "GetKeyInfo", params={"id": key_id}, ok404=True) is None:
            self._req("POST", "ImportKey", body={"accessKeyId": key_id, "secretAccessKey": secret, "name": name})

    def delete_key(self, key_id: str) -> None:
        if self._req("GET", "GetKeyInfo", params={"id": key_id}, ok404=True) is not None:
            self._req("POST", "DeleteKey", params={"id": key_id})

    def bucket(self, alias: str) -> dict | None:
        info = self._req("GET", "GetBucketInfo", params={"globalAlias": alias}, ok404=True)
        if info is None:
            return None
        keys = {k["accessKeyId"]: k.get("permissions", {}) for k in info.get("keys", [])}
        return {"id": info["id"], "keys": keys, "quota": (info.get("quotas") or {}).get("maxSize")}

    def create_bucket(self, alias: str) -> str:
        return self._req("POST", "CreateBucket", body={"globalAlias": alias})["id"]

    def delete_bucket(self, bucket_id: str) -> None:
        self._req("POST", "DeleteBucket", params={"id": bucket_id})

    def set_access(self, bucket_id: str, key_id: str, read: bool, write: bool) -> None:
        allow = {"read": read, "write": write, "owner": False}
        if read or write:
            self._req("POST", "AllowBucketKey", body={"bucketId": bucket_id, "accessKeyId": key_id,
                                                      "permissions": dict(allow)})
        deny = {"read": not read, "write": not write, "owner": True}
        self._req("POST", "DenyBucketKey", body={"bucketId": bucket_id, "accessKeyId": key_id, "permissions": deny})

    def set_quota(self, bucket_id: str, max_bytes: int | None) -> None:
        self._req("POST", "UpdateBucket", params={"id": bucket_id},
                  body={"quotas": {"maxSize": max_bytes, "maxObjects": None}})

    def buckets(self) -> list[str]:
        return [a for b in self._req("GET", "ListBuckets") or [] for a in b.get("globalAliases", [])]

    def ensure_admin_key(self, key_id: str, secret: str) -> None:
        self.import_key(key_id, secret, ADMIN_KEY_NAME)


@dataclass
class ObjectStoreBackend:
    admin: StoreAdmin
    s3_endpoint: str
    admin_key: tuple[str, str]  # the site's own S3 key, granted only while archiving
    archive_dir: Path
    quota_bytes: int | None = QUOTA_BYTES
    name: str = "s3"

    @classmethod
    def for_site(cls, resolved, store: str, secrets, base_dir, archive: Path) -> ObjectStoreBackend:
        from aicommons.plan.secrets import SITE_SCOPE
        from aicommons.tenancy.registry import admin_credentials

        admin_key = s3_credentials(secrets(SITE_SCOPE, "s3_admin_access_key"), secrets(SITE_SCOPE, "s3_admin_token"))
        ep = resolved.endpoints[store]
        admin: StoreAdmin
        if store == "garage":
            host, _port, _u, token = admin_credentials(resolved, store, secrets, base_dir, "s3_admin_token")
            admin = GarageAdmin(f"http://{host}:{ep.ports.get('admin', 3903)}", token)
            s3 = f"http://{host}:{ep.ports.get('s3', 3900)}"
        else:
            from aicommons.tenancy.minio import MinioAdminAdapter

            host, port, user, pw = admin_credentials(resolved, store, secrets, base_dir, "s3_admin_token")
            admin = MinioAdminAdapter(f"{host}:{port}", f"{host}:{port}", user, pw)
            s3 = f"http://{host}:{port}"
            admin_key = (user, pw)
        return cls(admin, s3, admin_key, archive)

    def _s3(self, key: tuple[str, str]):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.s3_endpoint, aws_access_key_id=key[0],
                            aws_secret_access_key=key[1], region_name="garage",
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def observe(self) -> dict[str, set[str]]:
        """Buckets named <user>-<purpose> for a purpose some app declares; others are not tenants'."""
        from aicommons.catalog import load_catalog

        purposes = {p for app in load_catalog().apps.values() for p in app.buckets}
        out: dict[str, set[str]] = {}
        for b in self.admin.buckets():
            user, _, purpose = b.rpartition("-")
            if user and purpose in purposes:
                out.setdefault(user, set()).add(f"s3.bucket.{b}")
        return out

    def ensure(self, t: Tenant, secrets: Secrets) -> None:
        if not t.buckets:
            return
        kid, sec = tenant_credentials(secrets)
        self.admin.import_key(kid, sec, t.s3_key_name)
        for alias in t.buckets:
            info = self.admin.bucket(alias)
            bid = info["id"] if info else self.admin.create_bucket(alias)
            keys = info["keys"] if info else {}
            want = {"read": True, "write": True, "owner": False}
            if {k: bool(keys.get(kid, {}).get(k)) for k in want} != want:
                self.admin.set_access(bid, kid, True, True)
            for other in set(keys) - {kid}:  # nobody else's key belongs on a user's bucket
                self.admin.set_access(bid, other, False, False)
            if self.quota_bytes and (not info or info.get("quota") != self.quota_bytes):
                self.admin.set_quota(bid, self.quota_bytes)

    def ensure_service(self, service: str, kid: str, sec: str) -> None:
        """A shared service's key, and its bucket readable and writable by that key only (no quota:
        the service's own retention settings bound it)."""
        alias = SERVICE_BUCKETS[service][0]
        self.admin.import_key(kid, sec, f"aicommons-{service}")
        info = self.admin.bucket(alias)
        bid = info["id"] if info else self.admin.create_bucket(alias)
        keys = info["keys"] if info else {}
        if not (keys.get(kid, {}).get("read") and keys.get(kid, {}).get("write")):
            self.admin.set_access(bid, kid, True, True)
        for other in set(keys) - {kid}:
            self.admin.set_access(bid, other, False, False)

    def verify(self, t: Tenant, secrets: Secrets) -> list[str]:
        kid, _ = tenant_credentials(secrets) if t.buckets else ("", "")
        problems = []
        for alias in t.buckets:
            info = self.admin.bucket(alias)
            if info is None:
                problems.append(f"bucket {alias} is missing")
                continue
            if not (info["keys"].get(kid, {}).get("read") and info["keys"].get(kid, {}).get("write")):
                problems.append(f"bucket {alias}: the user's key lacks read/write")
            others = [k for k, p in info["keys"].items() if k != kid and (p.get("read") or p.get("write"))]
            if others:
                problems.append(f"bucket {alias} is open to other keys: {', '.join(sorted(others))}")
            if self.quota_bytes and info.get("quota") != self.quota_bytes:
                problems.append(f"bucket {alias} quota is {info.get('quota')}, not {self.quota_bytes}")
        return problems

    def remove(self, t: Tenant, *, purge: bool = False) -> None:
        user_keys: set[str] = set()
        for alias in t.buckets:
            info = self.admin.bucket(alias)
            if info is None:
                continue
            user_keys |= set(info["keys"]) - {self.admin_key[0]}
            self.admin.ensure_admin_key(*self.admin_key)
            self.admin.set_access(info["id"], self.admin_key[0], True, True)
            s3 = self._s3(self.admin_key)
            keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=alias)
                    for o in page.get("Contents", [])]
            if keys and not purge:
                self._archive(s3, t, alias, keys)
            for i in range(0, len(keys), 1000):
                s3.delete_objects(Bucket=alias, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
            self.admin.delete_bucket(info["id"])
        for kid in user_keys:
            self.admin.delete_key(kid)

    def _archive(self, s3, t: Tenant, alias: str, keys: list[str]) -> Path:
        out = Path(self.archive_dir) / t.user / f"s3-{alias}-{time.strftime('%Y%m%dT%H%M%S')}"
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        for k in keys:
            dest = (out / k).resolve()
            if out.resolve() not in dest.parents:  # object keys are user data: no path escapes
                dest = out / hashlib.sha256(k.encode()).hexdigest()
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(alias, k, str(dest))
            os.chmod(dest, 0o600)
        fd = os.open(out / ".keys.json", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(keys, f)
        return out

    def suspend(self, t: Tenant) -> None:
        for alias in t.buckets:
            info = self.admin.bucket(alias)
            if info is None:
                continue
            for kid in info.get("keys", {}):
                self.admin.set_access(info["id"], kid, False, False)

    def resume(self, t: Tenant, secrets: Secrets) -> None:
        self.ensure(t, secrets)

    def audit(self, tenants: list[Tenant], secrets: Mapping[str, Secrets]) -> list[AuditCheck]:
        """The store's own permission table: each user's key on every bucket of the site."""
        out = []
        tables = {a: (self.admin.bucket(a) or {"keys": {}})["keys"] for t in tenants for a in t.buckets}
        for actor in tenants:
            if not actor.buckets:
                continue
            kid, sec = tenant_credentials(secrets[actor.user])
            for target in tenants:
                for alias in target.buckets:
                    p = tables[alias].get(kid, {})
                    observed: Observed = "allow" if (p.get("read") or p.get("write") or p.get("owner")) else "deny"
                    expected: Expected = "allow" if target.user == actor.user else "deny"
                    out.append(AuditCheck(self.name, actor.user, target.user, f"bucket {alias}", expected, observed))
            out.append(self._own_data(actor, kid, sec))
        return out

    def _own_data(self, actor: Tenant, kid: str, sec: str) -> AuditCheck:
        """With the user's own key: write and read back an object in its first bucket."""
        alias = actor.buckets[0]
        try:
            s3 = self._s3((kid, sec))
            s3.put_object(Bucket=alias, Key=".aicommons-audit", Body=b"ok")
            ok = s3.get_object(Bucket=alias, Key=".aicommons-audit")["Body"].read() == b"ok"
            s3.delete_object(Bucket=alias, Key=".aicommons-audit")
            return AuditCheck(self.name, actor.user, actor.user, f"objects in {alias}", "allow",
                              "allow" if ok else "error")
        except Exception as exc:  # noqa: BLE001 - any S3 failure is an audit finding, not a crash
            return AuditCheck(self.name, actor.user, actor.user, f"objects in {alias}", "allow", "error",
                              str(exc)[:120])
