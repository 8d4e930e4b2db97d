"""A stand-in for Garage's admin API v2, following its documented wire format.

Endpoints (all under /v2/, `Authorization: Bearer <admin token>`, JSON bodies as documented for
Garage v2): ImportKey, CreateKey, GetKeyInfo?id=, DeleteKey?id=, CreateBucket {globalAlias},
GetBucketInfo?globalAlias=|id=, ListBuckets, DeleteBucket?id= (refused unless empty),
AllowBucketKey / DenyBucketKey {bucketId, accessKeyId, permissions{read,write,owner}},
UpdateBucket?id= {quotas{maxSize,maxObjects}}. Errors are JSON {code, message} with 400/404/409.

SIMULATED: the admin API. Bucket DATA lives in a REAL moto S3 server: CreateBucket/DeleteBucket
create and delete the bucket there too, so S3 clients see the same buckets.
"""

from __future__ import annotations

import json
import secrets
import threading
from urllib.parse import parse_qs, urlparse

from tests.standins.http import Server, _Base


class GarageState:
    def __init__(self, token: str, s3=None):
        self.token = token
        self.s3 = s3  # a boto3 client for the moto server, or None
        self.keys: dict[str, dict] = {}
        self.buckets: dict[str, dict] = {}
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def by_alias(self, alias):
        return next((b for b in self.buckets.values() if alias in b["globalAliases"]), None)

    def info(self, b):
        return {"id": b["id"], "globalAliases": b["globalAliases"], "quotas": b["quotas"],
                "keys": [{"accessKeyId": k, "name": self.keys.get(k, {}).get("name", ""), "permissions": p}
                         for k, p in b["keys"].items()]}


def _handler(state: GarageState):
    class H(_Base):
        def _send(self, code, obj=None):
            self.send_json(code, obj)

        def _err(self, code, what, msg):
            self._send(code, {"code": what, "message": msg})

        def _route(self, method):
            u = urlparse(self.path)
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                return self._err(403, "Forbidden", "invalid admin token")
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}") if n else {}
            op = u.path.removeprefix("/v2/")
            with state.lock:
                state.calls.append(op)
                return getattr(self, f"op_{op}", self.op_unknown)(method, q, body)

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def op_unknown(self, m, q, body):
            self._err(404, "NotFound", "no such endpoint")

        def op_ImportKey(self, m, q, b):
            kid, sec = b.get("accessKeyId", ""), b.get("secretAccessKey", "")
            if not (kid.startswith("GK") and len(kid) == 26 and len(sec) == 64):
                return self._err(400, "InvalidRequest", "invalid key id or secret format")
            if kid in state.keys:
                return self._err(409, "KeyAlreadyExists", "key already exists")
            state.keys[kid] = {"name": b.get("name", ""), "secret": sec}
            self._send(200, {"accessKeyId": kid, "name": b.get("name", ""), "buckets": []})

        def op_CreateKey(self, m, q, b):
            kid = "GK" + secrets.token_hex(12)
            state.keys[kid] = {"name": b.get("name", ""), "secret": secrets.token_hex(32)}
            self._send(200, {"accessKeyId": kid, "secretAccessKey": state.keys[kid]["secret"], "name": b.get("name")})

        def op_GetKeyInfo(self, m, q, b):
            k = state.keys.get(q.get("id", ""))
            if k is None:
                return self._err(404, "NoSuchAccessKey", "no such key")
            self._send(200, {"accessKeyId": q["id"], "name": k["name"]})

        def op_DeleteKey(self, m, q, b):
            if state.keys.pop(q.get("id", ""), None) is None:
                return self._err(404, "NoSuchAccessKey", "no such key")
            for bk in state.buckets.values():
                bk["keys"].pop(q["id"], None)
            self._send(200)

        def op_CreateBucket(self, m, q, b):
            alias = b.get("globalAlias")
            if state.by_alias(alias):
                return self._err(409, "BucketAlreadyExists", "alias taken")
            bid = secrets.token_hex(32)
            state.buckets[bid] = {"id": bid, "globalAliases": [alias], "keys": {},
                                  "quotas": {"maxSize": None, "maxObjects": None}}
            if state.s3:
                state.s3.create_bucket(Bucket=alias)
            self._send(200, state.info(state.buckets[bid]))

        def op_GetBucketInfo(self, m, q, b):
            bk = state.buckets.get(q["id"]) if "id" in q else state.by_alias(q.get("globalAlias"))
            if bk is None:
                return self._err(404, "NoSuchBucket", "no such bucket")
            self._send(200, state.info(bk))

        def op_ListBuckets(self, m, q, b):
            self._send(200, [{"id": x["id"], "globalAliases": x["globalAliases"]} for x in state.buckets.values()])

        def op_DeleteBucket(self, m, q, b):
            bk = state.buckets.get(q.get("id", ""))
            if bk is None:
                return self._err(404, "NoSuchBucket", "no such bucket")
            if state.s3:
                alias = bk["globalAliases"][0]
                if state.s3.list_objects_v2(Bucket=alias).get("KeyCount"):
                    return self._err(409, "BucketNotEmpty", "bucket is not empty")
                state.s3.delete_bucket(Bucket=alias)
            del state.buckets[bk["id"]]
            self._send(200)

        def _perm(self, b, allow):
            bk = state.buckets.get(b.get("bucketId", ""))
            if bk is None or b.get("accessKeyId") not in state.keys:
                return self._err(404, "NoSuchBucket", "no such bucket or key")
            cur = bk["keys"].setdefault(b["accessKeyId"], {"read": False, "write": False, "owner": False})
            for k, v in (b.get("permissions") or {}).items():
                if v:
                    cur[k] = allow
            if not any(cur.values()):
                bk["keys"].pop(b["accessKeyId"])
            self._send(200, state.info(bk))

        def op_AllowBucketKey(self, m, q, b):
            self._perm(b, True)

        def op_DenyBucketKey(self, m, q, b):
            self._perm(b, False)

        def op_UpdateBucket(self, m, q, b):
            bk = state.buckets.get(q.get("id", ""))
            if bk is None:
                return self._err(404, "NoSuchBucket", "no such bucket")
            if "quotas" in b:
                bk["quotas"] = {"maxSize": b["quotas"].get("maxSize"), "maxObjects": b["quotas"].get("maxObjects")}
            self._send(200, state.info(bk))

    return H


class GarageStandin(Server):
    def __init__(self, token: str, s3=None):
        self.state = GarageState(token, s3)
        super().__init__(_handler(self.state))
