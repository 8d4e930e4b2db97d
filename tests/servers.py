"""Real PostgreSQL 15 and Redis 7 servers for tests, started on loopback in temporary directories.

Nothing here is simulated: these are the Debian packages' binaries. Used by conftest fixtures
and by benchmarks.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path(os.environ.get("AICOMMONS_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_SUPERPASS = "test-superuser-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, grace: float = 10) -> None:
    """Terminate a server we started; kill it if it does not exit within `grace` seconds."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_port(port: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _as_postgres(argv: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


@dataclass
class PgServer:
    """A throwaway PostgreSQL cluster: superuser `postgres` with a password, scram auth on TCP."""

    dir: Path
    port: int
    host: str = "127.0.0.1"
    user: str = "postgres"
    password: str = PG_SUPERPASS

    @property
    def admin_dsn(self) -> str:
        return f"host={self.host} port={self.port} user={self.user} password={self.password} dbname=postgres"

    def ctl(self, *args: str) -> None:
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-w", *args])

    def stop(self) -> None:
        try:
            self.ctl("stop", "-m", "fast")
        except subprocess.CalledProcessError:
            pass

    def start(self) -> None:
        self.ctl("-l", str(self.dir / "log"), "start")
        _wait_port(self.port)

    def reload(self) -> None:
        self.ctl("reload")

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_postgres(port: int | None = None) -> PgServer:
    port = port or free_port()
    root = Path(tempfile.mkdtemp(prefix="aic-pg-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    pwfile = root / "pw"
    pwfile.write_text(PG_SUPERPASS + "\n")
    if os.geteuid() == 0:
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
    _as_postgres([str(PG_BIN / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "scram-sha-256",
                  "--pwfile", str(pwfile), "-E", "UTF8", "--locale=C", "--no-sync"])
    conf = root / "data" / "postgresql.conf"
    with conf.open("a") as f:
        f.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 300\n")
    srv = PgServer(dir=root, port=port)
    srv.start()
    return srv


@dataclass
class RedisServer:
    """A throwaway Redis with an ACL file: `default` is off; the admin is `admin`."""

    dir: Path
    port: int
    proc: subprocess.Popen | None = None
    host: str = "127.0.0.1"
    admin_user: str = "admin"
    admin_password: str = "test-redis-admin-password"
    extra: tuple[str, ...] = ()  # more `--name value` arguments (the rendered limits, for instance)
    argv: list[str] | None = None  # the whole command line instead (a rendered config file)

    @property
    def aclfile(self) -> Path:
        return self.dir / "users.acl"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv or ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--aclfile", str(self.aclfile),
             "--dir", str(self.dir), "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--logfile", str(self.dir / "redis.log"), *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# The redis.conf lines that bound what clients can do (the rest: paths, persistence, bind).
REDIS_LIMITS = ("maxmemory", "maxmemory-policy", "maxmemory-clients", "proto-max-bulk-len", "maxclients",
                "client-query-buffer-limit", "client-output-buffer-limit")


def redis_limits(resolved, memory_mb: int) -> tuple[str, ...]:
    """The rendered redis.conf's limits (render/services.redis_conf, for a Redis container of
    `memory_mb`) as redis-server arguments: a server started with them checks them too."""
    import dataclasses

    from aicommons.render.services import redis_conf

    c = next(c for c in resolved.containers if c.name == "redis")
    args: list[str] = []
    for line in redis_conf(resolved, dataclasses.replace(c, memory_mb=memory_mb)).splitlines():
        if line.split(" ", 1)[0] in REDIS_LIMITS:
            args += ["--" + line.split()[0], *line.split()[1:]]
    return tuple(args)


def start_redis_user(resolved, t, user_password: str, admin_password: str = "test-redis-admin-password"):
    """A user's own Redis server (redis.isolation=instance) from the rendered configuration
    (render/services.redis_user_conf), on loopback at a free port: returns (server, tenant with
    that port). Its ACL file is the one redis-users.sh writes first: default off, admin, the user."""
    import dataclasses

    from aicommons.render.services import redis_user_conf, tenant_acl

    port = free_port()
    t = dataclasses.replace(t, redis_port=port)
    root = Path(tempfile.mkdtemp(prefix=f"aic-redis-{t.user}-"))
    srv = RedisServer(dir=root, port=port, admin_password=admin_password)
    srv.aclfile.write_text(f"user default off\nuser {srv.admin_user} on >{admin_password} ~* &* +@all\n"
                           + tenant_acl(t, user_password) + "\n")
    conf = root / "redis.conf"
    conf.write_text(redis_user_conf(t, "127.0.0.1", resolved.site.redis, dir=str(root), aclfile=str(srv.aclfile)))
    srv.argv = ["redis-server", str(conf), "--save", "", "--appendonly", "no"]
    srv.start()
    return srv, t


def start_redis(port: int | None = None, extra: tuple[str, ...] = ()) -> RedisServer:
    port = port or free_port()
    root = Path(tempfile.mkdtemp(prefix="aic-redis-"))
    srv = RedisServer(dir=root, port=port, extra=extra)
    srv.aclfile.write_text(
        f"user default off\nuser {srv.admin_user} on >{srv.admin_password} ~* &* +@all\n"
    )
    srv.start()
    return srv
