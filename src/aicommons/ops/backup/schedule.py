"""The nightly backup on the control host: a systemd service + timer, or one cron line (pure)."""

from __future__ import annotations

import shlex
from pathlib import Path

from aicommons.render.files import RenderedFile

ON_CALENDAR = "*-*-* 02:30:00"
CRON_TIME = "30 2 * * *"


def _command(site_file: Path, exe: str) -> str:
    return f"{shlex.quote(exe)} backup run -f {shlex.quote(str(site_file))} --prune"


def render_schedule(site_name: str, site_file: Path, exe: str = "/usr/local/bin/aicommons",
                    on_calendar: str = ON_CALENDAR, cron_time: str = CRON_TIME) -> dict[str, RenderedFile]:
    """Files under `systemd/` and `cron/` for the host that runs aicommons."""
    unit = f"aicommons-backup-{site_name}"
    cmd = _command(site_file, exe)
    service = f"""[Unit]
Description=aicommons backup of site {site_name}
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart={cmd}
Nice=10
IOSchedulingClass=best-effort
IOSchedulingPriority=7
UMask=0077
# The secrets key comes from the state directory beside the site file (0600), never this unit.
"""
    timer = f"""[Unit]
Description=Nightly aicommons backup of site {site_name}

[Timer]
OnCalendar={on_calendar}
RandomizedDelaySec=15min
Persistent=true

[Install]
WantedBy=timers.target
"""
    cron = f"# aicommons backup of site {site_name} (use this or the systemd timer, not both)\n" \
           f"{cron_time} root {cmd} >>/var/log/aicommons-backup.log 2>&1\n"
    files = [RenderedFile(f"systemd/{unit}.service", service), RenderedFile(f"systemd/{unit}.timer", timer),
             RenderedFile(f"cron/{unit}", cron)]
    return {f.path: f for f in files}
