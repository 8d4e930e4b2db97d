"""A long-lived process (the portal) keeps its state connection while commands come and go.

Real: SQLite in WAL mode, a second process opening and closing the same state (the CLI).
The bug this pins: opening another StateStore in the same process read the file's header with
open()/close(), and POSIX drops every lock a process holds on a file when any descriptor of it
is closed; the next process to close its connection then believed itself the last one,
checkpointed and deleted the WAL index under the open connections ("disk I/O error").
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aicommons.state.store import StateStore

ROOT = Path(__file__).resolve().parents[1]


def test_other_stores_and_another_process_leave_open_connections_working(tmp_path):
    path = tmp_path / "state.db"
    first = StateStore.open(path)  # the portal's own connection
    first.set_meta("k", "1")
    second = StateStore.open(path)  # a job of the portal, still running
    second.set_meta("k", "x")
    StateStore.open(path).close()  # a short request
    code = f"from aicommons.state.store import StateStore; s = StateStore.open({str(path)!r}); s.set_meta('k', '2'); s.close()"
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(ROOT / "src")})
    assert (tmp_path / "state.db-shm").exists()  # not deleted under the open connections
    second.close()
    assert first.meta("k") == "2"
    first.set_meta("k", "3")
    assert first.meta("k") == "3"
    first.close()
    first.close()  # closing twice is harmless
    assert StateStore.open(path).meta("k") == "3"
