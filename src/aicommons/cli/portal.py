"""`serve` (the web portal) and `portal admin-token`: thin shells over aicommons.portal."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated

import typer

from aicommons.cli.common import SiteFile, console, load
from aicommons.cli.ops import TargetOpt, TargetsFile
from aicommons.errors import PermanentError

portal_app = typer.Typer(help="The web portal's own secrets.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.add_typer(portal_app, name="portal")


def _in_site(listen: str, site) -> bool:
    """Listening on an address of the site's subnet: the portal is a container of the site."""
    host = listen.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host) in site.network.subnet
    except ValueError:
        return False


def _socket(listen: str) -> socket.socket:
    """`127.0.0.1:8080` or `[::1]:8080`, bound now (several can serve one app)."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not host:
        raise PermanentError(f"--listen {listen!r}: write HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        s.bind((host, int(port)))
    except OSError as exc:
        s.close()
        raise PermanentError(f"--listen {listen}: cannot bind ({exc.strerror})") from None
    s.listen(128)
    s.set_inheritable(True)
    return s


def serve(
    file: Path = SiteFile,
    listen: Annotated[list[str] | None, typer.Option("--listen", help="HOST:PORT to serve on (repeatable).")] = None,
    trusted_proxy: Annotated[list[str] | None, typer.Option(
        "--trusted-proxy", help="Peer whose X-authentik-* headers are believed (repeatable; default: where the site's "
                        "Traefik connects from: its address, or the bridge's on LXC).")] = None,
    operator_group: Annotated[str, typer.Option(help="Authentik group of the site's operators.")] = "aicommons-operators",
    no_admin_token: Annotated[bool, typer.Option("--no-admin-token", help="Refuse the local operator token.")] = False,
    refresh: Annotated[float, typer.Option(help="Seconds before live status is swept again.")] = 10.0,
    timeout: Annotated[float, typer.Option(help="Seconds each status check may take.")] = 3.0,
    state: Annotated[str | None, typer.Option("--state", help="State file or postgresql:// URL.")] = None,
    target: list[str] = TargetOpt,
    targets: Path = TargetsFile,
) -> None:
    """Serve each person's workbench page and the operator's console (JSON API described at /openapi.json)."""
    import uvicorn

    from aicommons.drivers.registry import enter_site_network, site_owner
    from aicommons.ops.targets import parse_targets
    from aicommons.plan.access import proxy_source
    from aicommons.portal.app import create_app
    from aicommons.portal.config import PortalConfig, parse_proxies

    site, _ = load(file)
    enter_site_network(site, site_owner(file))  # status and back ends are dialled where the site's addresses exist
    cfg = PortalConfig(site_file=file, state_path=state,
                       trusted_proxies=parse_proxies(trusted_proxy or [proxy_source(site)]),
                       operator_group=operator_group, targets=parse_targets(target, targets),
                       refresh_seconds=refresh, status_timeout=timeout, admin_token=not no_admin_token,
                       inside_site=any(_in_site(x, site) for x in (listen or [])))
    socks = [_socket(x) for x in (listen or ["127.0.0.1:8080"])]
    import logging  # who did what (job start/end), refused headers: to stderr, never a secret

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aicommons.portal").setLevel(logging.INFO)
    app = create_app(cfg)
    console.print(f"portal of {site.name} on " + ", ".join(listen or ["127.0.0.1:8080"])
                  + f"; trusting forward-auth from {', '.join(str(n) for n in cfg.trusted_proxies)}")
    # proxy_headers off: only the TCP peer says who connected (X-Forwarded-For cannot fake Traefik).
    server = uvicorn.Server(uvicorn.Config(app, proxy_headers=False, log_level="warning", access_log=False,
                                           server_header=False))
    server.run(sockets=socks)


@portal_app.command("admin-token")
def admin_token(file: Path = SiteFile,
                state: Annotated[str | None, typer.Option("--state", help="State file or postgresql:// URL.")] = None,
                ) -> None:
    """Print the operator token for the portal's sign-in (made once, kept encrypted in the state)."""
    from aicommons.engine.api import key_source, open_state
    from aicommons.portal.app import PORTAL_SCOPE

    site, _ = load(file)
    st = open_state(file, state)
    try:
        typer.echo(st.secrets(key_source(site, st, file)).get(PORTAL_SCOPE, "admin_token"))
    finally:
        st.close()
