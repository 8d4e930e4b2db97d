"""The quick benchmarks still run to the end against today's code (they had rotted unseen: the
gateway's benchmark site was refused by a newer validation, the plan of 5,000 users by the
per-user Redis ports, and apply's one-user change counted one step where three are right).

REAL: each benchmark as a user runs it (its own subprocesses, PostgreSQL 15 for the gateway's);
the gateway's at a small size (4 streams, 1 round). Nothing here looks at a time: only that each
finishes and prints its report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bench,env,report", [
    ("plan.py", {}, " 5000 "),
    ("apply.py", {}, "one-user change plan+apply"),
    ("gateway.py", {"BENCH_STREAMS": "4", "BENCH_ROUNDS": "1", "BENCH_PEOPLE": "2"}, "TTFT added"),
])
def test_benchmark_runs_to_its_report(bench, env, report):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / bench)], capture_output=True, text=True,
                         env={**os.environ, **env}, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert report in out.stdout
