"""Which node each new container goes to. Pure: capacities in, assignments (or a refusal) out.

Committed resources count, not momentary use: a node's free memory is its total minus the
memory of every guest already on it (running or not) and a reserve for the host itself; cores
likewise, times an allowed overcommit ratio. Rules, in order:
1. a pinned container goes to its node (refused if it does not fit there);
2. GPU `required` only on GPU nodes; GPU `optional` prefers GPU nodes; both are placed before
   everything else, so the GPU nodes' room goes to them first;
3. user containers (cloned) only on nodes that hold a template, unless the template is on shared storage;
4. among the allowed nodes, the one with the most free memory (spreads load, keeps big holes);
   for cloned containers, first the node with the fewest clones queued: a template clones one at
   a time, so even queues finish soonest.
Big containers are placed first, so a plan that fits is not refused for the order it came in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aicommons.errors import PermanentError


@dataclass
class NodeCapacity:
    name: str
    mem_mb: int  # total
    cores: int  # total
    used_mem_mb: int = 0  # committed by existing guests
    used_cores: int = 0
    gpu: bool = False
    has_template: bool = True
    clones: int = 0  # clones assigned here in this placement (each node's template clones one at a time)

    def free(self, reserve_mb: int, cpu_ratio: float) -> tuple[int, float]:
        return self.mem_mb - reserve_mb - self.used_mem_mb, self.cores * cpu_ratio - self.used_cores


@dataclass(frozen=True)
class Want:
    ctid: int
    label: str
    mem_mb: int
    cores: int
    pinned: str | None = None
    gpu: str = "none"  # none | optional | required
    needs_template: bool = False


@dataclass
class Placement:
    nodes: dict[str, NodeCapacity]
    reserve_mb: int = 2048
    cpu_ratio: float = 1.0
    assigned: dict[int, str] = field(default_factory=dict)

    def _fits(self, n: NodeCapacity, w: Want) -> bool:
        mem, cores = n.free(self.reserve_mb, self.cpu_ratio)
        return mem >= w.mem_mb and cores >= w.cores

    def _allowed(self, w: Want) -> list[NodeCapacity]:
        nodes = list(self.nodes.values())
        if w.pinned:
            nodes = [n for n in nodes if n.name == w.pinned]
        if w.gpu == "required":
            nodes = [n for n in nodes if n.gpu]
        if w.needs_template:
            nodes = [n for n in nodes if n.has_template]
        return nodes

    def _why_not(self, w: Want) -> str:
        if w.pinned and w.pinned not in self.nodes:
            return f"it is pinned to {w.pinned}, which is not a node of this cluster"
        allowed = self._allowed(w)
        if not allowed:
            need = "a GPU node" if w.gpu == "required" else "a node with the user template"
            return f"it needs {need} and there is none" + (f" among its pinned node {w.pinned}" if w.pinned else "")
        best = max(allowed, key=lambda n: n.free(self.reserve_mb, self.cpu_ratio))
        mem, cores = best.free(self.reserve_mb, self.cpu_ratio)
        short = []
        if mem < w.mem_mb:
            short.append(f"{w.mem_mb - mem} MiB memory")
        if cores < w.cores:
            short.append(f"{w.cores - cores:g} cores")
        return (f"the roomiest allowed node, {best.name}, has {max(mem, 0)} MiB and {max(cores, 0):g} cores free: "
                f"short by {' and '.join(short)}")

    def place(self, wants: list[Want]) -> dict[int, str]:
        """Assign every want to a node, or raise PermanentError listing all that do not fit."""
        order = sorted(wants, key=lambda w: (w.pinned is None, w.gpu != "required", w.gpu != "optional",
                                             -w.mem_mb, -w.cores, w.ctid))
        problems: list[str] = []
        short_mem = short_cores = 0
        for w in order:
            candidates = [n for n in self._allowed(w) if self._fits(n, w)]
            if w.gpu == "optional" and any(n.gpu for n in candidates):
                candidates = [n for n in candidates if n.gpu]
            if not candidates:
                problems.append(f"{w.label} (CT {w.ctid}, {w.mem_mb} MiB, {w.cores} cores): {self._why_not(w)}")
                short_mem += w.mem_mb
                short_cores += w.cores
                continue
            best = min(candidates, key=lambda n: (n.clones if w.needs_template else 0,
                                                  *(-x for x in n.free(self.reserve_mb, self.cpu_ratio)), n.name))
            best.clones += int(w.needs_template)
            best.used_mem_mb += w.mem_mb
            best.used_cores += w.cores
            self.assigned[w.ctid] = best.name
        if problems:
            raise PermanentError(
                f"the plan does not fit the cluster: {len(problems)} container(s) cannot be placed, needing "
                f"{short_mem} MiB memory and {short_cores} cores more than the nodes have free "
                f"(host reserve {self.reserve_mb} MiB per node, cpu ratio {self.cpu_ratio:g}):\n  "
                + "\n  ".join(problems)
                + "\n  fix: add a node or memory, lower resources in site.yaml, or unpin containers")
        return dict(self.assigned)
