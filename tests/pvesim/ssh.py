"""The simulator's SSH side: one real paramiko SSH server per node on 127.0.0.1.

It accepts only the test's client key (public-key auth), presents a per-node host key, and
answers the commands the driver sends to a Proxmox node:
  pct exec CTID -- ARGV...             (recorded; answered by `Simulator.exec_handler`)
  pct push CTID /dev/stdin DEST [--perms MODE]   (stdin stored in the CT's file table)
  ping -c 1 -W 1 IP                    (0 if a running CT on the cluster has that IP)
Everything else answers rc 127. Nothing is executed on this host.
"""

from __future__ import annotations

import io
import shlex
import socket
import threading
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.pvesim.state import Cluster


def new_key() -> tuple[paramiko.Ed25519Key, str]:
    """A fresh Ed25519 key and its OpenSSH private-key text (paramiko cannot write Ed25519 keys)."""
    raw = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(raw)), raw


@dataclass
class ExecRecord:
    node: str
    command: str
    ctid: int | None
    argv: list[str]
    stdin: bytes


class _Server(paramiko.ServerInterface):
    def __init__(self, client_key: paramiko.PKey):
        self.client_key = client_key
        self.commands: dict[int, bytes] = {}
        self.event = threading.Event()

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL if key == self.client_key else paramiko.AUTH_FAILED

    def get_allowed_auths(self, username):
        return "publickey"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        self.commands[channel.get_id()] = command
        return True


class NodeSsh:
    """One node's SSH server."""

    def __init__(self, node: str, cluster: Cluster, client_key: paramiko.PKey, answer):
        self.node, self.cluster, self.client_key, self.answer = node, cluster, client_key, answer
        self.host_key, _ = new_key()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True, name=f"pvesim-ssh-{node}").start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = paramiko.Transport(conn)
            t.add_server_key(self.host_key)
            server = _Server(self.client_key)
            try:
                t.start_server(server=server)
            except (paramiko.SSHException, EOFError, OSError):
                continue
            self.transports.append(t)
            threading.Thread(target=self._channels, args=(t, server), daemon=True).start()

    def _channels(self, t: paramiko.Transport, server: _Server) -> None:
        while t.is_active():
            chan = t.accept(timeout=1)
            if chan is None:
                continue
            threading.Thread(target=self._run, args=(chan, server), daemon=True).start()

    def _run(self, chan: paramiko.Channel, server: _Server) -> None:
        for _ in range(200):  # the exec request arrives just after the channel opens
            if chan.get_id() in server.commands:
                break
            threading.Event().wait(0.005)
        command = server.commands.pop(chan.get_id(), b"").decode()
        data = b""
        while True:
            chunk = chan.recv(65536)
            if not chunk:
                break
            data += chunk
        try:
            rc, out, err = self.answer(self.node, command, data)
        except Exception as exc:  # noqa: BLE001 - a bug in a test's handler must not hang the client
            rc, out, err = 255, b"", f"pvesim: {exc}\n".encode()
        try:
            if out:
                chan.sendall(out)
            if err:
                chan.sendall_stderr(err)
            chan.send_exit_status(rc)
            chan.shutdown_write()
            chan.close()
        except (EOFError, OSError):  # the client hung up first (it had its answer or gave up)
            pass

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
        for t in self.transports:
            t.close()


def parse(command: str) -> tuple[str, int | None, list[str], dict[str, str]]:
    """`pct exec 200 -- a b` -> ("exec", 200, ["a", "b"], {}); `pct push 200 SRC DEST --perms 0600`."""
    argv = shlex.split(command)
    if argv[:2] == ["pct", "exec"] and len(argv) >= 4 and argv[3] == "--":
        return "exec", int(argv[2]), argv[4:], {}
    if argv[:2] == ["pct", "push"] and len(argv) >= 5:
        opts = {argv[i].lstrip("-"): argv[i + 1] for i in range(5, len(argv) - 1, 2)}
        return "push", int(argv[2]), [argv[3], argv[4]], opts
    if argv[:1] == ["ping"]:
        return "ping", None, argv[1:], {}
    return "other", None, argv, {}
