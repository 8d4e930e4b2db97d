"""LxcDriver: the ComputeDriver protocol on Debian's `lxc-*` tools, one container per CTID.

Containers live under `driver.lxcpath` as `<ctid>/config`, unprivileged (the site's uid range,
idmap.py), each an overlay of the cached Debian 12 template (lower = the template idmapped into
the site's range, upper = `<ctid>/delta`, owned by the range), mounted before lxc-start by
prestart.py at `<ctid>/rootfs`. Every `lxc-*`
command runs under `ip netns exec NS`: a container's monitor socket is abstract and therefore
per network namespace, so run elsewhere `lxc-info` would report a running container STOPPED.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from aicommons.catalog import load_catalog
from aicommons.drivers.base import (
    ContainerState,
    ControlPlane,
    DriverInfo,
    ExecResult,
    HostProbe,
    LimitReading,
    Status,
    Usage,
)
from aicommons.drivers.lxc import (
    aicservice,
    apps,
    config,
    hostaudit,
    hostcheck,
    idmap,
    limits,
    models,
    netaudit,
    netns,
    services,
    template,
)
from aicommons.drivers.lxc.run import run
from aicommons.drivers.lxc.services import ServiceOutcome
from aicommons.drivers.lxc.traefik import TraefikRunner
from aicommons.errors import PermanentError, TemporaryError
from aicommons.plan import models as model_plan
from aicommons.plan.model import Container
from aicommons.plan.secrets import SecretLookup
from aicommons.render.aicservice import IN_SITE_ENV
from aicommons.render.bridge_filter import bridge_rules
from aicommons.spec.models import Site

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


OWNER_FILE = ".site"  # in lxcpath: the directory of the site that made it (written by apply/up)


def read_owner(lxcpath: Path) -> str | None:
    try:
        return (lxcpath / OWNER_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def check_owner(lxcpath: str | Path | None, ns: str | None, owner: str | None) -> None:
    """The namespace and lxcpath are named after the site: a second site of the same name elsewhere
    on this host would take the first one's containers for its own (and delete them). Refuse."""
    if lxcpath is None:
        return
    lxcpath = Path(lxcpath)
    held = read_owner(lxcpath)
    if owner and held and held != owner:
        raise PermanentError(
            f"{lxcpath} and network namespace {ns!r} belong to the site in {held}, another site with this "
            f"name; give this site its own site.name (or driver.lxcpath and driver.netns). If that site was "
            f"moved here, remove {lxcpath / OWNER_FILE} (it holds the site's directory)")


