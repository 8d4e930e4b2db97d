"""Invitations by e-mail (ops/enroll.py send_invitation) through a real SMTP server on loopback.

Real: aiosmtpd (Debian's python3-aiosmtpd, run as its own process by the system Python) as the
SMTP server, storing what it receives in a Maildir; Python's smtplib as the client. Nothing is
simulated. Skipped when the Debian package is not installed (scripts/install.sh --test).
"""

from __future__ import annotations

import mailbox
import shutil
import subprocess
import time
from email import message_from_bytes
from email.policy import default

import pytest

from aicommons.errors import AicError
from aicommons.ops.enroll import send_invitation
from aicommons.spec.models import Site
from tests.servers import free_port, stop_process

SYSTEM_PY = shutil.which("python3", path="/usr/bin") or "python3"


def _has_aiosmtpd() -> bool:
    return subprocess.run([SYSTEM_PY, "-c", "import aiosmtpd"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _has_aiosmtpd(), reason="Debian's python3-aiosmtpd is not installed")


def _site(port: int) -> Site:
    return Site.model_validate({"name": "mail", "domain": "example.org", "driver": {"kind": "lxc"},
                                "smtp": {"host": "127.0.0.1", "port": port, "sender": "aicommons@example.org",
                                         "security": "none"},
                                "users": [{"name": "dora", "email": "dora@example.org"}]})


@pytest.fixture
def smtp(tmp_path):
    port = free_port()
    box = tmp_path / "Maildir"
    proc = subprocess.Popen([SYSTEM_PY, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}",
                             "-c", "aiosmtpd.handlers.Mailbox", str(box)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 30
    while time.monotonic() < end and not box.exists():
        time.sleep(0.1)
    yield port, box
    stop_process(proc)


def _wait_message(box, timeout: float = 30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        msgs = list(mailbox.Maildir(str(box), create=False))
        if msgs:
            return msgs
        time.sleep(0.1)
    return []


def test_the_invitation_is_delivered_to_the_person(smtp, tmp_path):
    port, box = smtp
    url = "https://portal.example.org/invite/tok-123"
    send_invitation(_site(port), tmp_path, "dora@example.org", "dora", url)
    msgs = _wait_message(box)
    assert len(msgs) == 1
    msg = message_from_bytes(msgs[0].as_bytes(), policy=default)
    assert msg["To"] == "dora@example.org" and msg["From"] == "aicommons@example.org"
    assert url in msg.get_content() and "72 hours" in msg.get_content()


def test_an_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(AicError, match=r"made but not e-mailed \(smtp 127\.0\.0\.1:\d+") as exc:
        send_invitation(_site(free_port()), tmp_path, "dora@example.org", "dora", "https://x/invite/t")
    assert "users invite dora" in str(exc.value)
