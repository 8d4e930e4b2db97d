"""`/metrics` in Prometheus' text format, read from the usage table: the counters survive a
restart and agree across gateway instances (they are sums of what was settled, not process memory)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

USAGE = ("SELECT username, model, app, sum(requests), sum(prompt_tokens), sum(completion_tokens), sum(cost), "
         "sum(unmetered) FROM gw_usage GROUP BY username, model, app ORDER BY 1, 2, 3")
WINDOWS = ("SELECT DISTINCT ON (username) username, period, tokens_used, tokens_reserved, cost_used FROM gw_windows "
           "WHERE window_start <= %s ORDER BY username, window_start DESC")

SERIES = (
    ("requests_total", "Requests settled", 3),
    ("prompt_tokens_total", "Prompt tokens, as the model server counted them", 4),
    ("completion_tokens_total", "Completion tokens, as the model server counted them", 5),
    ("cost_total", "Cost by the site's price table", 6),
    ("unmetered_requests_total", "Requests cut short before the model server reported usage (estimate charged)", 7),
)


@dataclass
class Counters:
    """This process's refusals (not kept: a restart starts them at 0, which Prometheus' rate() handles)."""

    rejected: Counter[str] = field(default_factory=Counter)


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_metrics(usage_rows, window_rows, counters: Counters) -> str:
    out: list[str] = []
    for name, help_, col in SERIES:
        out += [f"# HELP aicommons_gateway_{name} {help_}.", f"# TYPE aicommons_gateway_{name} counter"]
        for r in usage_rows:
            out.append(f'aicommons_gateway_{name}{{user="{_label(r[0])}",model="{_label(r[1])}",app="{_label(r[2])}"}} '
                       f"{float(r[col]):g}" if col == 6 else
                       f'aicommons_gateway_{name}{{user="{_label(r[0])}",model="{_label(r[1])}",app="{_label(r[2])}"}} '
                       f"{int(r[col])}")
    out += ["# HELP aicommons_gateway_window_tokens Tokens used and reserved in each person's current budget window.",
            "# TYPE aicommons_gateway_window_tokens gauge"]
    for u, period, used, reserved, _cost in window_rows:
        out.append(f'aicommons_gateway_window_tokens{{user="{_label(u)}",period="{period}",state="used"}} {int(used)}')
        out.append(f'aicommons_gateway_window_tokens{{user="{_label(u)}",period="{period}",state="reserved"}} {int(reserved)}')
    out += ["# HELP aicommons_gateway_rejected_total Requests refused by this process, by reason.",
            "# TYPE aicommons_gateway_rejected_total counter"]
    for reason in ("unauthorized", "budget"):
        out.append(f'aicommons_gateway_rejected_total{{reason="{reason}"}} {counters.rejected[reason]}')
    return "\n".join(out) + "\n"


async def render_metrics(conn, counters: Counters, now: datetime) -> str:
    usage = await (await conn.execute(USAGE)).fetchall()
    windows = await (await conn.execute(WINDOWS, (now,))).fetchall()
    return format_metrics(usage, windows, counters)
