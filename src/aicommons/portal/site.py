"""The portal's window on the site: the resolved site, live status, containers, backups, audit.

Every number comes from the functions the CLI uses (plan.resolve with the state's held slots,
ops.status's sweep, the driver's read-back, the backup repository, the recorded audit). What is
costly is cached and invalidated by what it depends on: the resolved site by site.yaml's
mtime/size and the state's serial; the status sweep by age (`refresh_seconds`).

No request waits on the compute driver (issue 23: with the Proxmox API unreachable, three page
loads stalled `/healthz` for 47 s): containers and their use are read by the background
refresher started from the app's lifespan, in a worker thread bounded by `status_timeout`, and
requests read what it last got. A read that hangs is left to finish on its own; the next round
starts only once it has.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

from aicommons.catalog import load_catalog
from aicommons.drivers.base import Closes, ContainerState, HostLocal, ReportsUsage
from aicommons.plan.model import ResolvedSite
from aicommons.portal.config import PortalConfig

log = logging.getLogger("aicommons.portal")


class SiteView:
    def __init__(self, cfg: PortalConfig, driver=None):
        from aicommons.engine.api import open_state

        self.cfg = cfg
        self.site_file = Path(cfg.site_file)
        self.state = open_state(self.site_file, cfg.state_path)
        self._driver = driver
        self._resolved: ResolvedSite | None = None
        self._resolved_key: tuple[int, int, int] | None = None
        self._mu = threading.Lock()
        self._status: tuple[float, int, list] | None = None  # (when, verdict, results)
        self.sweep_ms: float | None = None  # how long the last sweep took
        self._sweep_lock = asyncio.Lock()
        self.catalog = load_catalog()
        self._containers: dict[int, ContainerState] = {}
        self._usage: dict = {}
        self.driver_read_at: float | None = None  # when the driver last answered (None: not yet)
        self.sees_containers = True  # False: the driver cannot see them from here (drivers/base.HostLocal)
        self._driver_busy = threading.Lock()  # held by the read in flight (a hung one included)
        self._generation = 0  # bumped by every change (invalidate_status)
        self._status_gen = 0  # the generation the last sweep started in
        self._read_gen = -1  # the generation the driver read in flight (or last) started in

    def close(self) -> None:
        if isinstance(self._driver, Closes):
            self._driver.close()
        self.state.close()

    # ---- the site --------------------------------------------------------------------------

    def resolved(self):
        """The resolved site with the state's held slots (what `plan` resolves), cached."""
        from aicommons.plan import resolve
        from aicommons.spec import load_site

        st = self.site_file.stat()
        key = (st.st_mtime_ns, st.st_size, self.state.serial())
        with self._mu:
            if key != self._resolved_key:
                site, index = load_site(self.site_file)
                self._resolved = resolve(site, held=self.state.held_slots(), index=index)
                self._resolved_key = key
            return self._resolved

    @property
    def driver(self):
        if self._driver is None:
            from aicommons.engine.api import default_driver

            self._driver = default_driver(self.resolved().site, self.site_file)
        return self._driver

    def secrets(self):
        from aicommons.engine.api import key_source

        return self.state.secrets(key_source(self.resolved().site, self.state, self.site_file))

    # ---- live status -----------------------------------------------------------------------

    async def status(self, fresh: bool = False) -> tuple[float, int, list]:
        """(when, verdict, results) of the last sweep; a new one when asked, when there is none (or a
        change invalidated it), or when the background sweeper has fallen behind."""
        from aicommons.ops.site import existing_only
        from aicommons.ops.status import status_async

        async with self._sweep_lock:  # one sweep at a time; waiters reuse its result
            stale = 2 * max(1.0, self.cfg.refresh_seconds) + self.cfg.status_timeout  # the sweeper is late
            if (fresh or self._status is None or self._status_gen != self._generation
                    or time.time() - self._status[0] > stale):
                gen = self._generation
                await self.refresh_driver()
                r = self.resolved()
                t0 = time.perf_counter()
                code, results = await status_async(
                    r, secrets=existing_only(self.secrets()), targets=self.cfg.targets,
                    timeout=self.cfg.status_timeout, base_dir=self.site_file.resolve().parent,
                    inside_site=self.cfg.inside_site)
                self.sweep_ms = (time.perf_counter() - t0) * 1000
                self._status, self._status_gen = (time.time(), code, results), gen
            return self._status

    async def keep_fresh(self) -> None:
        """The background sweeper (started by the app): pages read its last result and never
        wait for a sweep unless there is none yet or a change just invalidated it."""
        while True:
            try:
                await self.status(fresh=True)
            except Exception as exc:  # noqa: BLE001 - the next round tries again; pages say how old it is
                log.warning("status sweep failed: %s", exc)
            await asyncio.sleep(max(1.0, self.cfg.refresh_seconds))

    async def refresh_driver(self) -> None:
        """Read containers and their use in a worker thread, at most `status_timeout` long. A read
        still running is not started again (a hung API), except that one begun before the last
        change is waited for (as long) and followed by a new one: else a user just added has apps
        that answer and a container the portal has not seen yet."""
        deadline = time.monotonic() + self.cfg.status_timeout
        while not self._driver_busy.acquire(blocking=False):
            if self._read_gen == self._generation or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.05)
        self._read_gen = self._generation

        def read() -> None:
            try:
                ctids = [t.ctid for t in self.resolved().tenants]
                containers = {c.ctid: c for c in self.driver.list_containers()}
                drv = self.driver
                self.sees_containers = not isinstance(drv, HostLocal) or drv.on_its_host()
                usage = drv.usage(ctids) if isinstance(drv, ReportsUsage) else {}
                self._containers, self._usage, self.driver_read_at = containers, usage, time.time()
            finally:
                self._driver_busy.release()

        try:
            await asyncio.wait_for(asyncio.shield(asyncio.to_thread(read)),
                                   timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("the compute driver did not answer in %.0f s; pages show its last answer",
                        self.cfg.status_timeout)

    def invalidate_status(self) -> None:
        """After a change (a user added, a container restarted): the next read sweeps again, and
        a sweep or driver read begun before it does not count as fresh."""
        self._generation += 1
        self._status = None

    # ---- containers, backups, audit --------------------------------------------------------

    def containers(self) -> dict[int, ContainerState]:
        """The driver's last answer (the background refresher reads it; a request never waits)."""
        return dict(self._containers)

    def usage(self, ctids: list[int]) -> dict:
        """{ctid: Usage} of the driver's last answer (nothing when it cannot read use)."""
        return {c: self._usage[c] for c in ctids if c in self._usage}

    def backups(self) -> list:
        from aicommons.ops.site import backup_repo

        return backup_repo(self.site_file, self.resolved()).list()

    def last_backup(self, user: str, backups: list | None = None):
        """The newest backup that holds this user's data (a whole-site one or theirs alone)."""
        return next((m for m in (backups if backups is not None else self.backups())
                     if m.user in (None, user)), None)

    def suspended(self) -> set[str]:
        from aicommons.ops.users import suspended_users

        return suspended_users(self.state)

    def last_audit(self) -> dict | None:
        from aicommons.ops.users import last_audit

        return last_audit(self.state)
