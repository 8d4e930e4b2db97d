"""Keys and budgets on the request path: admit (authenticate and reserve: one statement, shared by
a person's requests that arrive together), then settle (one statement). `authenticate` alone
serves the routes that use no budget. No key is cached: the key row is read by every admission,
so a suspended or removed person's next request is refused.

Reserve, then settle: before a request is forwarded, its worst case (a prompt estimate that is an
upper bound, plus max_tokens) is added to the window's `reserved` by one conditional upsert that
succeeds only while used + reserved + this <= the limit. PostgreSQL locks the window row for the
update and re-checks the condition on the newest row version, so parallel requests cannot
together pass the limit. After the answer, the real usage replaces the reservation in the window
the request started in. A budget is therefore never exceeded by more than one request's excess
over its reservation (zero while the prompt estimate holds).
"""

from __future__ import annotations

import asyncio
import hmac
import re
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import psycopg

from aicommons.gateway.windows import hour_of, window_end, window_start
from aicommons.plan.policy import GATEWAY_KEY_PREFIX, gateway_key_hash
from aicommons.spec.models import Budget
from aicommons.tenancy.gateway import SCHEMA

APP_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
USER_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
DEFAULT_APP = "direct"


class Pool:
    """A fixed set of async connections (psycopg_pool is not a dependency; this is all it needs).

    A connection that fails is replaced; after any failure every other idle connection is checked
    (`SELECT 1`) before its next use, so a database restart costs one failed request, not one per
    connection."""

    def __init__(self, conninfo: str, size: int):
        self.conninfo, self.size = conninfo, size
        self._free: asyncio.Queue[psycopg.AsyncConnection | None] = asyncio.Queue()
        self._checked: dict[int, int] = {}  # id(connection) -> the failure count it was checked at
        self._failures = 0

    async def _connect(self) -> psycopg.AsyncConnection:
        c = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, connect_timeout=5)
        # A commit here does not wait for its WAL to reach the disk (PostgreSQL's synchronous_commit,
        # per session): an admission in the path to the first byte costs no fsync. Atomicity and
        # row locks are unchanged; a crash of PostgreSQL or its host may forget the last moments
        # (up to 3 x wal_writer_delay, 600 ms by default) of admissions and settlements. A clean
        # restart loses nothing (the shutdown checkpoint writes everything).
        await c.execute("SET synchronous_commit TO off")
        self._checked[id(c)] = self._failures
        return c

    async def open(self) -> None:
        first = await self._connect()
        await first.execute(SCHEMA)  # idempotent: the tenancy back end makes it too
        self._free.put_nowait(first)
        for _ in range(self.size - 1):
            self._free.put_nowait(await self._connect())

    async def _usable(self, c: psycopg.AsyncConnection | None) -> psycopg.AsyncConnection:
        if c is not None and not c.closed and self._checked.get(id(c)) != self._failures:
            try:
                await c.execute("SELECT 1")
                self._checked[id(c)] = self._failures
            except psycopg.OperationalError:
                await c.close()
        if c is None or c.closed:
            if c is not None:
                self._checked.pop(id(c), None)
            c = await self._connect()
        return c

    @asynccontextmanager
    async def conn(self):
        held: psycopg.AsyncConnection | None = await self._free.get()
        try:
            held = await self._usable(held)
            yield held
        except psycopg.OperationalError:
            self._failures += 1
            if held is not None:
                await held.close()
                self._checked.pop(id(held), None)
            held = None  # replaced on its next use
            raise
        finally:
            self._free.put_nowait(held)

    async def close(self) -> None:
        while not self._free.empty():
            c = self._free.get_nowait()
            if c is not None:
                await c.close()


@dataclass(frozen=True)
class Caller:
    user: str
    app: str
    budget: Budget


def parse_key(header: str | None) -> tuple[str, str, str | None] | None:
    """`Bearer aic.USER.TOKEN[~APP]` -> (user, key without the app label, app) or None."""
    if not header or not header.startswith("Bearer "):
        return None
    key, _, app = header[7:].strip().partition("~")
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != GATEWAY_KEY_PREFIX or not USER_RE.match(parts[1]) or not parts[2]:
        return None
    return parts[1], key, (app if APP_RE.match(app) else None) if app else None


