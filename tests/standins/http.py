"""Small loopback HTTP stand-ins: Ollama (`/api/tags`, `/api/pull`) and the Langfuse enterprise
projects API (`/api/public/projects`), each following the upstream's documented request/response
shapes. SIMULATED servers; the clients under test use real HTTP over 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Base(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def send_json(self, code, obj=None):
        data = json.dumps(obj).encode() if obj is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n)) if n else {}


class Server:
    def __init__(self, handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def ollama(models: list[str], pulls: list[dict], missing: set[str] = frozenset()) -> Server:
    class H(_Base):
        def do_GET(self):
            if self.path == "/api/tags":
                return self.send_json(200, {"models": [{"name": m, "model": m} for m in models]})
            self.send_json(404, {"error": "not found"})

        def do_POST(self):
            b = self.body()
            pulls.append(b)
            if self.path != "/api/pull":
                return self.send_json(404, {"error": "not found"})
            if b.get("model") in missing:
                return self.send_json(500, {"error": "pull model manifest: file does not exist"})
            models.append(b["model"] if ":" in b["model"] else b["model"] + ":latest")
            self.send_json(200, {"status": "success"})
    return Server(H)


def langfuse(org_key: tuple[str, str], projects: dict[str, str]) -> Server:
    want = "Basic " + base64.b64encode(f"{org_key[0]}:{org_key[1]}".encode()).decode()

    class H(_Base):
        def _auth(self):
            if self.headers.get("Authorization") != want:
                self.send_json(401, {"message": "Unauthorized"})
                return False
            return True

        def do_GET(self):
            if self._auth():
                self.send_json(200, {"data": [{"id": i, "name": n} for n, i in projects.items()]})

        def do_POST(self):
            if self._auth():
                b = self.body()
                projects[b["name"]] = str(uuid.uuid4())
                self.send_json(201, {"id": projects[b["name"]], "name": b["name"]})

        def do_DELETE(self):
            if self._auth():
                pid = self.path.rsplit("/", 1)[-1]
                for n, i in list(projects.items()):
                    if i == pid:
                        del projects[n]
                self.send_json(202, {"success": True})
    return Server(H)
