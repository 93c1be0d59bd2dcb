"""``make bench``: the benchmark suite is not written yet; say so instead of pretending."""

from __future__ import annotations

import sys

sys.stderr.write(
    "tokenspool: the benchmark suite (baselines side by side, docs/benchmarks.md) is not "
    "written yet; see the performance issue. Nothing was measured.\n"
)
sys.exit(2)