async def authenticate(pool: Pool, header: str | None, app_header: str | None, default: Budget) -> Caller | None:
    """The caller, or None for a missing, wrong, revoked or removed key (the key row is read on
    every request: `users suspend` takes effect at once, and a raised budget too)."""
    parsed = parse_key(header)
    if parsed is None:
        return None
    user, key, key_app = parsed
    async with pool.conn() as c:
        cur = await c.execute(
            "SELECT k.key_hash, k.active, l.period, l.tokens, l.cost FROM gw_keys k "
            "LEFT JOIN gw_limits l USING (username) WHERE k.username = %s", (user,))
        row = await cur.fetchone()
    if row is None or not hmac.compare_digest(bytes(row[0]), gateway_key_hash(key)) or not row[1]:
        return None
    budget = default if row[2] is None else Budget(period=row[2], tokens=row[3],
                                                    cost=None if row[4] is None else float(row[4]))
    app = app_header if app_header and APP_RE.match(app_header) else (key_app or DEFAULT_APP)
    return Caller(user, app, budget)


@dataclass(frozen=True)
class Reservation:
    user: str
    period: str
    start: datetime
    tokens: int
    cost: Decimal


class OverBudget(Exception):
    def __init__(self, caller: Caller, need_tokens: int, need_cost: Decimal, left_tokens: int | None,
                 left_cost: Decimal | None, resets: datetime):
        self.caller, self.need_tokens, self.need_cost = caller, need_tokens, need_cost
        self.left_tokens, self.left_cost, self.resets = left_tokens, left_cost, resets
        super().__init__(self.message())

    def message(self) -> str:
        b = self.caller.budget
        left = []
        if b.tokens is not None:
            left.append(f"{max(self.left_tokens or 0, 0):,} of {b.tokens:,} tokens left this {b.period}"
                        f" (this request may use up to {self.need_tokens:,})")
        if b.cost is not None:
            left.append(f"{max(self.left_cost or Decimal(0), Decimal(0)):.4f} of {b.cost:.4f} cost left this "
                        f"{b.period} (this request may cost up to {self.need_cost:.4f})")
        return (f"Budget of {self.caller.user} reached: " + "; ".join(left)
                + f". It resets at {self.resets.strftime('%Y-%m-%d %H:%M UTC')}. A smaller max_tokens may still "
                "fit; ask the site's operator to raise the budget.")


class Unauthorized(Exception):
    pass


# The key row with the person's budget (their own, else the site default): both admissions start here.
KEY = """
WITH k AS (
    SELECT k.username, k.key_hash, k.active, l.username IS NOT NULL AS own,
           coalesce(l.period, %(dp)s) AS period,
           CASE WHEN l.username IS NULL THEN %(dt)s::bigint ELSE l.tokens END AS tl,
           CASE WHEN l.username IS NULL THEN %(dc)s::numeric ELSE l.cost END AS cl
    FROM gw_keys k LEFT JOIN gw_limits l USING (username) WHERE k.username = %(u)s
)"""


# Authenticate and reserve in one statement (one round trip before the first byte): the key row
# with the person's budget (own, else the site default), then the conditional upsert of the window
# row, done only when the key matches, is active and the reservation fits. Window starts are
# computed by PostgreSQL's date_trunc in UTC, the same boundaries as windows.window_start.
ADMIT = KEY + """, r AS (
    INSERT INTO gw_windows AS w (username, period, window_start, tokens_reserved, cost_reserved)
    SELECT username, period, date_trunc(period, %(now)s::timestamptz, 'UTC'), %(t)s, %(c)s FROM k
    WHERE k.active AND k.key_hash = %(h)s AND (k.tl IS NULL OR %(t)s <= k.tl) AND (k.cl IS NULL OR %(c)s <= k.cl)
    ON CONFLICT (username, period, window_start) DO UPDATE SET
        tokens_reserved = w.tokens_reserved + EXCLUDED.tokens_reserved,
        cost_reserved = w.cost_reserved + EXCLUDED.cost_reserved
    WHERE ((SELECT tl FROM k) IS NULL OR w.tokens_used + w.tokens_reserved + EXCLUDED.tokens_reserved <= (SELECT tl FROM k))
      AND ((SELECT cl FROM k) IS NULL OR w.cost_used + w.cost_reserved + EXCLUDED.cost_reserved <= (SELECT cl FROM k))
    RETURNING w.window_start
)
SELECT k.key_hash, k.active, k.own, k.period, k.tl, k.cl, (SELECT window_start FROM r) FROM k
"""


