"""A guard the LXC tests load into the `aicommons` command (PYTHONPATH=tests/guard): any
connection to the site's subnets made from the host's network namespace is logged and refused.

Sees: Python sockets (the `socket.connect` audit event: redis-py, httpx, qdrant-client, ...),
libpq connections (psycopg's connect, checked by its conninfo host), and subprocesses whose
argv names a site address (psql, pg_dump, redis-cli, curl) unless run via `ip netns exec` or
from a thread that is inside the namespace. "Inside" is read per thread from /proc.
Active only when AICOMMONS_GUARD_NETS and AICOMMONS_GUARD_LOG are set.
"""

import ipaddress
import os
import re
import sys

_NETS = [ipaddress.ip_network(n) for n in os.environ.get("AICOMMONS_GUARD_NETS", "").split(",") if n]
_LOG = os.environ.get("AICOMMONS_GUARD_LOG")


def _ino(path: str) -> int:
    return os.stat(path).st_ino


def _outside() -> bool:
    return _ino("/proc/thread-self/ns/net") == _HOST


def _guarded(host) -> bool:
    try:
        ip = ipaddress.ip_address(str(host))
    except ValueError:
        return False
    return any(ip in n for n in _NETS)


def _violation(what: str) -> None:
    with open(_LOG, "a") as f:
        f.write(f"pid {os.getpid()}: {what}\n")
    raise OSError(f"guard: {what} from the host's network namespace")


def _hook(event, args):
    if event == "socket.connect":
        addr = args[1]
        if isinstance(addr, tuple) and _guarded(addr[0]) and _outside():
            _violation(f"connect to {addr[0]}:{addr[1]}")
    elif event == "subprocess.Popen":
        argv = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        argv = [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in argv]
        if argv[:3] == ["ip", "netns", "exec"] or os.path.basename(argv[0]) == "nsenter" or not _outside():
            return
        if any(_guarded(tok) for a in argv for tok in re.split(r"[\s=:@/,]+", a)):
            _violation(f"run {argv[:6]}")


def _guard_psycopg() -> None:
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return
    def check(conninfo, kwargs):
        params = conninfo_to_dict(conninfo, **kwargs)
        for host in str(params.get("host") or "").split(","):
            if _guarded(host) and _outside():
                _violation(f"libpq connect to {host}")

    real, areal = psycopg.Connection.connect.__func__, psycopg.AsyncConnection.connect.__func__

    def connect(cls, conninfo="", **kwargs):
        check(conninfo, kwargs)
        return real(cls, conninfo, **kwargs)

    async def aconnect(cls, conninfo="", **kwargs):
        check(conninfo, kwargs)
        return await areal(cls, conninfo, **kwargs)

    psycopg.Connection.connect = classmethod(connect)
    psycopg.AsyncConnection.connect = classmethod(aconnect)
    psycopg.connect = psycopg.Connection.connect  # the module's alias was bound at import


if _NETS and _LOG:
    _HOST = _ino("/proc/self/ns/net")
    sys.addaudithook(_hook)
    _guard_psycopg()
