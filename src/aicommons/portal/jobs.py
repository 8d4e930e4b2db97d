"""Actions that take a while (add a user, apply, verify a backup) run as jobs: one thread each,
their progress kept line by line for the page to stream. The lines are what the CLI would print
(the engine's reporter already redacts secrets); the same function does the work."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aicommons.errors import AicError

log = logging.getLogger("aicommons.portal")
KEEP = 200  # finished jobs remembered


@dataclass
class Job:
    id: int
    kind: str  # "users add", "apply", ...
    title: str
    who: str
    subject: str | None  # the user it concerns (a person may watch jobs about themselves)
    lines: list[str] = field(default_factory=list)
    status: str = "running"  # running | ok | failed
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def to_dict(self, since: int = 0) -> dict:
        return {"id": self.id, "kind": self.kind, "title": self.title, "who": self.who, "subject": self.subject,
                "status": self.status, "started": self.started, "finished": self.finished,
                "lines": self.lines[since:], "next": len(self.lines)}


class _Out:
    """A file the engine's reporter prints to: every line lands in the job, redacted again."""

    def __init__(self, job: Job, redact: Callable[[str], str]):
        self.job, self._buf, self.redact = job, "", redact

    def write(self, text: str) -> int:
        self._buf += text
        *done, self._buf = self._buf.split("\n")
        self.job.lines.extend(self.redact(line) for line in done)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class Jobs:
    def __init__(self, redactor=None):
        """redactor: the engine's Redactor over the state's secrets (every line passes through it)."""
        self.redactor = redactor
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._mu = threading.Lock()

    def start(self, kind: str, title: str, who: str, fn: Callable[[_Out], str | None],
              subject: str | None = None) -> Job:
        """fn(out) does the work; returns a last line, raises AicError to fail with its message."""
        with self._mu:
            job = Job(next(self._ids), kind, title, who, subject)
            self._jobs[job.id] = job
            for old in sorted(self._jobs)[:-KEEP]:
                if self._jobs[old].status != "running":
                    del self._jobs[old]
        log.info("job %d started by %s: %s", job.id, who, title)
        threading.Thread(target=self._run, args=(job, fn), daemon=True, name=f"job-{job.id}").start()
        return job

    def _redact(self, text: str) -> str:
        return self.redactor(text) if self.redactor is not None else text

    def _run(self, job: Job, fn) -> None:
        if self.redactor is not None:
            self.redactor.refresh()  # secrets made since (a user added by the last job)
        out = _Out(job, self._redact)
        try:
            last = fn(out)
            if out._buf:
                job.lines.append(self._redact(out._buf))
            if last:
                job.lines.append(self._redact(last))
            job.status = "ok"
        except AicError as exc:
            job.lines.append(self._redact(f"error: {exc}"))
            job.status = "failed"
        except Exception as exc:  # noqa: BLE001 - a job must end, and say so, whatever happened
            log.error("job %d failed: %s", job.id, self._redact(f"{type(exc).__name__}: {exc}"))
            job.lines.append(self._redact(f"internal error: {type(exc).__name__}: {exc}"))
            job.status = "failed"
        job.finished = time.time()
        log.info("job %d %s", job.id, job.status)

    def get(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def recent(self, n: int = 10) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.id, reverse=True)[:n]