# Admit several requests of one person in one statement: the window row is locked (FOR UPDATE
# returns its newest version), the longest prefix of the requests whose running sum fits is
# reserved, and the upsert re-checks the limit on the row it updates, exactly as ADMIT does (a row
# made concurrently after this statement's snapshot is caught there: then nothing is reserved and
# each request is admitted alone). The last column is how many were reserved.
ADMIT_MANY = KEY + """, cur AS (
    SELECT w.tokens_used + w.tokens_reserved AS ut, w.cost_used + w.cost_reserved AS uc
    FROM gw_windows w JOIN k ON w.username = k.username AND w.period = k.period
        AND w.window_start = date_trunc(k.period, %(now)s::timestamptz, 'UTC')
    FOR UPDATE OF w
), req AS (
    SELECT x.i, sum(x.t) OVER o AS rt, sum(x.c) OVER o AS rc
    FROM unnest(%(ts)s::bigint[], %(cs)s::numeric[]) WITH ORDINALITY AS x(t, c, i) WINDOW o AS (ORDER BY x.i)
), ok AS (
    SELECT max(req.i) AS n, max(req.rt) AS t, max(req.rc) AS c FROM req, k
    WHERE k.active AND k.key_hash = %(h)s
      AND (k.tl IS NULL OR coalesce((SELECT ut FROM cur), 0) + req.rt <= k.tl)
      AND (k.cl IS NULL OR coalesce((SELECT uc FROM cur), 0) + req.rc <= k.cl)
), r AS (
    INSERT INTO gw_windows AS w (username, period, window_start, tokens_reserved, cost_reserved)
    SELECT k.username, k.period, date_trunc(k.period, %(now)s::timestamptz, 'UTC'), ok.t, ok.c FROM k, ok
    WHERE ok.n IS NOT NULL
    ON CONFLICT (username, period, window_start) DO UPDATE SET
        tokens_reserved = w.tokens_reserved + EXCLUDED.tokens_reserved,
        cost_reserved = w.cost_reserved + EXCLUDED.cost_reserved
    WHERE ((SELECT tl FROM k) IS NULL OR w.tokens_used + w.tokens_reserved + EXCLUDED.tokens_reserved <= (SELECT tl FROM k))
      AND ((SELECT cl FROM k) IS NULL OR w.cost_used + w.cost_reserved + EXCLUDED.cost_reserved <= (SELECT cl FROM k))
    RETURNING w.window_start
)
SELECT k.key_hash, k.active, k.own, k.period, k.tl, k.cl, (SELECT window_start FROM r),
       CASE WHEN EXISTS (SELECT 1 FROM r) THEN (SELECT n FROM ok) ELSE 0 END FROM k
"""

PERIODS = ("day", "week", "month")


def _args(user: str, h: bytes, default: Budget, now: datetime) -> dict:
    return {"u": user, "h": h, "dp": default.period, "dt": default.tokens,
            "dc": None if default.cost is None else Decimal(str(default.cost)), "now": now}


