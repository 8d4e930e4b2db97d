"""Status sweep of 436 endpoints: concurrent (aicommons.ops.checks.sweep) against sequential.

436 = the seed's service instances (36 shared + 50 users x 8 apps). Every endpoint is a
loopback HTTP listener (aicommons.ops.loopback, in its own process). Two rounds: answers with no
delay (pure client overhead: loopback has no network), then with a 10 ms delay, which stands in
for a LAN round trip plus a health handler's work. Bounded: per round one concurrent and one
sequential sweep, 3 s per-check timeout. Prints wall times and the ratio.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from aicommons.ops.checks import Check, run_check, sweep  # noqa: E402
from aicommons.ops.loopback import LoopbackHttp  # noqa: E402

N = 436
DELAYS = (0.0, 0.01)


async def sequential(checks: list[Check]) -> list:
    return [await run_check(c, 3.0, 1000.0) for c in checks]


def serve(delay, ports, ready, stop) -> None:
    # Its own process: the stand-ins must not share the measured process's interpreter lock.
    with LoopbackHttp(ports=N, delay=delay) as srv:
        ports.extend(srv.ports)
        ready.set()
        stop.wait(120)


def measure(delay: float) -> None:
    import multiprocessing as mp

    mgr = mp.Manager()
    ports, ready, stop = mgr.list(), mgr.Event(), mgr.Event()
    proc = mp.Process(target=serve, args=(delay, ports, ready, stop), daemon=True)
    proc.start()
    ready.wait(60)
    try:
        checks = [Check(name=f"svc{i}", kind="http", host="127.0.0.1", port=p, phase=1 + (i >= 36),
                        path="/health") for i, p in enumerate(list(ports))]
        t0 = time.perf_counter()
        conc = asyncio.run(sweep(checks, timeout=3.0))
        t_conc = time.perf_counter() - t0
        t0 = time.perf_counter()
        seq = asyncio.run(sequential(checks))
        t_seq = time.perf_counter() - t0
    finally:
        stop.set()
        proc.join(30)
        mgr.shutdown()
    ok_c = sum(r.state == "ok" for r in conc)
    ok_s = sum(r.state == "ok" for r in seq)
    print(f"endpoints: {N} (loopback, {delay * 1000:.0f} ms answer delay each)")
    print(f"concurrent sweep: {t_conc:.3f} s  ({ok_c}/{N} ok)")
    print(f"sequential sweep: {t_seq:.3f} s  ({ok_s}/{N} ok)")
    print(f"speed-up: {t_seq / t_conc:.1f}x   goal: < 1 s and >= 10x -> "
          f"{'met' if t_conc < 1 and t_seq / t_conc >= 10 else 'NOT met'}")


def main() -> None:
    for delay in DELAYS:
        measure(delay)


if __name__ == "__main__":
    main()
