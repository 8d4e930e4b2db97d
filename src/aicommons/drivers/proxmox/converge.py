"""Bring a set of planned containers to life on Proxmox, in parallel: create what is missing,
update what drifted, start what is stopped, wait until each answers.

The engine (aicommons.engine) does the same one step at a time; this is the driver's own bulk
path (used by its tests and benchmark): the whole plan is placed first, so a plan that does
not fit is refused before anything is created.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from aicommons.errors import AicError
from aicommons.plan.model import Container


@dataclass
class ConvergeReport:
    created: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


def _interleave(containers: list[Container], node_of: dict[int, str]) -> list[Container]:
    """Round-robin over nodes, so each node's template is cloning while the others are too."""
    by_node: dict[str, list[Container]] = defaultdict(list)
    for c in containers:
        by_node[node_of.get(c.ctid, "")].append(c)
    out: list[Container] = []
    queues = list(by_node.values())
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def converge(driver, containers: list[Container], *, workers: int = 8, ready_timeout: float = 120) -> ConvergeReport:
    report = ConvergeReport()
    have = {s.ctid: s for s in driver.list_containers()}
    missing = [c for c in containers if c.ctid not in have]
    placed = driver.place(missing)  # raises PermanentError, naming the shortfall, before any change

    def one(c: Container) -> None:
        state = have.get(c.ctid)
        if state is None:
            driver.create(c)
            report.created.append(c.ctid)
        elif driver.needs_update(c):
            driver.update(c)
            report.updated.append(c.ctid)
        if state is None or state.status != "running":
            driver.start(c.ctid)
            report.started.append(c.ctid)
        driver.wait_ready(c.ctid, timeout=ready_timeout)

    node_of = {**{s.ctid: s.node or "" for s in have.values()}, **placed}
    with ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(one, c): c for c in _interleave(list(containers), node_of)}
        for fut in as_completed(futures):
            exc = fut.exception()
            if exc is not None:
                if not isinstance(exc, AicError):
                    raise exc
                report.errors[futures[fut].ctid] = str(exc)
    return report
