"""Build site dicts for tests: the seed site as data, then small edits."""

from __future__ import annotations

import copy
from functools import cache

import yaml

from aicommons.spec.default import render_site_yaml


@cache
def _seed(users: int, driver: str) -> dict:
    return yaml.safe_load(render_site_yaml(users=users, driver=driver))


def seed_dict(users: int = 50, driver: str = "proxmox") -> dict:
    return copy.deepcopy(_seed(users, driver))


def set_path(data: dict, path: str, value) -> dict:
    """set_path(d, "services.ollama.address", "10.0.5.101"); list items as `users.3.name`."""
    parts = path.split(".")
    cur = data
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur.setdefault(p, {})
        if cur is None:
            raise KeyError(path)
    last = parts[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    elif value is _DELETE:
        cur.pop(last, None)
    else:
        cur[last] = value
    return data


_DELETE = object()
DELETE = _DELETE
