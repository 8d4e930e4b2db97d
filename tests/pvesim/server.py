"""The simulator's HTTPS front end (http.server + a self-signed CA made with `cryptography`)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import ssl
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.pvesim.access import enforce
from tests.pvesim.handlers import HANDLERS, Ctx
from tests.pvesim.schema import ApiSchema
from tests.pvesim.state import Cluster, PveError, token_ok

API = "/api2/json"


def make_tls(dirpath: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1; returns (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.UTC)

    def cert(subject, issuer, pub, signer, ca: bool, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
             .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pvesim CA")])
    ca = cert(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    srv = cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), ca_name, key.public_key(),
               ca_key, False, [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    paths = dirpath / "ca.pem", dirpath / "cert.pem", dirpath / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(paths[2], 0o600)
    return paths


class ApiServer:
    """Serves /api2/json on 127.0.0.1: auth, schema check, fault injection, then the handler."""

    def __init__(self, cluster: Cluster, tokens: dict[str, str], root_password: str, tls_dir: Path):
        # `tokens`: token id -> secret; what each may do is `cluster.access` (pvesim.access)
        self.cluster = cluster
        self.tokens = tokens
        self.root_password = root_password
        self.schema = ApiSchema.load()
        self.counts: Counter = Counter()  # (method, schema path) -> n
        self.log: list[tuple[str, str, int]] = []  # (method, path, status)
        self.tickets: set[str] = set()
        self.ca, cert, key = make_tls(tls_dir)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else keep-alive replies wait ~40 ms for delayed ACKs

            def log_message(self, *args):  # quiet
                pass

            def _do(self):
                server.dispatch(self)

            do_GET = do_POST = do_PUT = do_DELETE = _do

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="pvesim-http")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- one request --------------------------------------------------------------------
    def dispatch(self, req: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(req.path)
        params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        length = int(req.headers.get("Content-Length") or 0)
        if length:
            params.update(urllib.parse.parse_qsl(req.rfile.read(length).decode(), keep_blank_values=True))
        method = req.command
        path = url.path  # segments are unquoted one by one (a CIDR travels as 10.0.5.0%2F24)
        try:
            if not path.startswith(API):
                raise PveError(404, "Not Found")
            data = self.call(method, path[len(API):], params, req.headers)
            self._reply(req, method, path, 200, "OK", {"data": data})
        except PveError as exc:
            body = {"data": None}
            if exc.errors:
                body["errors"] = exc.errors
            self._reply(req, method, path, exc.status, exc.message, body)

    def _reply(self, req, method: str, path: str, status: int, reason: str, body: dict) -> None:
        raw = json.dumps(body).encode()
        with self.cluster.lock:
            self.log.append((method, path, status))
        req.send_response(status, reason.replace("\n", " ")[:200])
        req.send_header("Content-Type", "application/json;charset=UTF-8")
        req.send_header("Content-Length", str(len(raw)))
        req.end_headers()
        req.wfile.write(raw)

    def call(self, method: str, path: str, params: dict[str, str], headers) -> object:
        found = self.schema.endpoint(method, path)
        if found is None:
            raise PveError(501, f"Method '{method} {path}' not implemented")
        ep, path_params = found
        if ep.path == "/access/ticket" and method == "POST":
            return self._ticket(params)
        user, root = self._auth(headers, method)
        if not ep.allow_token and "!" in user:
            raise PveError(403, "Permission check failed (API tokens are not allowed here)")
        merged = {**params, **path_params}
        errors = self.schema.validate(ep, merged)
        if errors:
            raise PveError(400, "Parameter verification failed.", errors)
        with self.cluster.lock:
            self.counts[(method, ep.path)] += 1
        fault = self.cluster.http_fault(method, path)
        if fault:
            raise PveError(fault.status, fault.message)
        handler = HANDLERS.get((method, ep.path))
        if handler is None:
            raise PveError(501, f"Method '{method} {ep.path}' is in the schema but not modelled by pvesim")
        with self.cluster.lock:
            ctx = Ctx(self.cluster, merged, user, root)
            enforce(ctx, ep.info, merged)
            return handler(ctx)

    def _auth(self, headers, method: str) -> tuple[str, bool]:
        tid = token_ok(headers.get("Authorization", ""), self.tokens)
        if tid:
            return tid, False
        cookie = headers.get("Cookie", "")
        m = re.search(r"PVEAuthCookie=([^;]+)", cookie)
        if m and urllib.parse.unquote(m.group(1)) in self.tickets:
            if method != "GET" and headers.get("CSRFPreventionToken") != "pvesim-csrf":
                raise PveError(401, "Permission denied - invalid csrf token")
            return "root@pam", True
        raise PveError(401, "authentication failure")

    def _ticket(self, params: dict[str, str]) -> dict:
        user = params.get("username", "")
        if "@" not in user and params.get("realm"):
            user = f"{user}@{params['realm']}"
        if user != "root@pam" or params.get("password") != self.root_password:
            raise PveError(401, "authentication failure")
        ticket = f"PVE:root@pam:{os.urandom(8).hex().upper()}"
        self.tickets.add(ticket)
        return {"ticket": ticket, "CSRFPreventionToken": "pvesim-csrf", "username": "root@pam"}

    # ---- counters for tests -------------------------------------------------------------
    def writes(self) -> int:
        return sum(n for (m, _p), n in self.counts.items() if m in ("POST", "PUT", "DELETE"))

    def total(self) -> int:
        return sum(self.counts.values())

    def reset_counts(self) -> None:
        with self.cluster.lock:
            self.counts.clear()
            self.log.clear()
