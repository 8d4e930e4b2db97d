"""Qdrant snapshots (REST API) and object-store bucket mirrors (boto3, S3 API)."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

from aicommons.ops.backup.repo import BackupError, Item, file_item, sha256_file


@dataclass
class Qdrant:
    url: str  # http://host:6333
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 600.0

    def _client(self) -> httpx.Client:
        headers = {"api-key": self.api_key} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout, trust_env=False)

    def snapshot(self, collection: str, root: Path, user: str | None) -> Item:
        c = quote(collection, safe="")
        with self._client() as http:
            r = http.post(f"/collections/{c}/snapshots", params={"wait": "true"})
            if r.status_code == 404:
                return Item(kind="skipped", name=collection, user=user,
                            detail={"reason": "collection does not exist yet"})
            if r.status_code != 200:
                raise BackupError(f"Qdrant snapshot of {collection}: HTTP {r.status_code} {r.text[:200]}")
            name = r.json()["result"]["name"]
            rel = f"qdrant/{collection}.snapshot"
            (root / "qdrant").mkdir(exist_ok=True, mode=0o700)
            fd = os.open(root / rel, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f, http.stream("GET", f"/collections/{c}/snapshots/{quote(name, safe='')}") as s:
                if s.status_code != 200:
                    raise BackupError(f"Qdrant snapshot download {collection}/{name}: HTTP {s.status_code}")
                for chunk in s.iter_bytes():
                    f.write(chunk)
            http.delete(f"/collections/{c}/snapshots/{quote(name, safe='')}")  # server-side copy not kept
        return file_item(root, rel, "qdrant_snapshot", collection, user, snapshot=name)

    def recover(self, collection: str, path: Path) -> None:
        c = quote(collection, safe="")
        with self._client() as http, path.open("rb") as f:
            r = http.post(f"/collections/{c}/snapshots/upload", params={"priority": "snapshot", "wait": "true"},
                          files={"snapshot": (path.name, f, "application/octet-stream")})
        if r.status_code != 200:
            raise BackupError(f"Qdrant recover of {collection}: HTTP {r.status_code} {r.text[:200]}")


def verify_snapshot(path: Path) -> list[str]:
    """A Qdrant snapshot is a tar archive: every member must read back."""
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                if m.isfile():
                    f = tar.extractfile(m)
                    while f and f.read(1 << 20):
                        pass
    except (tarfile.TarError, OSError, EOFError) as exc:
        return [f"{path.name}: not a readable snapshot archive ({exc})"]
    return []


@dataclass
class S3:
    endpoint: str
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    region: str = "garage"
    credentials_for: Callable[[str], tuple[str, str]] | None = field(default=None, repr=False)  # user -> (access, secret)

    def client(self, user: str | None):
        import boto3
        from botocore.config import Config

        key, secret = self.access_key, self.secret_key
        if self.credentials_for is not None and user is not None:
            key, secret = self.credentials_for(user)
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name=self.region, config=Config(s3={"addressing_style": "path"},
                                                                   retries={"max_attempts": 3}))

    def mirror(self, bucket: str, root: Path, user: str | None) -> Item:
        """Copy every object to s3/<bucket>/<quoted key>; the item lists each key's sha256."""
        s3 = self.client(user)
        base = root / "s3" / bucket
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        objects: dict[str, str] = {}
        size = 0
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    dest = base / quote(obj["Key"], safe="")
                    s3.download_file(bucket, obj["Key"], str(dest))
                    os.chmod(dest, 0o600)
                    objects[obj["Key"]] = sha256_file(dest)
                    size += dest.stat().st_size
        except s3.exceptions.NoSuchBucket:
            return Item(kind="skipped", name=bucket, user=user, detail={"reason": "bucket does not exist yet"})
        return Item(kind="s3_bucket", name=bucket, path=f"s3/{bucket}", user=user, size=size,
                    sha256=_bucket_digest(objects), detail={"objects": objects})

    def restore(self, bucket: str, root: Path, item: Item) -> None:
        """Make the bucket hold exactly the backed-up objects."""
        s3 = self.client(item.user)
        objects: dict[str, str] = item.detail.get("objects", {})
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            extra = [{"Key": o["Key"]} for o in page.get("Contents", []) if o["Key"] not in objects]
            if extra:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": extra})
        for key in objects:
            s3.upload_file(str(root / item.path / quote(key, safe="")), bucket, key)


def _bucket_digest(objects: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(objects.items())).encode()).hexdigest()


def verify_bucket(root: Path, item: Item) -> list[str]:
    objects: dict[str, str] = item.detail.get("objects", {})
    problems = []
    if _bucket_digest(objects) != item.sha256:
        problems.append(f"{item.path}: the object list differs from the manifest")
    for key, digest in objects.items():
        p = root / item.path / quote(key, safe="")
        if not p.is_file() or sha256_file(p) != digest:
            problems.append(f"{item.path}: object {key!r} is missing or damaged")
    return problems
