"""Backup parts beyond PostgreSQL/Redis. SIMULATED: S3 is moto's server on 127.0.0.1 (real boto3
client, real HTTP); Qdrant is a loopback stand-in of its snapshot REST endpoints (create, download,
delete, upload) serving a real tar archive. REAL: retention rules, systemd-analyze on the rendered
timer/service, node exporter textfile format checked with promtool."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import shutil
import subprocess
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from aicommons.ops.backup import site as bsite
from aicommons.ops.backup.objects import S3, Qdrant, verify_snapshot
from aicommons.ops.backup.repo import Item, Manifest, Repo, to_prune, write_metric
from aicommons.ops.backup.run import Sources, restore_backup, run_backup, verify_backup
from aicommons.ops.backup.schedule import render_schedule
from aicommons.plan.resolve import resolve
from aicommons.spec.default import render_site_yaml
from aicommons.spec.load import load_text
from tests.servers import free_port

T0 = dt.datetime(2026, 11, 20, 3, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def resolved():
    site, _ = load_text(render_site_yaml(users=2, services=["ollama", "qdrant", "postgres", "redis", "garage"]))
    return resolve(site)


# ---- S3 (moto) -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_url():
    port = free_port()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    url = f"http://127.0.0.1:{port}"
    yield url
    # moto keeps buckets in process-wide memory: leave none behind for other test modules
    httpx.post(f"{url}/moto-api/reset", trust_env=False)
    srv.stop()


def _s3(url):
    return boto3.client("s3", endpoint_url=url, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1")


def test_bucket_mirror_restores_one_user_only(resolved, moto_url, tmp_path):
    s3 = _s3(moto_url)
    objs = {}
    for t in resolved.tenants:
        for b in t.buckets:
            s3.create_bucket(Bucket=b)
            for key in ("a.txt", "dir/b.bin", "../odd key"):
                body = f"{b}/{key}".encode() * 3
                s3.put_object(Bucket=b, Key=key, Body=body)
                objs[(b, key)] = body
    src = Sources(s3=S3(moto_url, "k", "s", region="us-east-1"))
    repo = Repo(tmp_path)
    m = run_backup(resolved, src, repo, now=T0)
    assert {i.name for i in m.items if i.kind == "s3_bucket"} == {b for t in resolved.tenants for b in t.buckets}
    assert verify_backup(repo, m.id, src) == []
    # both users change their buckets; only user1 is restored
    for t in resolved.tenants:
        for b in t.buckets:
            s3.put_object(Bucket=b, Key="a.txt", Body=b"changed")
            s3.put_object(Bucket=b, Key="new.txt", Body=b"new")
    restore_backup(resolved, repo, m.id, src, user="user1")
    for t in resolved.tenants:
        for b in t.buckets:
            keys = {o["Key"] for o in s3.list_objects_v2(Bucket=b).get("Contents", [])}
            a = s3.get_object(Bucket=b, Key="a.txt")["Body"].read()
            if t.user == "user1":
                assert keys == {"a.txt", "dir/b.bin", "../odd key"} and a == objs[(b, "a.txt")]
            else:
                assert "new.txt" in keys and a == b"changed"
    # a damaged object is caught by verify
    _, root = repo.get(m.id)
    victim = next((root / "s3").rglob("a.txt"))
    victim.write_bytes(b"garbage")
    assert any("'a.txt' is missing or damaged" in p for p in verify_backup(repo, m.id, src))


def test_offsite_copy_upload_and_fetch(moto_url, tmp_path):
    s3 = _s3(moto_url)
    s3.create_bucket(Bucket="offsite")
    repo = Repo(tmp_path / "a")
    tmp = repo.begin("20261120T030000Z")
    (tmp / "postgres").mkdir()
    (tmp / "postgres/x.dump").write_bytes(b"dump-bytes")
    from aicommons.ops.backup.repo import file_item

    m = Manifest(id="20261120T030000Z", site="s", created=T0.isoformat(), user=None, tools={},
                 items=[file_item(tmp, "postgres/x.dump", "postgres_db", "x")])
    repo.commit(tmp, m)
    n = bsite.upload(repo, m.id, "s3://offsite/site-a", client=s3)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="offsite")["Contents"]]
    assert n == 2 and "site-a/20261120T030000Z/manifest.json" in keys
    other = Repo(tmp_path / "b")
    bsite.fetch(other, m.id, "s3://offsite/site-a", client=s3)
    got, root = other.get(m.id)
    assert got.items[0].sha256 == m.items[0].sha256 and (root / "postgres/x.dump").read_bytes() == b"dump-bytes"
    with pytest.raises(Exception, match="no complete backup"):
        bsite.fetch(other, "20200101T000000Z", "s3://offsite/site-a", client=s3)
    assert other.list()[0].id == m.id and not list(other.root.glob(".partial-*"))


# ---- Qdrant (loopback stand-in of the snapshot API) ---------------------------------------------

def _tar(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("segments/data.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


class QdrantStandIn(BaseHTTPRequestHandler):
    collections: dict[str, bytes] = {}
    snapshots: dict[str, bytes] = {}
    recovered: dict[str, bytes] = {}

    def log_message(self, *a):  # quiet
        pass

    def _send(self, code: int, body: bytes | dict) -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        path = self.path.split("?")[0]
        if self.headers.get("api-key") != "qkey":
            return self._send(401, {"status": {"error": "unauthorized"}})
        if m := re.fullmatch(r"/collections/([^/]+)/snapshots", path):
            if m[1] not in self.collections:
                return self._send(404, {"status": {"error": "not found"}})
            name = f"{m[1]}-1.snapshot"
            self.snapshots[name] = _tar(self.collections[m[1]])
            return self._send(200, {"result": {"name": name}})
        if m := re.fullmatch(r"/collections/([^/]+)/snapshots/upload", path):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.recovered[m[1]] = body
            return self._send(200, {"result": True})
        self._send(404, {})

    def do_GET(self):  # noqa: N802
        name = self.path.rsplit("/", 1)[1]
        self._send(200, self.snapshots[name]) if name in self.snapshots else self._send(404, {})

    def do_DELETE(self):  # noqa: N802
        self.snapshots.pop(self.path.rsplit("/", 1)[1], None)
        self._send(200, {"result": True})


def test_qdrant_snapshots(resolved, tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), QdrantStandIn)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        t1 = resolved.tenant("user1")
        QdrantStandIn.collections = {c: f"vectors of {c}".encode() for c in t1.qdrant_collections}
        src = Sources(qdrant=Qdrant(f"http://127.0.0.1:{srv.server_port}", "qkey"))
        repo = Repo(tmp_path)
        m = run_backup(resolved, src, repo, now=T0)
        snaps = [i for i in m.items if i.kind == "qdrant_snapshot"]
        assert {i.name for i in snaps} == set(t1.qdrant_collections)
        skipped = [i for i in m.items if i.kind == "skipped" and i.user == "user2"]
        assert skipped and skipped[0].detail["reason"] == "collection does not exist yet"
        assert QdrantStandIn.snapshots == {}  # server-side snapshots removed after download
        assert verify_backup(repo, m.id, src) == []
        restore_backup(resolved, repo, m.id, src, user="user1")
        assert set(QdrantStandIn.recovered) == set(t1.qdrant_collections)
        assert b"vectors of user1_memories" in QdrantStandIn.recovered["user1_memories"]
        _, root = repo.get(m.id)
        (root / snaps[0].path).write_bytes(b"not a tar")
        assert verify_snapshot(root / snaps[0].path)
    finally:
        srv.shutdown()


# ---- retention, schedule, metric ------------------------------------------------------------

def _m(i: str, when: dt.datetime, user: str | None = None) -> Manifest:
    return Manifest(id=i, site="s", created=when.isoformat(), user=user, tools={}, items=[])


RETENTION = [
    # (backups as day offsets from T0 (negative = older), daily, weekly, expected kept day offsets)
    ([0, -1, -2, -3], 2, 0, [0, -1]),
    ([0, 0.5, -1], 1, 0, [0.5]),  # two on one day: the newer one is that day's
    ([0, -1, -7, -14, -21, -30], 1, 3, [0, -7, -14]),  # T0 is a Friday: one per ISO week
    ([0, -1], 0, 0, []),
]


@pytest.mark.parametrize("days,daily,weekly,kept", RETENTION)
def test_retention(days, daily, weekly, kept):
    backups = [_m(f"b{d}", T0 + dt.timedelta(days=d)) for d in days]
    pruned = to_prune(backups, daily, weekly)
    assert sorted(f"b{d}" for d in days if f"b{d}" not in pruned) == sorted(f"b{d}" for d in kept)


def test_retention_counts_each_user_separately():
    backups = [_m("site", T0), _m("u1", T0, "user1"), _m("u1-old", T0 - dt.timedelta(days=1), "user1")]
    assert to_prune(backups, 1, 0) == ["u1-old"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_schedule_units_pass_systemd_analyze(tmp_path):
    exe = shutil.which("true")
    files = render_schedule("site-a", Path("/etc/aicommons/site.yaml"), exe=exe)
    for f in files.values():
        p = tmp_path / Path(f.path).name
        p.write_text(f.content)
    units = sorted(str(p) for p in tmp_path.iterdir() if p.suffix in (".service", ".timer"))
    r = subprocess.run(["systemd-analyze", "verify", *units], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    cron = (tmp_path / "aicommons-backup-site-a").read_text().splitlines()[-1]
    assert cron.split()[:6] == ["30", "2", "*", "*", "*", "root"] and "backup run" in cron


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")
def test_backup_metric_is_valid_exposition(tmp_path):
    p = write_metric(tmp_path, "site-a", T0)
    r = subprocess.run(["promtool", "check", "metrics"], input=p.read_text(), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{T0.timestamp():.0f}" in p.read_text()


def test_item_roundtrip():
    m = _m("x", T0)
    m.items.append(Item(kind="postgres_db", name="d", path="postgres/d.dump", size=3, sha256="0" * 64,
                        detail={"rows": {"public.t": 2}}))
    assert Manifest.from_json(m.to_json()) == m
