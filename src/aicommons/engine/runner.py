"""Walk a DAG of steps with bounded parallelism.

A step starts once every step it depends on succeeded; if one failed or was skipped, it is
skipped with the reason. Failures never stop unrelated steps; every outcome is returned.
TemporaryError is retried (bounded); a step still running at its deadline is reported as
failed and its thread abandoned (daemon), so a never-finishing back end cannot hang the run.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from aicommons.engine.model import Outcome, Step
from aicommons.errors import AicError, TemporaryError

Event = Callable[[Step, str, str], None]  # (step, "start" | "ok" | "failed" | "skipped", detail)


def _attempt(step: Step, execute: Callable[[Step], Any], retries: int, max_delay: float) -> tuple[str, str, int]:
    n = 0
    while True:
        n += 1
        try:
            note = execute(step)
            return "ok", note or "", n
        except TemporaryError as exc:
            if n > retries:
                return "failed", f"{exc} (gave up after {n} attempts)", n
            time.sleep(min(exc.delay, max_delay))
        except AicError as exc:
            return "failed", str(exc), n
        except Exception as exc:  # noqa: BLE001 - a bug in one step must not end the run
            return "failed", f"{type(exc).__name__}: {exc}", n


def run_dag(steps: dict[str, Step], execute: Callable[[Step], Any], *, parallelism: int = 4,
            step_timeout: float | None = None, retries: int = 3, max_delay: float = 5.0,
            on_event: Event | None = None) -> dict[str, Outcome]:
    on_event = on_event or (lambda *_: None)
    parallelism = max(1, parallelism)
    out: dict[str, Outcome] = {}
    done_q: queue.Queue = queue.Queue()
    running: dict[str, float] = {}  # step id -> deadline
    waiting = dict(steps)
    order = sorted(steps, key=lambda i: (steps[i].phase, steps[i].id))

    def worker(step: Step) -> None:
        done_q.put((step.id, *_attempt(step, execute, retries, max_delay)))

    while waiting or running:
        # skip whatever depends on a failure; start whatever is ready
        progress = True
        while progress:
            progress = False
            for sid in [i for i in order if i in waiting]:
                s = waiting[sid]
                bad = [d for d in s.deps if d in out and out[d].status != "ok"]
                if bad:
                    del waiting[sid]
                    out[sid] = Outcome(sid, "skipped", f"depends on {bad[0]}, which {out[bad[0]].status}")
                    on_event(s, "skipped", out[sid].detail)
                    progress = True
                elif all(d in out for d in s.deps) and len(running) < parallelism:
                    del waiting[sid]
                    running[sid] = time.monotonic() + step_timeout if step_timeout else float("inf")
                    on_event(s, "start", "")
                    threading.Thread(target=worker, args=(s,), name=f"step-{sid}", daemon=True).start()
                    progress = True
        if not running:
            if waiting:  # a cycle or a dependency outside the plan: report, never hang
                for sid, s in list(waiting.items()):
                    out[sid] = Outcome(sid, "skipped", "dependencies could not be met")
                    on_event(s, "skipped", out[sid].detail)
                waiting.clear()
            break
        wait = max(0.0, min(running.values()) - time.monotonic())
        try:
            sid, status, detail, attempts = done_q.get(timeout=min(wait, 3600))
        except queue.Empty:
            now = time.monotonic()
            for sid, deadline in list(running.items()):
                if deadline <= now:
                    del running[sid]
                    out[sid] = Outcome(sid, "failed", f"did not finish within {step_timeout:g} s")
                    on_event(steps[sid], "failed", out[sid].detail)
            continue
        if sid not in running:
            continue  # finished after its deadline was reported
        del running[sid]
        out[sid] = Outcome(sid, status, detail, attempts)
        on_event(steps[sid], status, detail)
    return out
