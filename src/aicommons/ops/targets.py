"""Plan address -> where it is really reached (an SSH tunnel, a loopback test server).

`status`, `backup` and `restore` take the same mapping, e.g. `10.0.5.103:6379=127.0.0.1:16379`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from aicommons.errors import PermanentError


def retarget(host: str, port: int, targets: Mapping[str, str]) -> tuple[str, int]:
    actual = targets.get(f"{host}:{port}")
    if actual is None:
        return host, port
    h, _, p = actual.rpartition(":")
    return h, int(p)


def parse_targets(pairs: list[str] | None, path: Path | None) -> dict[str, str]:
    """`--target PLAN=ACTUAL` options and/or a YAML mapping file, checked."""
    out: dict[str, str] = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PermanentError(f"--targets {path}: cannot read it ({exc}); give a YAML mapping") from None
        if not isinstance(data, dict):
            raise PermanentError(f"--targets {path}: expected a mapping of 'host:port: host:port'")
        out.update({str(k): str(v) for k, v in data.items()})
    for pair in pairs or []:
        plan, sep, actual = pair.partition("=")
        if not sep or ":" not in plan or ":" not in actual:
            raise PermanentError(f"--target {pair!r}: write PLAN_HOST:PORT=ACTUAL_HOST:PORT")
        out[plan] = actual
    for k, v in out.items():
        if not v.rpartition(":")[2].isdigit():
            raise PermanentError(f"target {k} -> {v!r}: the port must be a number")
    return out
