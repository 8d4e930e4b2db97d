"""What an apply tells the operator: a Rich progress view on a terminal, plain lines elsewhere,
the same lines in `.aicommons/logs/run-N.log`, and every error again at the end. Everything
passes through the redactor first, so no secret value reaches a screen or a log.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from aicommons.engine.model import ApplyResult, Plan

if TYPE_CHECKING:  # rich is imported only when a terminal shows progress
    from rich.progress import Progress, TaskID

MASK = "[redacted]"


class Redactor:
    def __init__(self, secrets, extra: list[str] | None = None):
        self._secrets = secrets
        self._extra = list(extra or [])  # e.g. admin passwords of external servers named in site.yaml
        self._values: list[str] = []
        self.refresh()

    def refresh(self) -> None:
        values = {*self._secrets.values(), *self._extra}
        self._values = sorted({v for v in values if len(v) >= 6}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        for v in self._values:
            if v in text:
                text = text.replace(v, MASK)
        return text


class Reporter:
    def __init__(self, out, redact: Redactor, log_dir: Path):
        self.out = out or sys.stdout
        self.redact = redact
        self.log_dir = log_dir
        self.log: TextIO | None = None
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.tty = hasattr(self.out, "isatty") and self.out.isatty() and not os.environ.get("CI")

    def open_log(self, run_id: int) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.log_dir / f"run-{run_id}.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
        self.log = os.fdopen(fd, "a", encoding="utf-8")

    def _log(self, text: str) -> None:
        if self.log:
            self.log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")
            self.log.flush()

    def line(self, text: str) -> None:
        text = self.redact(text)
        self._log(text)
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.out, flush=True)

    def begin(self, plan: Plan) -> None:
        c = plan.counts()
        self.line(f"applying {len(plan.steps)} steps: " +
                  ", ".join(f"{n} to {a}" for a, n in c.items() if n and a != "no-op"))
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=Console(file=self.out), transient=True)
            self.progress.start()
            self.task = self.progress.add_task("apply", total=len(plan.steps))

    def event(self, step, status: str, detail: str) -> None:
        if status == "start":
            self._log(f"start   {step.action} {step.id}: {self.redact(step.reason)}")
            if self.progress is not None and self.task is not None:
                self.progress.update(self.task, description=f"{step.action} {step.id}")
            return
        text = f"{status:<8}{step.action} {step.id}" + (f": {detail}" if detail else "")
        self.line(text)
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    def end(self, result: ApplyResult) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        errs = result.errors
        ok = len(result.outcomes) - len(errs)
        self.line(f"done: {ok} ok, {sum(o.status == 'failed' for o in errs)} failed, "
                  f"{sum(o.status == 'skipped' for o in errs)} skipped")
        for o in errs:
            self.line(f"  {o.status}: {o.step}: {o.detail}")
        for o in result.outcomes.values():
            if o.status == "ok" and o.detail:
                self.line(f"  note: {o.step}: {o.detail}")
        if self.log:
            self.log.close()
            self.log = None