class Admissions:
    """Admission with one statement in flight per person: requests of that person arriving while
    it runs wait and are admitted together by the next statement (ADMIT_MANY). Parallel requests of
    one person otherwise queue on their window row's lock inside PostgreSQL one commit after another
    (profiled: most of the time to first token of a burst of 50 from 5 people). Alone, a request
    is admitted by ADMIT exactly as before; the guarantees are the statements', not this queue's."""

    def __init__(self, pool: Pool):
        self.pool = pool
        self.waiting: dict[tuple, list[tuple[int, Decimal, asyncio.Future]]] = {}
        self.tasks: set[asyncio.Task] = set()
        self.together = 0  # requests admitted by ADMIT_MANY (what the tests look at)

    async def _one(self, args: dict, tokens: int, cost: Decimal) -> tuple | None:
        async with self.pool.conn() as c:
            return await (await c.execute(ADMIT, {**args, "t": tokens, "c": cost})).fetchone()

    async def _many(self, group: tuple, args: dict, batch: list[tuple[int, Decimal, asyncio.Future]]) -> None:
        while batch:
            try:
                async with self.pool.conn() as c:
                    row = await (await c.execute(ADMIT_MANY, {**args, "ts": [t for t, _, _ in batch],
                                                              "cs": [c_ for _, c_, _ in batch]})).fetchone()
            except BaseException as exc:  # each waiting request gets the error (503 as when alone)
                for _, _, f in batch + self.waiting.pop(group, []):
                    if not f.done():
                        f.cancel() if isinstance(exc, asyncio.CancelledError) else f.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            n = row[7] if row is not None else 0
            self.together += n
            for i, (t, c_, f) in enumerate(batch):
                reserved = row[:7] if i < n else None  # None: admitted alone (over budget, or a race)
                if not f.done():
                    f.set_result(reserved)
                elif reserved is not None:  # its request is gone: give its reservation back
                    try:
                        await release(self.pool, Reservation(args["u"], row[3], row[6], t, c_))
                    except psycopg.Error:  # held until its window ends (never less than the use)
                        pass
            batch = self.waiting.pop(group, [])
            if batch:
                self.waiting[group] = []
        self.waiting.pop(group, None)

    async def admit(self, header: str | None, app_header: str | None, default: Budget, tokens: int,
                    cost: Decimal, now: datetime) -> tuple[Caller, Reservation]:
        """The caller and their reservation; Unauthorized for a missing, wrong, revoked or removed
        key; OverBudget when the reservation does not fit the window."""
        parsed = parse_key(header)
        if parsed is None:
            raise Unauthorized
        user, key, key_app = parsed
        h = gateway_key_hash(key)
        args = _args(user, h, default, now)
        # Same person, same key, same windows: what one statement may admit together.
        group = (user, h, default.period, default.tokens, default.cost, tuple(window_start(p, now) for p in PERIODS))
        if group in self.waiting:
            fut: asyncio.Future = asyncio.get_running_loop().create_future()
            self.waiting[group].append((tokens, cost, fut))
            row = await fut
            if row is None:  # not admitted with the others: alone, for the exact answer
                row = await self._one(args, tokens, cost)
        else:
            self.waiting[group] = []
            try:
                row = await self._one(args, tokens, cost)
            finally:
                followers = self.waiting.pop(group, [])
                if followers:
                    self.waiting[group] = []
                    task = asyncio.create_task(self._many(group, args, followers))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
        if row is None or not hmac.compare_digest(bytes(row[0]), h) or not row[1]:
            raise Unauthorized
        budget = Budget(period=row[3], tokens=row[4], cost=None if row[5] is None else float(row[5]))
        app = app_header if app_header and APP_RE.match(app_header) else (key_app or DEFAULT_APP)
        caller = Caller(user, app, budget)
        if row[6] is not None:
            return caller, Reservation(user, budget.period, row[6], tokens, cost)
        start = window_start(budget.period, now)
        async with self.pool.conn() as c:
            cur = await c.execute("SELECT tokens_used + tokens_reserved, cost_used + cost_reserved FROM gw_windows "
                                  "WHERE username = %s AND period = %s AND window_start = %s", (user, budget.period, start))
            spent = await cur.fetchone() or (0, Decimal(0))
        raise OverBudget(caller, tokens, cost, None if budget.tokens is None else budget.tokens - spent[0],
                         None if budget.cost is None else Decimal(str(budget.cost)) - spent[1],
                         window_end(budget.period, now))


# Settle in one statement (one round trip; a single statement is atomic, so the window and the
# usage table change together or not at all).
SETTLE = """
WITH w AS (
    UPDATE gw_windows SET tokens_reserved = tokens_reserved - %(rt)s, cost_reserved = cost_reserved - %(rc)s,
        tokens_used = tokens_used + %(p)s + %(q)s, cost_used = cost_used + %(c)s
    WHERE username = %(u)s AND period = %(per)s AND window_start = %(ws)s
)
INSERT INTO gw_usage AS g (username, model, app, hour, requests, prompt_tokens, completion_tokens, cost, unmetered)
VALUES (%(u)s, %(m)s, %(a)s, %(h)s, 1, %(p)s, %(q)s, %(c)s, %(un)s)
ON CONFLICT (username, model, app, hour) DO UPDATE SET
    requests = g.requests + 1, prompt_tokens = g.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = g.completion_tokens + EXCLUDED.completion_tokens, cost = g.cost + EXCLUDED.cost,
    unmetered = g.unmetered + EXCLUDED.unmetered
"""


async def settle(pool: Pool, r: Reservation, *, model: str, app: str, prompt: int, completion: int,
                 cost: Decimal, now: datetime, metered: bool = True) -> None:
    """Replace the reservation with what was used, and add it to the person's usage (one statement)."""
    async with pool.conn() as c:
        await c.execute(SETTLE, {"rt": r.tokens, "rc": r.cost, "p": prompt, "q": completion, "c": cost, "u": r.user,
                                 "per": r.period, "ws": r.start, "m": model, "a": app, "h": hour_of(now),
                                 "un": 0 if metered else 1})


async def release(pool: Pool, r: Reservation) -> None:
    """The upstream refused or failed before answering: nothing was used."""
    async with pool.conn() as c:
        await c.execute("UPDATE gw_windows SET tokens_reserved = tokens_reserved - %s, cost_reserved = cost_reserved - %s "
                        "WHERE username = %s AND period = %s AND window_start = %s",
                        (r.tokens, r.cost, r.user, r.period, r.start))
