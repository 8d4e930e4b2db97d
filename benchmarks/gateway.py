"""The model gateway's overhead at 50 concurrent streams, against calling the model server directly.

Real: PostgreSQL 15 (tests/servers.py, set back to durable commits: fsync and synchronous_commit
on, as on a site) with the gateway's keys, windows and usage; `aicommons
gateway serve` in its own process (uvicorn, one worker, its default pool of 10 connections); HTTP over loopback. Simulated: the model
server — the deterministic OpenAI-compatible stand-in (tests/standins/openai_upstream.py) in its
own process, streaming TOKENS tokens TOKEN_MS apart (about llama-server's pace with SmolLM2 here).
The load generator (this process) is a plain asyncio HTTP/1.1 client, a fresh connection per stream.
Measured in the same run, rounds alternating (and which goes first alternating): the streams
straight to the model server (baseline), then the same streams through the gateway (each
person's key, reserve + settle in PostgreSQL), in two shapes: a burst (50 sent in the same
instant, the worst case) and steady (50 clients sending back to back, starts spread: 50 in
flight throughout). Per request: time to the first content event and to the end of the stream.
Prints p50/p99 of each, the added ms and the ratio gateway/direct, and the gateway process's CPU
per request. Goals (issue #22): p50 < 5 ms, p99 < 20 ms added; TTFT within 10 %.
BENCH_PROFILE=FILE writes the gateway's cProfile stats there.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.gateway_harness import People, backend_for, conninfo  # noqa: E402
from tests.servers import free_port, start_postgres  # noqa: E402

STREAMS = int(os.environ.get("BENCH_STREAMS", "50"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
TOKENS = 32
TOKEN_MS = int(os.environ.get("BENCH_TOKEN_MS", "10"))
PEOPLE = int(os.environ.get("BENCH_PEOPLE", "5"))
STEADY_EACH = 4
AIC = [sys.executable, "-c", "import sys; from aicommons.cli import main; sys.exit(main())"]
# BENCH_PROFILE=FILE: the gateway runs under cProfile and writes its stats to FILE when stopped.
PROFILED = [sys.executable, "-c", "import cProfile, sys; from aicommons.cli import main\n"
            "import signal; signal.raise_signal = lambda s: None  # uvicorn re-raises SIGTERM after its shutdown\n"
            "out = sys.argv.pop(1); p = cProfile.Profile(); p.enable()\n"
            "try: main()\nexcept SystemExit: pass\nfinally: p.disable(); p.dump_stats(out)",
            os.environ.get("BENCH_PROFILE", "")]
BODY = {"model": "smollm2", "messages": [{"role": "user", "content": "Please answer briefly: " + "x" * 16}],
        "max_tokens": TOKENS, "stream": True}


def upstream(ready, url) -> None:
    from tests.standins.openai_upstream import OpenAIUpstream

    up = OpenAIUpstream(token_delay=TOKEN_MS / 1000)
    url.value = up.url
    ready.set()
    time.sleep(3600)


def answer_len() -> int:
    from tests.standins.openai_upstream import answer

    return answer(BODY)[1]


async def one(url: str, key: str) -> tuple[float, float]:
    """One stream on a fresh connection; (ms to the first content event, ms to the end of the stream).
    The client is plain asyncio (HTTP/1.1, chunked), so that the load generator's own parsing takes
    as little of the shared cores as possible: it runs for the baseline and the gateway alike."""
    u = urlsplit(url)
    body = json.dumps(BODY).encode()
    head = (f"POST {u.path}/chat/completions HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    t0 = time.perf_counter()
    ttft = None
    reader, writer = await asyncio.open_connection(u.hostname, u.port)
    try:
        writer.write(head + body)
        status = await reader.readuntil(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 200") or b"transfer-encoding: chunked" not in status.lower():
            raise SystemExit(f"{url}: {status[:300]!r} {(await reader.read(300))!r}")
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            if ttft is None and b'"content"' in data:
                ttft = time.perf_counter() - t0
    finally:
        writer.close()
    return (ttft or float("nan")) * 1000, (time.perf_counter() - t0) * 1000


async def burst(url: str, keys: list[str]) -> list[tuple[float, float]]:
    """STREAMS requests sent in the same instant (the worst case: every admission queues at once)."""
    return await asyncio.gather(*[one(url, keys[i % len(keys)]) for i in range(STREAMS)])


async def steady(url: str, keys: list[str]) -> list[tuple[float, float]]:
    """STREAMS clients each sending STEADY_EACH streams back to back, their starts spread over one
    stream's length (the same seeded spread for both paths): STREAMS streams in flight throughout."""
    span = answer_len() * TOKEN_MS / 1000

    async def client(i: int) -> list[tuple[float, float]]:
        await asyncio.sleep(random.Random(i).uniform(0, span))
        return [await one(url, keys[i % len(keys)]) for _ in range(STEADY_EACH)]

    return [x for xs in await asyncio.gather(*[client(i) for i in range(STREAMS)]) for x in xs]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waited_seconds(pid: int) -> float:
    """Time the process's threads spent runnable but waiting for a core (/proc/PID/task/*/schedstat,
    second field, ns): what a busy host costs it, apart from its own CPU."""
    return sum(int((t / "schedstat").read_text().split()[1]) for t in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def report(direct: list[tuple[float, float]], via: list[tuple[float, float]], cpu: float, waited: float) -> None:
    d_ttft, d_total = [a for a, _ in direct], [b for _, b in direct]
    g_ttft, g_total = [a for a, _ in via], [b for _, b in via]
    print(f"{'':12} {'TTFT p50':>9} {'TTFT p99':>9} {'total p50':>10} {'total p99':>10}  (ms, n={len(direct)} each)")
    print(f"{'direct':12} {pct(d_ttft, .5):9.1f} {pct(d_ttft, .99):9.1f} {pct(d_total, .5):10.1f} {pct(d_total, .99):10.1f}")
    print(f"{'gateway':12} {pct(g_ttft, .5):9.1f} {pct(g_ttft, .99):9.1f} {pct(g_total, .5):10.1f} {pct(g_total, .99):10.1f}")
    for name, d, g in (("TTFT", d_ttft, g_ttft), ("total", d_total, g_total)):
        print(f"{name + ' added':12} p50 {pct(g, .5) - pct(d, .5):+7.1f} ms (x{pct(g, .5) / pct(d, .5):.2f})   "
              f"p99 {pct(g, .99) - pct(d, .99):+7.1f} ms (x{pct(g, .99) / pct(d, .99):.2f})")
    print(f"gateway CPU: {cpu * 1000 / len(via):.2f} ms per streamed request (the process's user + system time); "
          f"waiting for a core: {waited * 1000 / len(via):.2f} ms per request")


def durable(pg) -> None:
    """The test server's settings trade durability for speed (fsync off); a site's PostgreSQL does not."""
    import psycopg

    with psycopg.connect(pg.admin_dsn, autocommit=True) as c:
        for name in ("fsync", "full_page_writes", "synchronous_commit"):
            c.execute(f"ALTER SYSTEM SET {name} = on")
        c.execute("SELECT pg_reload_conf()")


def main() -> None:
    pg = start_postgres()
    if not os.environ.get("BENCH_PG_NOSYNC"):  # BENCH_PG_NOSYNC=1: the test server's fsync=off, to compare
        durable(pg)
    mgr = mp.Manager()
    ready, url = mgr.Event(), mgr.Value(str, "")
    up = mp.Process(target=upstream, args=(ready, url), daemon=True)
    up.start()
    ready.wait(30)
    tmp = Path(tempfile.mkdtemp(prefix="aic-bench-gw-"))
    gw = None
    try:
        db = "gw_bench"
        people = People(backend_for(pg, db))
        keys = [people.add(f"p{i}") for i in range(PEOPLE)]
        (tmp / "site.yaml").write_text(f"""version: 1
name: gwbench
domain: example.org
driver: {{kind: lxc}}
services: {{postgres: {{}}, gateway: {{}}}}
user_template: {{apps: []}}  # the gateway alone: no app needs the services left out
gateway:
  upstreams: [{{url: "{url.value}", models: [smollm2]}}]
  budget: {{period: day, tokens: 100000000}}
""")
        port = free_port()
        cmd = PROFILED if os.environ.get("BENCH_PROFILE") else AIC
        gw = subprocess.Popen(cmd + ["gateway", "serve", "--listen", f"127.0.0.1:{port}", "--database",
                                     conninfo(pg, db)], cwd=tmp,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        gw_url = f"http://127.0.0.1:{port}/v1"
        end = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > end or gw.poll() is not None:
                    raise SystemExit("the gateway did not start: " + (gw.stderr.read().decode() if gw.stderr else "")) from None
                time.sleep(0.2)
        print(f"{STREAMS} concurrent streams of {answer_len()} tokens, {TOKEN_MS} ms apart; {PEOPLE} people; "
              f"{ROUNDS} rounds each way, alternating; host: {os.cpu_count()} cores (shared)")
        asyncio.run(burst(url.value, keys))  # warm both paths: connections, imports, the window rows
        asyncio.run(burst(gw_url, keys))
        for name, shape in (("burst", burst), ("steady", steady)):
            if name not in os.environ.get("BENCH_SHAPES", "burst,steady"):
                continue
            direct: list[tuple[float, float]] = []
            via: list[tuple[float, float]] = []
            cpu = waited = 0.0
            for i in range(ROUNDS):  # which goes first alternates, so that a drift in the host's load hits both
                for path in (("direct", "gateway") if i % 2 == 0 else ("gateway", "direct")):
                    if path == "direct":
                        direct += asyncio.run(shape(url.value, keys))
                    else:
                        before, w0 = cpu_seconds(gw.pid), waited_seconds(gw.pid)
                        via += asyncio.run(shape(gw_url, keys))
                        cpu += cpu_seconds(gw.pid) - before
                        waited += waited_seconds(gw.pid) - w0
            print(f"\n{name}: " + (f"{STREAMS} streams sent at once" if shape is burst else
                                   f"{STREAMS} clients x {STEADY_EACH} streams back to back, starts spread"))
            report(direct, via, cpu, waited)
        print("\ngoals (issue #22): total added p50 < 5 ms, p99 < 20 ms; TTFT ratio at p50 within 0.90-1.10; "
              f"host load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        if gw is not None:
            gw.terminate()
            gw.wait(10)
        up.kill()
        pg.cleanup()


if __name__ == "__main__":
    main()
