"""pvesim: a SIMULATED Proxmox VE 9.1 cluster for tests. It is not Proxmox and runs no containers.

What it does:
- Serves PVE's REST API at https://127.0.0.1:PORT/api2/json (self-signed CA in a temp dir; pass
  `ca_file` as proxmoxer's verify_ssl). Every request's path, method and parameters are checked
  against the official schema (tests/data/pve-api-schema-9.1.3.json.gz, vendored from pve-docs 9.1.3): unknown paths
  answer 501, unknown or malformed parameters 400 with PVE's {"errors": {param: msg}}.
- Auth: API tokens (`PVEAPIToken=USER@REALM!ID=SECRET`) and a root@pam password ticket.
  Root-only settings (devices, feature flags other than nesting, hookscripts, bind mounts) are
  refused to tokens with 403, as PVE does.
- Keeps nodes (memory, cores, a GPU advertised as a /cluster/mapping/pci entry), one container
  storage (local to each node, or shared with `shared_storage=True`), pools, containers (config +
  digest + lock + status), tasks with realistic UPIDs and logs, the firewall (security
  groups, rules, ipsets, options), and backups: `vzdump` (a task) writes an archive volume into
  a storage holding `backup` content (`local`), listed by the storage content endpoint.
- Clone locks its source (`lock: disk`) for the task's duration: a second clone of the same
  source gets HTTP 500 `CT is locked (disk)`. The new container carries `lock: create` meanwhile.
- Injectable faults: HTTP errors on matching requests (500, "got timeout"), a task that hangs
  until released, a node whose storage is full (create/clone tasks fail), locks held by "someone
  else"; slow tasks via `task_seconds` per task type.
- SSH side: a real paramiko SSH server per node on 127.0.0.1 (see pvesim.ssh), key auth only,
  answering `pct exec`, `pct push` and `ping`, recording every command.

What it does NOT model: real containers, processes, networking or storage; qemu VMs; HA,
replication, migration, snapshots, restoring or pruning backups; the permission system beyond
token vs root; most of the ~400 schema paths (they answer 501 "not modelled"); memory
enforcement (starting a CT never fails for lack of memory); the exact wording of every PVE
error message.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from tests.pvesim.server import ApiServer
from tests.pvesim.ssh import ExecRecord, NodeSsh, new_key, parse
from tests.pvesim.state import GiB, Cluster, Ct, Fault, Node, new_secret

TEMPLATE = "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst"


class Simulator:
    def __init__(self, nodes: int = 3, mem_gb: int = 256, cores: int = 128, gpu_nodes: tuple[str, ...] = ("pve3",),
                 task_seconds: dict[str, float] | None = None, token_id: str = "aicommons@pve!apply",
                 shared_storage: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="pvesim-"))
        names = [f"pve{i}" for i in range(1, nodes + 1)]
        self.cluster = Cluster([Node(n, mem_gb * GiB, cores, gpu=n in gpu_nodes) for n in names],
                               task_seconds=task_seconds, shared=shared_storage)
        self.token_id, self.token_secret = token_id, new_secret()
        self.root_password = new_secret()
        self.api = ApiServer(self.cluster, {token_id: self.token_secret}, self.root_password, self.dir)
        self.records: list[ExecRecord] = []
        self.exec_handler = None  # fn(ct, argv, stdin) -> (rc, out: bytes, err: bytes) | None
        self.client_key, key_text = new_key()
        self.ssh = {n: NodeSsh(n, self.cluster, self.client_key, self._answer) for n in names}
        self.key_file = self.dir / "id_ed25519"
        self.key_file.write_text(key_text)
        self.key_file.chmod(0o600)
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text("".join(
            f"[127.0.0.1]:{s.port} {s.host_key.get_name()} {s.host_key.get_base64()}\n" for s in self.ssh.values()))

    # ---- lifecycle ----------------------------------------------------------------------
    def __enter__(self) -> "Simulator":
        self.api.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.cluster.release_hung()
        self.api.stop()
        for s in self.ssh.values():
            s.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api.port}"

    @property
    def ca_file(self) -> str:
        return str(self.api.ca)

    def ssh_address(self, node: str) -> tuple[str, int]:
        return "127.0.0.1", self.ssh[node].port

    # ---- setup helpers ------------------------------------------------------------------
    def add_template(self, node: str, vmid: int, features: str = "nesting=1,keyctl=1") -> None:
        """What the one-time root step leaves behind: a Debian 12 CT converted to a template."""
        with self.cluster.lock:
            self.cluster.cts[vmid] = Ct(vmid, node, {
                "arch": "amd64", "ostype": "debian", "hostname": "aicommons-template", "memory": "512",
                "swap": "512", "cores": "1", "features": features, "unprivileged": "1",
                "rootfs": f"local-lvm:base-{vmid}-disk-0,size=4G", "tags": "aicommons-template", "template": "1"})

    def site_yaml(self, users: int = 50, **driver) -> str:
        """The seed site (render_site_yaml) with its driver block pointed at this simulator."""
        from aicommons.spec.default import render_site_yaml

        text = render_site_yaml(users=users)
        fields = {"api_url": self.api_url, "token_id": self.token_id, "token_secret": self.token_secret,
                  "verify_tls": "true", "ca_file": self.ca_file, "nodes": "[" + ", ".join(self.ssh) + "]",
                  "storage": "local-lvm", "template_ctid": "9000", **{k: str(v) for k, v in driver.items()}}
        block = "driver:\n  kind: proxmox\n" + "".join(f"  {k}: {v}\n" for k, v in fields.items())
        block += (f"  ssh:\n    user: root\n    key_file: {self.key_file}\n    known_hosts: {self.known_hosts}\n")
        return re.sub(r"driver:\n(  .*\n)+", block, text, count=1)

    # ---- faults -------------------------------------------------------------------------
    def fail_http(self, path: str, method: str | None = None, status: int = 500,
                  message: str = "Internal Server Error", times: int = 1) -> None:
        with self.cluster.lock:
            self.cluster.faults.append(Fault("http", method, re.compile(path), status, message, times))

    def hang_next_task(self, task_type: str) -> None:
        with self.cluster.lock:
            self.cluster.faults.append(Fault("task_hang", task_type=task_type))

    def fill_node(self, node: str) -> None:
        with self.cluster.lock:
            self.cluster.faults.append(Fault("node_full", node=node, times=10**9))

    def clear_faults(self) -> None:
        with self.cluster.lock:
            self.cluster.faults.clear()
        self.cluster.release_hung()

    def release_hung(self) -> int:
        return self.cluster.release_hung()

    # ---- counters -----------------------------------------------------------------------
    def writes(self) -> int:
        return self.api.writes()

    def reset_counts(self) -> None:
        self.api.reset_counts()
        self.records.clear()

    # ---- SSH answers --------------------------------------------------------------------
    def _answer(self, node: str, command: str, stdin: bytes) -> tuple[int, bytes, bytes]:
        kind, ctid, argv, opts = parse(command)
        with self.cluster.lock:
            self.records.append(ExecRecord(node, command, ctid, argv, stdin))
            if kind == "ping":
                ip = argv[-1]
                up = any(c.ip() == ip and c.status == "running" for c in self.cluster.cts.values())
                return (0, b"1 packets transmitted, 1 received\n", b"") if up else (1, b"", b"")
            if kind == "other":
                return 127, b"", f"pvesim: command not modelled: {command}\n".encode()
            ct = self.cluster.cts.get(ctid)
            if ct is None or ct.node != node:
                return 2, b"", f"Configuration file 'nodes/{node}/lxc/{ctid}.conf' does not exist\n".encode()
            if ct.status != "running":
                return 2, b"", f"CT {ctid} not running\n".encode()
            if kind == "push":
                if argv[0] != "/dev/stdin":
                    return 2, b"", f"unable to open file '{argv[0]}'\n".encode()
                ct.fs[argv[1]] = stdin
                ct.fs[argv[1] + ":mode"] = opts.get("perms", "0644").encode()
                return 0, b"", b""
            if self.exec_handler is not None:
                got = self.exec_handler(ct, argv, stdin)
                if got is not None:
                    return got
            if argv[:1] == ["cat"] and len(argv) == 2:
                return (0, ct.fs[argv[1]], b"") if argv[1] in ct.fs else (1, b"", b"No such file\n")
            return 0, b"", b""


__all__ = ["Simulator", "TEMPLATE", "parse"]