class LxcDriver:
    kind = "lxc"
    configures_services = True  # PostgreSQL/Redis/Prometheus by its own recipes (services.py)

    def __init__(self, *, site: str, net: netns.NetPlan, lxcpath: str, cache_dir: str,
                 log=None, secrets: SecretLookup | None = None, traefik_dir: str | None = None,
                 traefik_ip: str | None = None, runtime: str = "docker",
                 bridge_filter: str | None = None, owner: str | None = None,
                 models: tuple = ()) -> None:
        self.site = site
        self.models = models  # plan/models.py ModelUnit: what the model server container runs
        self.owner = owner  # the site's directory: two sites of one name must not share lxcpath/netns
        self.runtime = runtime  # native: users' apps run from shared layers (apps.py)
        self.bridge_filter = bridge_filter  # render/bridge_filter.py: only Traefik reaches a user's apps
        self.secrets = secrets
        self.outcomes: dict[str, ServiceOutcome] = {}
        self._net_lock = threading.Lock()  # the engine starts containers from several threads
        self.net = net
        self.ns = net.ns
        self.lxcpath = Path(lxcpath)
        self.cache_dir = cache_dir
        self.log = log or (lambda msg: None)
        self.idmap_base = idmap.site_base(net.ns)  # the site's uid/gid range (idmap.py)
        self.traefik = (TraefikRunner(net.ns, traefik_ip, traefik_dir, self.lxcpath / "_traefik")
                        if traefik_dir and traefik_ip else None)
        self.join = False  # may this process join the namespace (the `aicommons` command does)
        self.control: ControlPlane | None = None  # site file, state, key: for the portal (aicservice.py)
        self.site_spec: Site | None = None

    # Building the driver changes nothing on the host: `plan` and the other read-only commands
    # only attach() to a namespace that exists. apply/up open_network() under the site's lock,
    # and close_network() removes it, under that lock, once the site has no container left.

    def attach(self) -> None:
        """Join the site's namespace if it exists (the site is up), so its addresses are reachable.
        Without one nothing of the site runs and nothing needs dialling."""
        check_owner(self.lxcpath, self.ns, self.owner)
        if not netns.exists(self.ns):
            return
        if not self.join:
            raise PermanentError(f"the LXC site's addresses exist only in network namespace {self.ns!r}; "
                                 "this caller did not allow joining it (join=True; the `aicommons` command does)")
        netns.enter(self.ns, self.net.mirror, self.net.nat)

    def open_network(self) -> None:
        """apply/up: the namespace, NAT and Traefik, then join it (before the engine's threads start)."""
        if os.environ.get(IN_SITE_ENV):
            raise PermanentError("this aicommons runs inside one of the site's own containers (the portal); an LXC "
                                 "site's containers are made and changed on its host: run `aicommons apply` or "
                                 "`aicommons users ...` there")
        check_owner(self.lxcpath, self.ns, self.owner)
        if self.owner:
            self.lxcpath.mkdir(parents=True, exist_ok=True)
            (self.lxcpath / OWNER_FILE).write_text(self.owner + "\n")
        if self.net.nat:
            netns.mirror_addresses(self.net.mirror)
        self._raise_host_limits(len(self._ctids()))
        self.ensure_network()
        self.attach()
        self._convert_privileged()

    def _raise_host_limits(self, containers: int) -> None:
        """Before any container starts: the host limits a site of this size needs, raised (never
        lowered) and recorded so `down` restores them; refused with the commands when they cannot be."""
        hostcheck.raise_for(self.ns, hostcheck.needs(containers), log=self.log)

    def check(self, plan, *, purge: bool = False) -> None:
        """The engine's hook before any change (drivers/base.py ChecksPlans): the host holds the
        whole site (its limits raised now), or nothing starts."""
        if plan.resolved is not None:
            self._raise_host_limits(len(plan.resolved.containers))

    def host_notes(self, resolved) -> list[str]:
        """For `plan`: what the host lacks for this site (limits, memory, disk) and whether AppArmor applies."""
        cs = list(resolved.containers)
        return hostcheck.notes(len(cs), sum(c.memory_mb for c in cs), sum(c.disk_gb for c in cs), str(self.lxcpath))

    def _convert_privileged(self) -> None:
        """Containers made privileged by an older aicommons become unprivileged, keeping their data:
        stopped, their own files (the overlay's upper dir) shifted into the site's range, the new
        config written, started again if they ran. Repeatable if interrupted (idmap.shift_tree)."""
        tdir: Path | None = None
        for p in self._ctids():
            meta = self._meta(int(p.name))
            if meta is None or not config.privileged((p / "config").read_text()):
                continue
            ctid = int(p.name)
            tdir = tdir or self.ensure_template()
            was_running = self._status(ctid) == "running"
            self.log(f"container {ctid}: privileged (made by an older aicommons); converting to unprivileged")
            self.stop(ctid)
            shutil.rmtree(p / "olwork", ignore_errors=True)  # LXC's overlay workdir of the privileged rootfs
            n = idmap.shift_tree(p / "delta", self.idmap_base)
            self._make_dirs(p)
            self._write_config(self._container_of(ctid, meta), tdir)
            limits.remove(self.ns, ctid)
            self.log(f"container {ctid}: {n} files of its own shifted to uid {self.idmap_base}+; now unprivileged")
            if was_running:
                self.start(ctid)

    def _container_of(self, ctid: int, meta: dict) -> Container:
        return Container(ctid=int(ctid), ip=meta["ip"], prefixlen=self.net.prefixlen, gateway=self.net.gateway,
                         hostname=meta["hostname"], role=meta["role"], name=meta["name"],
                         services=tuple(meta.get("services", ())), phase=0, memory_mb=meta["memory_mb"],
                         cores=meta["cores"], disk_gb=meta["disk_gb"], traefik_file="")

    def close_network(self) -> None:
        """After an apply: a site with no container left keeps no namespace, veth, rule or Traefik."""
        if not any(self._meta(int(p.name)) for p in self._ctids()):
            self._teardown()

    def _ctids(self) -> list[Path]:
        return [p for p in self.lxcpath.iterdir() if p.name.isdigit()] if self.lxcpath.is_dir() else []

    @classmethod
    def from_site(cls, site: Site, **options) -> LxcDriver:
        d, n = site.driver, site.network
        if d.kind != "lxc":
            raise PermanentError("driver.kind: LxcDriver needs `kind: lxc`")
        assert d.netns is not None and d.lxcpath is not None, "Site fills in both for an LXC site (spec/models.py)"
        cat = load_catalog()
        net = netns.NetPlan(
            ns=options.get("netns", d.netns), bridge=n.bridge, gateway=str(n.gateway),
            prefixlen=n.subnet.prefixlen, subnet=str(n.subnet), extra=(str(n.traefik.address),),
            nat=d.nat, mirror=d.mirror, security_mirror=d.security_mirror)
        lxcpath = options.get("lxcpath", d.lxcpath)
        # Traefik's dynamic files live with the site's containers: a host-wide directory (the
        # Proxmox Traefik host's network.traefik.dynamic_dir) would be shared by every site here.
        drv = cls(site=site.name, net=net, lxcpath=lxcpath,
                  cache_dir=options.get("cache_dir", d.cache_dir), log=options.get("log", _stderr),
                  secrets=options.get("secrets"), traefik_ip=str(n.traefik.address),
                  traefik_dir=options.get("traefik_dir", str(Path(lxcpath) / "_traefik" / "dynamic")),
                  runtime=site.user_template.runtime or "docker", bridge_filter=bridge_rules(site),
                  owner=options.get("owner"), models=tuple(model_plan.model_units(site, cat)))
        drv.join = bool(options.get("join", False))
        drv.site_spec = site
        return drv

    def bind_secrets(self, lookup: SecretLookup) -> None:
        """Admin passwords for the service recipes (the engine passes its secret store's `get`)."""
        self.secrets = lookup

    def bind_control(self, plane: ControlPlane) -> None:
        """The site file, state and key an aicommons service (the portal) runs against."""
        self.control = plane

    def traefik_target(self):
        """Where the engine writes Traefik's dynamic files: the local directory our Traefik watches."""
        from aicommons.drivers.targets import LocalDirTarget

        return LocalDirTarget(self.traefik.dynamic_dir) if self.traefik else None

    def info(self) -> DriverInfo:
        return DriverInfo("lxc", {"netns": self.ns, "lxcpath": str(self.lxcpath), "cache_dir": self.cache_dir})

    # ---- network ---------------------------------------------------------------------------

    def ensure_network(self) -> None:
        """The namespace, bridge and NAT, and Traefik at its address inside."""
        with self._net_lock:
            netns.ensure(self.net)
            if self.bridge_filter is not None:
                netns.load_bridge_filter(self.net, self.bridge_filter)
            if self.traefik:
                self.traefik.ensure()

    def ensure_template(self) -> Path:
        return template.ensure(self.cache_dir, self.net.mirror, self.net.security_mirror, log=self.log)

    def unavailable_packages(self) -> list[str]:
        return template.unavailable(template.template_dir(self.cache_dir, self.net.mirror, self.net.security_mirror))

    # ---- read back -------------------------------------------------------------------------

    def _dir(self, ctid: int) -> Path:
        return self.lxcpath / str(int(ctid))

    def _meta(self, ctid: int) -> dict | None:
        try:
            meta = config.meta_of((self._dir(ctid) / "config").read_text())
        except OSError:
            return None
        return meta if meta and meta.get("site") == self.site else None

    def _lxc(self, tool: str, ctid: int, *args: str, **kw):
        return netns.nsrun(self.ns, [tool, "-P", str(self.lxcpath), "-n", str(int(ctid)), *args], **kw)

    def _status(self, ctid: int) -> Status:
        if not netns.exists(self.ns):
            return "stopped"  # no namespace, no monitor: nothing can be running
        proc = self._lxc("lxc-info", ctid, "-s", "-H", check=False)
        return "running" if proc.stdout.decode().strip() == "RUNNING" else "stopped"

    def _init_pid(self, ctid: int) -> int | None:
        proc = self._lxc("lxc-info", ctid, "-p", "-H", check=False)
        text = proc.stdout.decode().strip()
        return int(text) if text.isdigit() else None

    def get(self, ctid: int) -> ContainerState | None:
        meta = self._meta(ctid)
        if meta is None:
            return None
        status = self._status(ctid)
        if status == "running" and meta["role"] == "shared" and (not self._services_up(ctid)
                                                                 or self._stale_runtime(ctid, meta)):
            # A shared container whose service is down (or, for the portal, runs an older runtime
            # layer than this checkout's) reads as stopped, so the next apply "starts" it: start()
            # and wait_ready() bring the service back by its recipe.
            status = "stopped"
        memory, cores = limits.read(self.ns, ctid) if status == "running" else (None, None)
        return ContainerState(
            ctid=int(ctid), hostname=meta["hostname"], status=status, ip=meta["ip"],
            memory_mb=memory or meta["memory_mb"], cores=cores or meta["cores"], disk_gb=meta["disk_gb"],
            tags=("aicommons", meta["role"], f"site-{self.site}"))

    def usage(self, ctids: Iterable[int]) -> dict[int, Usage]:
        """Running containers' memory and CPU now, from the cgroups the driver put them in (limits.py)."""
        ours = [int(c) for c in ctids if self._meta(int(c)) is not None]  # no lxc-info each: the cgroups say
        return {c: Usage(memory_mb=mem, memory_limit_mb=limit, cpu_percent=cpu)
                for c, (mem, limit, cpu) in limits.usage(self.ns, ours).items()}

    def on_its_host(self) -> bool:
        return self.lxcpath.is_dir()

    def list_containers(self) -> list[ContainerState]:
        if not self.lxcpath.is_dir():
            return []
        check_owner(self.lxcpath, self.ns, self.owner)  # another site's containers are not ours to plan
        states = [self.get(int(p.name)) for p in sorted(self.lxcpath.iterdir()) if p.name.isdigit()]
        return [s for s in states if s is not None]

    # ---- lifecycle -------------------------------------------------------------------------

    def create(self, container: Container) -> None:
        d = self._dir(container.ctid)
        cfg = d / "config"
        if cfg.exists() and self._meta(container.ctid) is None:
            raise PermanentError(
                f"container {container.ctid} exists in {self.lxcpath} but was not made by site "
                f"{self.site!r}; aicommons leaves it alone — move it or choose another driver.lxcpath")
        tdir = self.ensure_template()
        if self._meta(container.ctid) is None:
            self._make_dirs(d)
            self._seed_files(container, d / "delta")
        self._write_config(container, tdir)
        template.register_user(tdir, container.ctid, cfg)

    def _make_dirs(self, d: Path) -> None:
        """The overlay's upper dir belongs to the container's root (the site's range); `work` is
        the overlay's, `lower` and `rootfs` are mount points (prestart.py)."""
        d.mkdir(parents=True, exist_ok=True)
        for p in [d, *d.parents]:  # LXC mounts the rootfs as the container's root: it must get there
            if not os.stat(p).st_mode & 0o001:
                raise PermanentError(f"driver.lxcpath: {p} is not searchable by others (mode "
                                     f"{os.stat(p).st_mode & 0o777:o}), and the containers' root (host uid "
                                     f"{self.idmap_base}) must pass it; `chmod o+x {p}` or choose another lxcpath")
        for name in ("delta", "work", "lower", "rootfs"):
            (d / name).mkdir(parents=True, exist_ok=True)
        os.chown(d / "delta", self.idmap_base, self.idmap_base)

    def _write_config(self, c: Container, tdir: Path) -> bool:
        cfg = self._dir(c.ctid) / "config"
        mounts: list = (apps.layer_mounts(c, self.cache_dir, self.log) if c.role == "user" and self.runtime == "native"
                        else aicservice.mounts(c, self.cache_dir, self.control, self.log, self._dir(c.ctid) / "control"))
        if c.role == "shared" and model_plan.SERVICE in c.services:
            mounts = models.layer_mounts(self.models, self.cache_dir, self.log)
        cpus = self._cpus(c)
        text = config.render(c, site=self.site, bridge=self.net.bridge, lower=str(tdir / "rootfs"),
                             rootfs=str(self._dir(c.ctid) / "rootfs"), idmap_base=self.idmap_base, ns=self.ns,
                             legacy_cgroups=limits.legacy(), mounts=mounts, cpus=cpus)
        if cfg.exists() and cfg.read_text() == text:
            return False
        tmp = cfg.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.rename(cfg)
        return True

    def _cpus(self, c: Container) -> str:
        return limits.pinned_cpus(c.cores) if c.role == "shared" and model_plan.SERVICE in c.services else ""

    def _limit_keys(self, c: Container) -> list[tuple[str, str]]:
        return config.cgroup_keys(c, legacy_cgroups=limits.legacy(), cpus=self._cpus(c))

    def read_limits(self, containers: Iterable[Container]) -> list[LimitReading]:
        """Each running container's limits as the kernel holds them (its cgroup files, read on the
        host), against what the plan asks: a limit LXC did not apply, or one changed by hand since,
        reads as not ok. Containers not running (no cgroup) are another check's business."""
        out = []
        for c in containers:
            if self._meta(c.ctid) is None or not limits.key_file(self._limit_keys(c)[0][0], self.ns, c.ctid).exists():
                continue
            out += [LimitReading(c.ctid, f, wanted, found, ok)
                    for f, wanted, found, ok in limits.read_back(self.ns, c.ctid, self._limit_keys(c))]
        return out

    def _check_limits(self, ctid: int, meta: dict) -> None:
        """After lxc-start: the kernel holds the limits the config asked for, or the start failed."""
        bad = [r for r in self.read_limits([self._container_of(ctid, meta)]) if not r.ok]
        if bad:
            raise PermanentError(f"container {ctid} started without the limits the plan asks: "
                                 + "; ".join(f"{r.key}: wanted {r.wanted}, found {r.found}" for r in bad)
                                 + f" (see {self._dir(ctid) / 'start.log'}; `aicommons doctor` checks the host)")

    def _seed_files(self, c: Container, upper: Path) -> None:
        """Files written into the overlay's upper dir before first boot (no one is using it yet)."""
        (upper / "etc").mkdir(parents=True, exist_ok=True)
        (upper / "etc/hostname").write_text(c.hostname + "\n")
        hosts = ["127.0.0.1 localhost", f"{c.ip} {c.hostname}"]
        if self.net.nat:
            host, addrs = netns.mirror_addresses(self.net.mirror)
            hosts += [f"{a} {host}" for a in addrs[:1]]  # no DNS inside: apt reaches the mirror by name
        (upper / "etc/hosts").write_text("\n".join(hosts) + "\n")
        for p in (upper / "etc", upper / "etc/hostname", upper / "etc/hosts"):
            os.chown(p, self.idmap_base, self.idmap_base)  # root's inside

    def update(self, container: Container) -> None:
        meta = self._meta(container.ctid)
        if meta is None:
            raise PermanentError(f"container {container.ctid} does not exist; create it first")
        cfg = self._dir(container.ctid) / "config"
        mounts_before = apps.mount_lines(cfg.read_text())
        changed = self._write_config(container, self.ensure_template())
        if self._status(container.ctid) != "running":
            return
        if (meta["ip"] != container.ip or meta["hostname"] != container.hostname
                or apps.mount_lines(cfg.read_text()) != mounts_before):  # mounts are set at start
            self.stop(container.ctid)
            self.start(container.ctid)
        elif changed or not all(r.ok for r in self.read_limits([container])):
            # the config has the new limits for the next start; these are the same, live (also
            # when only the kernel's differ: a limit changed by hand)
            limits.write(self.ns, container.ctid, self._limit_keys(container))

    def start(self, ctid: int) -> None:
        meta = self._meta(ctid)
        if meta is None:
            raise PermanentError(f"container {ctid} does not exist; create it first")
        self.ensure_network()
        if aicservice.runs_aicommons(meta):  # the portal: started with this checkout's runtime layer
            if self._status(ctid) == "running" and self._stale_runtime(ctid, meta):
                self.stop(ctid)
            self._write_config(apps._container_of(self, ctid, tuple(meta["services"])), self.ensure_template())
        if self._status(ctid) == "running":
            return
        problem = template.check(template.template_dir(self.cache_dir, self.net.mirror, self.net.security_mirror))
        if problem:
            raise PermanentError(f"cannot start container {ctid}: {problem}. Re-run to rebuild it "
                                 "(after `aicommons down` if containers still use it)")
        if config.privileged((self._dir(ctid) / "config").read_text()):
            raise PermanentError(f"container {ctid} is privileged (made by an older aicommons); `aicommons apply` "
                                 "converts it to unprivileged, keeping its data")
        log = self._dir(ctid) / "start.log"
        limits.remove(self.ns, ctid)  # LXC makes the container's cgroups itself and refuses existing ones
        d = self._dir(ctid)
        binds = ([(real, staged) for real, staged, _in, _how in
                  aicservice.control_binds(self.control, d / "control")]
                 if self.control is not None and aicservice.runs_aicommons(meta) else [])
        spec = {"cgroups": limits.mounts(), "binds": binds,
                "rootfs": {"lower": meta["lower"], "lower_mnt": str(d / "lower"), "upper": str(d / "delta"),
                           "work": str(d / "work"), "target": str(d / "rootfs"), "base": self.idmap_base}}
        proc = run(["ip", "netns", "exec", self.ns, sys.executable, "-m", "aicommons.drivers.lxc.prestart",
                    json.dumps(spec), "--", "lxc-start", "-P", str(self.lxcpath), "-n", str(int(ctid)),
                    "-l", "ERROR", "-o", str(log)], check=False, timeout=120)
        if proc.returncode != 0:
            lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
            # the first errors say why; lxc_start.c's closing lines only say that it failed
            why = [ln for ln in lines if "lxc_start.c:main" not in ln][:3] or lines[-3:]
            raise TemporaryError(f"lxc-start of container {ctid} failed: "
                                 f"{' | '.join(why) or proc.stderr.decode(errors='replace').strip()}", delay=2)
        self._check_limits(ctid, meta)

    def _stale_runtime(self, ctid: int, meta: dict) -> bool:
        try:
            return aicservice.stale_runtime(meta, (self._dir(ctid) / "config").read_text())
        except OSError:
            return False

    def stop(self, ctid: int) -> None:
        if self._meta(ctid) is None or self._status(ctid) != "running":
            return
        # A clean shutdown first (systemd stops PostgreSQL properly), then a kill.
        if self._lxc("lxc-stop", ctid, "-t", "30", check=False, timeout=60).returncode != 0:
            self._lxc("lxc-stop", ctid, "-k", check=False, timeout=30)
        if self._status(ctid) == "running":
            raise TemporaryError(f"container {ctid} did not stop", delay=2)

    def archive(self, ctid: int) -> Path:
        """Keep a stopped container's own data (its overlay upper dir and config) before destroy."""
        d = self._dir(ctid)
        if self._meta(ctid) is None:
            raise PermanentError(f"container {ctid} was not made by site {self.site!r}; not archiving it")
        if self._status(ctid) == "running":
            raise PermanentError(f"container {ctid} is running; stop it before archiving")
        dest_dir = self.lxcpath.parent / "archive"
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / f"{self.site}-{int(ctid)}-{time.strftime('%Y%m%dT%H%M%S')}.tar.gz"
        run(["tar", "-C", str(d), "-czf", str(dest), "config", "delta"], timeout=1800)
        dest.chmod(0o600)
        self.log(f"container {ctid}: data archived to {dest}")
        return dest

    def audit_host(self, ctids: Iterable[int]) -> list[HostProbe]:
        """`audit isolation`'s host section: from each running container, as root, try the host (hostaudit.py)."""
        return hostaudit.run(self, [c for c in ctids if self._meta(int(c)) is not None])

    def audit_network(self, resolved) -> list[HostProbe]:
        """`audit isolation`'s network section: the bridge filter's doors from every running container (netaudit.py)."""
        running = [c.ctid for c in resolved.containers if self._meta(c.ctid) is not None and self._status(c.ctid) == "running"]
        return netaudit.run(self, resolved, running)

    def compose_skip_reason(self, tenant) -> str | None:
        """Why a user's Docker apps cannot start here. This driver installs only what Debian's
        mirror provides, and the apps are images from registries outside it."""
        return ("its apps are container images from registries outside Debian's mirror, which this "
                "driver does not fetch; the Proxmox driver runs the same bundle")

    def run_native(self, t, root: str, files: dict) -> str:
        """Run a user's native bundle (pushed to `root`): system users, data dirs, units, started in
        parallel; returns when every app answers its health check (see apps.py)."""
        return apps.run_native(self, t, root, files)

    def skipped_services(self, resolved) -> dict[str, str]:
        """Services of the site this host cannot install (recipe needs downloads), with the reason.
        The engine plans no tenant slices for them."""
        return services.skipped_services(resolved)

    def destroy(self, ctid: int) -> None:
        d = self._dir(ctid)
        if not d.exists():
            return
        if self._meta(ctid) is None:
            raise PermanentError(f"container {ctid} in {self.lxcpath} was not made by site {self.site!r}; not touching it")
        if self._status(ctid) == "running":
            self._lxc("lxc-stop", ctid, "-k", check=False, timeout=30)
        busy = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                if line.split()[1].startswith(str(d))]
        if busy:
            raise TemporaryError(f"container {ctid} still has mounts ({', '.join(busy)}); retry", delay=2)
        limits.remove(self.ns, ctid)
        shutil.rmtree(d)
        for reg in Path(self.cache_dir, "templates").glob(f"*/users/{int(ctid)}"):
            reg.unlink(missing_ok=True)
        # The namespace, NAT and Traefik outlive the last container: close_network() removes them
        # once the whole apply is done (parallel deletes never race to tear down).

    def _teardown(self) -> None:
        if self.traefik:
            self.traefik.stop()
            shutil.rmtree(self.traefik.state_dir, ignore_errors=True)
        netns.teardown(self.net)
        hostcheck.release(self.ns, log=self.log)
        if self.owner is None or read_owner(self.lxcpath) == self.owner:  # ours, or no site named
            (self.lxcpath / OWNER_FILE).unlink(missing_ok=True)
        try:
            self.lxcpath.rmdir()  # only if empty: someone else's containers stay
        except OSError:
            pass

    # ---- inside ----------------------------------------------------------------------------

    def exec(self, ctid: int, argv: list[str], *, stdin: bytes | None = None,
             timeout: float = 600) -> ExecResult:
        if self._status(ctid) != "running":
            raise PermanentError(f"container {ctid} is not running; start it before running commands in it")
        proc = self._lxc("lxc-attach", ctid, "--clear-env", "-v", f"PATH={PATH}", "-v", "LANG=C.UTF-8",
                         "--", *argv, input=stdin, check=False, timeout=timeout)
        return ExecResult(proc.returncode, proc.stdout.decode(errors="replace"),
                          proc.stderr.decode(errors="replace"))

    def sh(self, ctid: int, script: str, *, stdin: bytes | None = None, timeout: float = 600) -> str:
        """Run a shell script inside; raise with its stderr if it fails."""
        res = self.exec(ctid, ["sh", "-ec", script], stdin=stdin, timeout=timeout)
        if not res.ok:
            raise PermanentError(f"in container {ctid}: {script.splitlines()[0][:80]!r} failed "
                                 f"(exit {res.rc}): {(res.stderr or res.stdout).strip()[-800:]}")
        return res.stdout

    def push(self, ctid: int, data: bytes, dest: str, mode: int = 0o644) -> None:
        if not dest.startswith("/"):
            raise PermanentError(f"push: destination {dest!r} must be an absolute path")
        q = shlex.quote(dest)
        # Written beside the target and renamed: a reader never sees half a file.
        self.sh(ctid, f'mkdir -p "$(dirname {q})"; umask 077; cat > {q}.aic-tmp; '
                      f"chmod {mode:o} {q}.aic-tmp; mv {q}.aic-tmp {q}", stdin=data)

    def wait_ready(self, ctid: int, timeout: float = 120) -> None:
        meta = self._meta(ctid)
        if meta is None:
            raise PermanentError(f"container {ctid} does not exist")
        deadline = time.monotonic() + timeout
        last = "not running"
        while time.monotonic() < deadline:
            if self._status(ctid) == "running":
                res = self.exec(ctid, ["sh", "-c", "systemctl is-system-running; ip -4 -o addr show eth0"],
                                timeout=30)
                state = res.stdout.split("\n", 1)[0].strip()
                if state in ("running", "degraded") and f" {meta['ip']}/" in res.stdout:
                    self._ensure_services(ctid, meta)
                    return
                last = f"systemd is {state or 'not answering'}"
            time.sleep(0.5)
        raise TemporaryError(f"container {ctid} not ready after {timeout:.0f}s ({last})", delay=5)

    def _ensure_services(self, ctid: int, meta: dict) -> None:
        """Shared containers: install and start their services by catalog recipe (see services.py)."""
        if meta["role"] != "shared":
            return
        if self.secrets is None:
            self.log(f"container {ctid}: services not installed (the driver was given no secrets)")
            return
        cat = load_catalog()
        for name in meta.get("services", []):
            svc = cat.services.get(name)
            if svc is None:
                continue
            c = Container(ctid=int(ctid), ip=meta["ip"], prefixlen=self.net.prefixlen, gateway=self.net.gateway,
                          hostname=meta["hostname"], role="shared", name=meta["name"], services=(name,),
                          phase=0, memory_mb=meta["memory_mb"], cores=meta["cores"], disk_gb=meta["disk_gb"],
                          traefik_file="")
            out = services.ensure(self, c, svc, self.secrets)
            self.outcomes[name] = out
            (self._dir(ctid) / f"service-{name}.json").write_text(json.dumps(asdict(out)))
            if out.status == "skipped":
                self.log(f"{name} (CT {ctid}): skipped — {out.reason}")
            elif out.status == "failed":
                raise TemporaryError(f"{name} (CT {ctid}) did not come up: {out.reason}", delay=5)
            else:
                self.log(f"{name} (CT {ctid}): running{' ' + out.reason if out.reason else ''}")

    def _services_up(self, ctid: int) -> bool:
        units = [u for o in self.service_outcomes(ctid)
                 if o.status != "skipped" and (u := services.unit_of(o.service))]
        if not units:
            return True
        try:
            return self.exec(ctid, ["systemctl", "is-active", "--quiet", *units], timeout=30).ok
        except PermanentError:  # stopped between the status read and this check (a parallel delete)
            return False

    def service_outcomes(self, ctid: int | None = None) -> list[ServiceOutcome]:
        """What each shared service's recipe did last (installed / skipped with reason / failed)."""
        found = []
        for f in sorted(self.lxcpath.glob(f"{'*' if ctid is None else int(ctid)}/service-*.json")):
            try:
                found.append(ServiceOutcome(**json.loads(f.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return found

    # ---- the whole site --------------------------------------------------------------------

    def down(self) -> list[int]:
        """Destroy every container of this site, then the namespace, host veth and rules."""
        gone = []
        for st in self.list_containers():
            self.destroy(st.ctid)
            gone.append(st.ctid)
        self._teardown()
        return gone
