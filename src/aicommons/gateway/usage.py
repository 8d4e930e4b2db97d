"""Budgets and usage as service functions the CLI and the portal call (synchronous, short).

`set_budget` writes the person's override to the table the gateway reads on every request, so a
raised budget holds from the next request, without a restart."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import psycopg

from aicommons.errors import AicError, TemporaryError
from aicommons.gateway.windows import window_end, window_start
from aicommons.spec.models import Budget
from aicommons.tenancy.gateway import SCHEMA


class BadBudget(AicError):
    exit_code = 2


def _connect(conninfo: str):
    try:
        c = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise TemporaryError(f"the gateway's database is not reachable: {exc}".strip(), delay=2.0) from None
    c.execute(SCHEMA)
    return c


def set_budget(conninfo: str, user: str, *, period: str, tokens: int | None, cost: float | None) -> Budget:
    """The person's own budget (replaces the site default for them)."""
    if period not in ("day", "week", "month"):
        raise BadBudget(f"--period {period!r}: use day, week or month")
    if tokens is not None and tokens < 0 or cost is not None and cost < 0:
        raise BadBudget("--tokens and --cost are 0 or more (leave one out for no limit of that kind)")
    with _connect(conninfo) as c:
        if c.execute("SELECT 1 FROM gw_keys WHERE username = %s", (user,)).fetchone() is None:
            raise BadBudget(f"{user} has no gateway key (is services.gateway enabled and `aicommons apply` done?)")
        c.execute("INSERT INTO gw_limits (username, period, tokens, cost) VALUES (%s, %s, %s, %s) "
                  "ON CONFLICT (username) DO UPDATE SET period = EXCLUDED.period, tokens = EXCLUDED.tokens, "
                  "cost = EXCLUDED.cost, updated_at = now()",
                  (user, period, tokens, None if cost is None else Decimal(str(cost))))
    return Budget(period=period, tokens=tokens, cost=cost)


def clear_budget(conninfo: str, user: str) -> None:
    """Back to the site default."""
    with _connect(conninfo) as c:
        c.execute("DELETE FROM gw_limits WHERE username = %s", (user,))


@dataclass
class Standing:
    """One person's usage against their budget in the current window."""

    user: str
    period: str
    window_start: str
    resets_at: str
    tokens_limit: int | None
    tokens_used: int
    tokens_reserved: int
    tokens_left: int | None
    cost_limit: float | None
    cost_used: float
    cost_left: float | None
    own_budget: bool       # False: the site default applies
    by_model_app: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def standing(conninfo: str, user: str, default: Budget, now: datetime) -> Standing:
    with _connect(conninfo) as c:
        lim = c.execute("SELECT period, tokens, cost FROM gw_limits WHERE username = %s", (user,)).fetchone()
        b = default if lim is None else Budget(period=lim[0], tokens=lim[1], cost=None if lim[2] is None else float(lim[2]))
        start, end = window_start(b.period, now), window_end(b.period, now)
        w = c.execute("SELECT tokens_used, tokens_reserved, cost_used FROM gw_windows WHERE username = %s AND "
                      "period = %s AND window_start = %s", (user, b.period, start)).fetchone() or (0, 0, Decimal(0))
        rows = c.execute("SELECT model, app, sum(requests), sum(prompt_tokens), sum(completion_tokens), sum(cost) "
                         "FROM gw_usage WHERE username = %s AND hour >= %s AND hour < %s GROUP BY model, app "
                         "ORDER BY model, app", (user, start, end)).fetchall()
    used, reserved, cost_used = int(w[0]), int(w[1]), float(w[2])
    return Standing(
        user=user, period=b.period, window_start=start.isoformat(), resets_at=end.isoformat(),
        tokens_limit=b.tokens, tokens_used=used, tokens_reserved=reserved,
        tokens_left=None if b.tokens is None else max(b.tokens - used - reserved, 0),
        cost_limit=b.cost, cost_used=cost_used, cost_left=None if b.cost is None else max(b.cost - cost_used, 0.0),
        own_budget=lim is not None,
        by_model_app=[{"model": m, "app": a, "requests": int(n), "prompt_tokens": int(p), "completion_tokens": int(q),
                       "cost": float(k)} for m, a, n, p, q, k in rows])


def site_usage(conninfo: str, now: datetime, days: int = 30, bucket: str = "day") -> dict:
    """Everyone's usage over time: per bucket (hour or day) and person, tokens and cost; plus totals
    per person x model x app over the whole span (the operator's table and chart)."""
    if bucket not in ("hour", "day"):
        raise BadBudget(f"bucket {bucket!r}: use hour or day")
    if not 1 <= days <= 366:
        raise BadBudget(f"days {days}: use 1 to 366")
    since = (now - timedelta(days=days)).replace(minute=0, second=0, microsecond=0)
    with _connect(conninfo) as c:
        series = c.execute(
            "SELECT date_trunc(%s, hour, 'UTC') AS t, username, sum(prompt_tokens), sum(completion_tokens), sum(cost) "
            "FROM gw_usage WHERE hour >= %s GROUP BY t, username ORDER BY t, username", (bucket, since)).fetchall()
        totals = c.execute(
            "SELECT username, model, app, sum(requests), sum(prompt_tokens), sum(completion_tokens), sum(cost) "
            "FROM gw_usage WHERE hour >= %s GROUP BY username, model, app ORDER BY username, model, app",
            (since,)).fetchall()
    return {"since": since.isoformat(), "bucket": bucket,
            "series": [{"t": t.isoformat(), "user": u, "prompt_tokens": int(p), "completion_tokens": int(q),
                        "cost": float(k)} for t, u, p, q, k in series],
            "totals": [{"user": u, "model": m, "app": a, "requests": int(n), "prompt_tokens": int(p),
                        "completion_tokens": int(q), "cost": float(k)} for u, m, a, n, p, q, k in totals]}
