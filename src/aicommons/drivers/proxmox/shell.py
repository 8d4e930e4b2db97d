"""Running commands on Proxmox nodes over SSH: `pct exec` and `pct push` into containers.

No API can exec in or push files to an LXC container, so the driver SSHes to the node hosting
it. `NodeShell` is the interface; `ParamikoShell` the real one (key auth, host keys checked
against the site's known_hosts with RejectPolicy: an unknown node is refused, never trusted).
"""

from __future__ import annotations

import os
import shlex
import threading
import time
from collections.abc import Callable
from typing import Protocol

import paramiko

from aicommons.drivers.base import ExecResult
from aicommons.errors import PermanentError, TemporaryError


class NodeShell(Protocol):
    def run(self, node: str, argv: list[str], *, stdin: bytes | None = None, timeout: float = 600) -> ExecResult: ...

    def close(self) -> None: ...


def pct_exec(ctid: int, argv: list[str]) -> list[str]:
    return ["pct", "exec", str(ctid), "--", *argv]


def pct_push(ctid: int, dest: str, mode: int) -> list[str]:
    # The data comes on stdin: nothing is staged in the node's filesystem.
    return ["pct", "push", str(ctid), "/dev/stdin", dest, "--perms", f"{mode:04o}"]


class ParamikoShell:
    """One SSH connection per node, reused for every command (channels are cheap)."""

    def __init__(self, address: Callable[[str], tuple[str, int]], user: str, key_file: str, known_hosts: str,
                 connect_timeout: float = 15):
        self.address, self.user, self.connect_timeout = address, user, connect_timeout
        self.key_file = os.path.expanduser(key_file)
        self.known_hosts = os.path.expanduser(known_hosts)
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._lock = threading.Lock()

    def _client(self, node: str) -> paramiko.SSHClient:
        with self._lock:
            c = self._clients.get(node)
            transport = c.get_transport() if c is not None else None
            if c is not None and transport is not None and transport.is_active():
                return c
            host, port = self.address(node)
            if not os.path.exists(self.known_hosts):
                raise PermanentError(f"driver.ssh.known_hosts: {self.known_hosts} does not exist; add the nodes' "
                                     "host keys (ssh-keyscan from a trusted network, or copy /etc/ssh/ssh_host_*.pub)")
            c = paramiko.SSHClient()
            c.load_host_keys(self.known_hosts)
            c.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                c.connect(host, port=port, username=self.user, key_filename=self.key_file, timeout=self.connect_timeout,
                          allow_agent=False, look_for_keys=False)
            except paramiko.SSHException as exc:  # includes unknown/mismatched host keys and auth failures
                raise PermanentError(f"ssh {self.user}@{host}:{port} (node {node}): {exc}; check driver.ssh "
                                     "(key_file, known_hosts)") from None
            except OSError as exc:
                raise TemporaryError(f"ssh {host}:{port} (node {node}): {exc}", delay=5) from None
            self._clients[node] = c
            return c

    def run(self, node: str, argv: list[str], *, stdin: bytes | None = None, timeout: float = 600) -> ExecResult:
        client = self._client(node)
        command = shlex.join(argv)
        try:
            transport = client.get_transport()
            if transport is None:  # closed under us: dropped and retried like any broken connection
                raise paramiko.SSHException("the connection has no transport")
            chan = transport.open_session(timeout=self.connect_timeout)
            chan.settimeout(timeout)
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            while True:
                if chan.recv_ready():
                    out += chan.recv(65536)
                elif chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                elif chan.exit_status_ready():
                    break
                elif time.monotonic() > deadline:
                    chan.close()
                    return ExecResult(124, out.decode(errors="replace"), f"timed out after {timeout:g}s")
                else:
                    chan.status_event.wait(0.05)
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            rc = chan.recv_exit_status()
            chan.close()
        except (paramiko.SSHException, OSError, TimeoutError) as exc:
            with self._lock:
                self._clients.pop(node, None)
            raise TemporaryError(f"ssh to node {node} failed running {argv[:4]}...: {exc}", delay=5) from None
        return ExecResult(rc, out.decode(errors="replace"), err.decode(errors="replace"))

    def close(self) -> None:
        with self._lock:
            for c in self._clients.values():
                c.close()
            self._clients.clear()
