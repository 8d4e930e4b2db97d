"""pvesim: a SIMULATED Proxmox VE 9.1 cluster for tests. It is not Proxmox and runs no containers.

What it does:
- Serves PVE's REST API at https://127.0.0.1:PORT/api2/json (self-signed CA in a temp dir; pass
  `ca_file` as proxmoxer's verify_ssl). Every request's path, method and parameters are checked
  against the official schema (tests/data/pve-api-schema-9.1.3.json.gz, vendored from pve-docs 9.1.3): unknown paths
  answer 501, unknown or malformed parameters 400 with PVE's {"errors": {param: msg}}.
- Auth: API tokens (`PVEAPIToken=USER@REALM!ID=SECRET`) and a root@pam password ticket.
  Root-only settings (devices, feature flags other than nesting, hookscripts, bind mounts) are
  refused to tokens with 403, as PVE does.
- Permissions (pvesim.access): roles, ACLs per path with propagation, pool membership lending
  the pool's ACL to /vms/<id>, token privilege separation (token's ∩ user's). Every endpoint runs
  its published `permissions.check` from the schema, and the handlers add what upstream checks in
  code (create, clone, config keys, tags on /vms/<id> only, resize, vzdump, task owners). Reads
  are filtered as upstream filters them (/cluster/resources, /pools, /cluster/mapping/pci).
  `acl="admin"` (default) gives the token's user Administrator on /; `acl=None` gives nothing:
  set it up with `sim.pveum("acl modify / -user ... -role ...")` lines, as an admin would.
- Keeps nodes (memory, cores, a GPU advertised as a /cluster/mapping/pci entry), one container
  storage of a given plugin type (lvmthin `local-lvm` by default; `shared_storage=True` is a Ceph
  RBD one, `storage=Storage(...)` anything, e.g. NFS), `local` (dir: templates and backups), pools,
  containers (config + digest + lock + status), tasks with realistic UPIDs, logs and exit statuses
  (OK, `WARNINGS: N`, errors; stoppable), the firewall (security groups, rules inserted at the top
  as upstream does, moves, ipsets with normalised CIDRs, options), datacenter.cfg's next-id range,
  and backups: `vzdump` (a task) writes an archive volume into a storage holding `backup` content.
- Linked clones only where pve-storage allows them for containers (lvmthin, zfspool, rbd, btrfs).
- Clone locks its source (`lock: disk`) for the task's duration: a second clone of the same
  source gets HTTP 500 `CT is locked (disk)`. The new container carries `lock: create` meanwhile.
- Injectable faults: HTTP errors on matching requests (500, "got timeout"), a task that hangs
  until released or stopped, a task that ends with warnings, a node whose storage is full
  (create/clone tasks fail), locks held by "someone else"; slow tasks via `task_seconds`.
- SSH side: a real paramiko SSH server per node on 127.0.0.1 (see pvesim.ssh), key auth only,
  answering `pct exec`, `pct push` and `ping`, recording every command. `ping` from a node gets
  no answer when the container's firewall drops it: datacenter and CT firewall enabled, NIC
  `firewall=1`, `policy_in: DROP` and no IN rule admitting ICMP from the node (pve-firewall
  `ruleset_create_vm_chain` adds no ICMP accept for IPv4).

What it does NOT model: real containers, processes, networking or storage; qemu VMs; HA,
replication, migration, snapshots, restoring or pruning backups; groups, realms and NoAccess in
the permission system; most of the ~400 schema paths (they answer 501 "not modelled"); memory
enforcement (starting a CT never fails for lack of memory); the exact wording of every PVE
error message.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.pvesim.server import ApiServer
from tests.pvesim.ssh import ExecRecord, NodeSsh, new_key, parse
from tests.pvesim.state import Cluster, Ct, Fault, GiB, MiB, Node, Storage, new_secret

TEMPLATE = "local:vztmpl/debian-12-standard_12.12-1_amd64.tar.zst"


class Simulator:
    def __init__(self, nodes: int = 3, mem_gb: int = 256, cores: int = 128, gpu_nodes: tuple[str, ...] = ("pve3",),
                 task_seconds: dict[str, float] | None = None, token_id: str = "aicommons@pve!apply",
                 shared_storage: bool = False, storage: Storage | None = None, acl: str | None = "admin"):
        self.dir = Path(tempfile.mkdtemp(prefix="pvesim-"))
        names = [f"pve{i}" for i in range(1, nodes + 1)]
        if storage is None and shared_storage:
            storage = Storage("ceph-ct", "rbd", "rootdir,images", shared=True)
        self.cluster = Cluster([Node(n, mem_gb * GiB, cores, gpu=n in gpu_nodes) for n in names],
                               storage=storage, task_seconds=task_seconds)
        self.token_id, self.token_secret = token_id, new_secret()
        if acl == "admin":
            self.cluster.access.grant("/", token_id.split("!")[0], "Administrator")
            self.cluster.access.privsep[token_id] = False
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
    def __enter__(self) -> Simulator:
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
    def pveum(self, line: str) -> None:
        """The few `pveum` commands an admin runs to set up the token (docs/proxmox.md):
        `role add NAME -privs "..."`, `acl modify PATH -user|-token ID -role R [-propagate 0]`,
        `pool add NAME`, `user add ID`, `user token add USER NAME --privsep 0|1`."""
        argv = shlex.split(line.split("#", 1)[0])
        if argv[:1] == ["pveum"]:
            argv = argv[1:]
        opts = {argv[i].lstrip("-"): argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("-")}
        a = self.cluster.access
        with self.cluster.lock:
            if argv[:2] == ["role", "add"]:
                a.add_role(argv[2], opts.get("privs", ""))
            elif argv[:2] == ["acl", "modify"]:
                who = opts.get("user") or opts.get("token")
                for role in opts["role"].split(","):
                    a.grant(argv[2], who, role, opts.get("propagate", "1") != "0")
            elif argv[:2] == ["pool", "add"]:
                self.cluster.pools.setdefault(argv[2], {"comment": opts.get("comment", "")})
            elif argv[:3] == ["user", "token", "add"]:
                tid = f"{argv[3]}!{argv[4]}"
                if tid != self.token_id:
                    raise ValueError(f"pvesim serves one token, {self.token_id}, not {tid}")
                a.privsep[tid] = opts.get("privsep", "1") != "0"
            elif argv[:2] == ["user", "add"]:
                pass  # users exist implicitly
            else:
                raise ValueError(f"pveum command not modelled: {line}")

    def add_template(self, node: str, vmid: int, features: str = "nesting=1,keyctl=1",
                     pool: str | None = "aicommons") -> None:
        """What the one-time root step leaves behind: a Debian 12 CT converted to a template, in the
        pool (root's `pct create ... --pool aicommons`, as docs/proxmox.md says)."""
        with self.cluster.lock:
            if pool:
                self.cluster.pools.setdefault(pool, {"comment": ""})
            self.cluster.cts[vmid] = Ct(vmid, node, {
                "arch": "amd64", "ostype": "debian", "hostname": "aicommons-template", "memory": "512",
                "swap": "512", "cores": "1", "features": features, "unprivileged": "1",
                "rootfs": f"{self.cluster.storage}:base-{vmid}-disk-0,size=4G", "tags": "aicommons-template",
                "template": "1"}, pool=pool)

    def site_yaml(self, users: int = 50, **driver) -> str:
        """The seed site (render_site_yaml) with its driver block pointed at this simulator."""
        from aicommons.spec.default import render_site_yaml

        text = render_site_yaml(users=users)
        fields = {"api_url": self.api_url, "token_id": self.token_id, "token_secret": self.token_secret,
                  "verify_tls": "true", "ca_file": self.ca_file, "nodes": "[" + ", ".join(self.ssh) + "]",
                  "storage": self.cluster.storage, "template_ctid": "9000", **{k: str(v) for k, v in driver.items()}}
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

    def warn_next_task(self, task_type: str, message: str = "something odd happened") -> None:
        """The next task of this type logs a warning and ends `WARNINGS: 1` (it still did its work)."""
        with self.cluster.lock:
            self.cluster.faults.append(Fault("task_warn", task_type=task_type, message=message))

    def add_vm(self, node: str, vmid: int, mem_mb: int, cores: int = 2, running: bool = True,
               pool: str | None = None, name: str = "vm") -> None:
        """Another team's QEMU VM: it holds memory on `node` whether or not the token can see it."""
        with self.cluster.lock:
            self.cluster.vms[vmid] = {"node": node, "name": name, "maxmem": mem_mb * MiB, "maxcpu": cores,
                                      "status": "running" if running else "stopped", "pool": pool}

    def add_foreign_ct(self, node: str, vmid: int, mem_mb: int, cores: int = 2, running: bool = True) -> None:
        """Another team's container outside the site's pool (the token has no ACL on it)."""
        with self.cluster.lock:
            self.cluster.cts[vmid] = Ct(vmid, node, {
                "arch": "amd64", "ostype": "debian", "hostname": f"other-{vmid}", "memory": str(mem_mb),
                "swap": "0", "cores": str(cores), "unprivileged": "1",
                "rootfs": f"{self.cluster.storage}:vm-{vmid}-disk-0,size=8G"}, pool=None)
            self.cluster.cts[vmid].status = "running" if running else "stopped"

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

    # ---- the firewall's effect on traffic from a node --------------------------------------
    def _drops_icmp(self, ct: Ct, src: str) -> bool:
        cl = self.cluster
        on = lambda opts: str(opts.get("enable", "0")) == "1"  # noqa: E731
        if not (on(cl.fw_options.get("cluster", {})) and on(cl.fw_options.get(str(ct.vmid), {}))
                and "firewall=1" in ct.conf.get("net0", "")):
            return False
        if cl.fw_options[str(ct.vmid)].get("policy_in", "DROP") != "DROP":
            return False
        rules = []
        for r in cl.fw_rules.get(ct.vmid, []):
            rules += cl.fw_groups.get(r["action"], []) if r.get("type") == "group" else [r]
        for r in rules:
            if (str(r.get("enable", 0)) == "1" and r.get("type") == "in" and r.get("action") == "ACCEPT"
                    and r.get("proto", "icmp") == "icmp" and not r.get("dport") and self._matches(r.get("source"), src, ct)):
                return False
        return True

    def _matches(self, source: str | None, ip: str, ct: Ct) -> bool:
        if not source:
            return True
        if source.startswith("+"):
            name = source[1:]
            entries = self.cluster.fw_ipsets.get((str(ct.vmid), name), self.cluster.fw_ipsets.get(("cluster", name), []))
            hits = [e for e in entries if ipaddress.ip_address(ip) in ipaddress.ip_network(e["cidr"], strict=False)]
            return any(not e.get("nomatch") for e in hits) and not any(e.get("nomatch") for e in hits)
        return any(ipaddress.ip_address(ip) in ipaddress.ip_network(s, strict=False) for s in source.split(","))

    # ---- SSH answers --------------------------------------------------------------------
    def _answer(self, node: str, command: str, stdin: bytes) -> tuple[int, bytes, bytes]:
        kind, ctid, argv, opts = parse(command)
        with self.cluster.lock:
            self.records.append(ExecRecord(node, command, ctid, argv, stdin))
            if kind == "ping":
                ip = argv[-1]
                ct = next((c for c in self.cluster.cts.values() if c.ip() == ip and c.status == "running"), None)
                up = ct is not None and not self._drops_icmp(ct, self.cluster.nodes[node].ip)
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
            return _inside(ct, argv)


def _inside(ct, argv: list[str]) -> tuple[int, bytes, bytes]:
    """What a command does inside a container, for the commands the driver runs. Anything else fails
    (127, as a shell does for an unknown command): an answer of 0 to whatever was asked hid scripts
    that were never even parsed. Scripts are parsed by the real /bin/sh (`sh -n`; dash on Debian, as
    in the container) and refused with its message when they do not parse; they are not run."""
    if argv[:1] == ["cat"] and len(argv) == 2:
        return (0, ct.fs[argv[1]], b"") if argv[1] in ct.fs else (1, b"", b"No such file\n")
    if argv[:2] == ["mkdir", "-p"] and len(argv) >= 3:
        return 0, b"", b""
    if argv[:2] == ["sh", "-eu"] and len(argv) == 3:  # a pushed script, run by path
        if argv[2] not in ct.fs:
            return 127, b"", f"sh: 0: cannot open {argv[2]}: No such file\n".encode()
        return _parses(ct.fs[argv[2]])
    if argv[:2] == ["sh", "-c"] and len(argv) >= 3:
        return _parses(argv[2].encode())
    if argv[:2] == ["systemctl", "restart"] and len(argv) == 3:  # an aicommons service's new settings
        return 0, b"", b""
    if argv[:2] == ["docker", "compose"]:  # Docker in the template: the provision tests model its absence
        return 0, b"Docker Compose version v2.40.0\n" if argv[2:3] == ["version"] else b"", b""
    return 127, b"", f"pvesim: `{' '.join(argv)[:80]}` is not modelled inside a container\n".encode()


def _parses(script: bytes) -> tuple[int, bytes, bytes]:
    proc = subprocess.run(["sh", "-n"], input=script, capture_output=True)
    return (0, b"", b"") if proc.returncode == 0 else (2, b"", proc.stderr)


__all__ = ["Simulator", "TEMPLATE", "parse"]
