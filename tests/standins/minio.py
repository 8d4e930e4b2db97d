"""A stand-in for MinIO's admin API v3 (`/minio/admin/v3/<command>`), following the wire format
minio-py's `MinioAdmin` speaks: SigV4-signed requests (the stand-in checks the credential's access
key, not the signature), user and attach payloads encrypted with the admin secret (decrypted here
with minio-py's own `minio.crypto`), list-users answered encrypted, policies as plain JSON.

SIMULATED: the admin API (users, canned policies, attachments, quotas). Buckets are handled by
the S3 API, which the tests point at a REAL moto server.
"""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from minio.crypto import decrypt, encrypt


class _Body:
    def __init__(self, data: bytes):
        self._b = io.BytesIO(data)

    def read(self, n=-1):
        return self._b.read(n)

    def close(self):
        pass

    def release_conn(self):
        pass


class MinioAdminStandin:
    def __init__(self, access_key: str, secret_key: str):
        self.access_key, self.secret_key = access_key, secret_key
        self.users: dict[str, dict] = {}  # key -> {"secretKey", "status", "policies": [..]}
        self.policies: dict[str, dict] = {}
        self.quotas: dict[str, int] = {}
        self.calls: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        st = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, code, data: bytes = b""):
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def error(self, code, what):
                self.reply(code, json.dumps({"Code": what, "Message": what}).encode())

            def handle_any(self):
                u = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(u.query).items()}
                auth = self.headers.get("Authorization", "")
                if f"Credential={st.access_key}/" not in auth:
                    return self.error(403, "InvalidAccessKeyId")
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                cmd = u.path.removeprefix("/minio/admin/v3/")
                st.calls.append(cmd)
                secret = lambda: json.loads(decrypt(_Body(raw), st.secret_key))  # noqa: E731
                user = st.users.get(q.get("accessKey", ""))
                if cmd == "add-user":
                    body = secret()
                    st.users[q["accessKey"]] = {"secretKey": body["secretKey"], "status": body["status"],
                                                "policies": []}
                    return self.reply(200)
                if cmd == "list-users":
                    data = {k: {"policyName": ",".join(u["policies"]), "status": u["status"]} for k, u in st.users.items()}
                    return self.reply(200, encrypt(json.dumps(data).encode(), st.secret_key))
                if cmd in ("user-info", "remove-user", "set-user-status") and user is None:
                    return self.error(404, "XMinioAdminNoSuchUser")
                if cmd == "user-info":
                    return self.reply(200, json.dumps({"policyName": ",".join(user["policies"]),
                                                       "status": user["status"]}).encode())
                if cmd == "remove-user":
                    del st.users[q["accessKey"]]
                    return self.reply(200)
                if cmd == "set-user-status":
                    user["status"] = q["status"]
                    return self.reply(200)
                if cmd == "add-canned-policy":
                    st.policies[q["name"]] = json.loads(raw)
                    return self.reply(200)
                if cmd == "list-canned-policies":
                    return self.reply(200, json.dumps(st.policies).encode())
                if cmd in ("info-canned-policy", "remove-canned-policy") and q.get("name") not in st.policies:
                    return self.error(404, "XMinioAdminNoSuchPolicy")
                if cmd == "info-canned-policy":
                    return self.reply(200, json.dumps({"PolicyName": q["name"], "Policy": st.policies[q["name"]]}).encode())
                if cmd == "remove-canned-policy":
                    del st.policies[q["name"]]
                    return self.reply(200)
                if cmd in ("idp/builtin/policy/attach", "idp/builtin/policy/detach"):
                    body = secret()
                    target = st.users.get(body.get("user"))
                    if target is None or any(p not in st.policies for p in body["policies"]):
                        return self.error(400, "XMinioAdminNoSuchPolicy")
                    for p in body["policies"]:
                        if cmd.endswith("attach") and p not in target["policies"]:
                            target["policies"].append(p)
                        elif cmd.endswith("detach") and p in target["policies"]:
                            target["policies"].remove(p)
                    return self.reply(204)
                if cmd == "set-bucket-quota":
                    st.quotas[q["bucket"]] = json.loads(raw)["quota"]
                    return self.reply(200)
                if cmd == "get-bucket-quota":
                    return self.reply(200, json.dumps({"quota": st.quotas.get(q["bucket"], 0),
                                                       "quotatype": "hard"}).encode())
                return self.error(400, "XMinioAdminUnknownCommand")

            do_GET = do_PUT = do_POST = do_DELETE = handle_any

        return H
