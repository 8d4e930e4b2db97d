"""Placement rules for the Proxmox driver (pure: capacities in, nodes out). Nothing simulated."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicommons.drivers.proxmox.placement import NodeCapacity, Placement, Want
from aicommons.errors import PermanentError


def cluster(gpu=("c",), mem=65536, cores=32, templates=("a", "b", "c")):
    return {n: NodeCapacity(n, mem, cores, gpu=n in gpu, has_template=n in templates) for n in ("a", "b", "c")}


def test_spreads_clones_evenly_over_the_templates():
    wants = [Want(200 + i, f"u{i}", 8192, 4, needs_template=True) for i in range(6)]
    got = Placement(cluster(), reserve_mb=0).place(wants)
    assert sorted(got.values()) == ["a", "a", "b", "b", "c", "c"]


def test_gpu_work_gets_the_gpu_node_first_whatever_the_order():
    caps = cluster(mem=32768)
    wants = [Want(200 + i, f"u{i}", 16384, 2) for i in range(5)] + [Want(100, "ollama", 32768, 8, gpu="optional")]
    got = Placement(caps, reserve_mb=0).place(wants[:4] + wants[5:])  # 4 users + ollama: all fit
    assert got[100] == "c" and "c" not in [got[w.ctid] for w in wants[:4]]


@pytest.mark.parametrize("gpu,nodes,expect", [
    ("required", {"c"}, "c"),
    ("optional", {"c"}, "c"),
    ("optional", set(), "a"),  # no GPU anywhere: optional runs on CPU
    ("none", {"a", "b", "c"}, "a"),
])
def test_gpu_rules(gpu, nodes, expect):
    caps = cluster(gpu=tuple(nodes))
    caps["b"].used_mem_mb, caps["c"].used_mem_mb = 1024, 2048  # a is the roomiest node
    got = Placement(caps, reserve_mb=0).place([Want(100, "ollama", 32768, 8, gpu=gpu)])
    assert got[100] == expect


def test_gpu_required_without_gpu_node_is_refused():
    with pytest.raises(PermanentError) as e:
        Placement(cluster(gpu=()), reserve_mb=0).place([Want(150, "comfyui", 16384, 4, gpu="required")])
    assert "GPU node" in str(e.value)


def test_pinned_and_template_constraints():
    caps = cluster(templates=("a",))
    got = Placement(caps, reserve_mb=0).place([
        Want(102, "postgres", 8192, 4, pinned="b"),
        Want(200, "u1", 8192, 4, needs_template=True),
    ])
    assert got == {102: "b", 200: "a"}
    with pytest.raises(PermanentError) as e:
        Placement(cluster(templates=("a",)), reserve_mb=0).place([Want(201, "u2", 8192, 4, pinned="b", needs_template=True)])
    assert "user template" in str(e.value)


def test_refusal_says_by_how_much():
    caps = cluster(mem=16384, cores=8)
    wants = [Want(200 + i, f"u{i}", 8192, 4) for i in range(7)]  # 6 fit (2 per node), 1 does not
    with pytest.raises(PermanentError) as e:
        Placement(caps, reserve_mb=0).place(wants)
    text = str(e.value)
    assert "1 container(s) cannot be placed" in text and "8192 MiB memory and 4 cores more" in text
    assert "short by 8192 MiB memory and 4 cores" in text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(256, 40000), st.integers(1, 16)), min_size=1, max_size=40),
       st.integers(0, 4096))
def test_never_overcommits(sizes, reserve):
    caps = cluster(mem=131072, cores=48)
    wants = [Want(1000 + i, f"c{i}", m, c) for i, (m, c) in enumerate(sizes)]
    p = Placement(caps, reserve_mb=reserve)
    try:
        got = p.place(wants)
    except PermanentError:
        got = p.assigned  # what was placed before the refusal must still fit
    for name in caps:
        placed = [w for w in wants if got.get(w.ctid) == name]
        assert sum(w.mem_mb for w in placed) <= 131072 - reserve
        assert sum(w.cores for w in placed) <= 48
