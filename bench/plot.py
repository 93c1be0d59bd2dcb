"""Draws docs/benchmarks.png: latency percentiles, relay latency and throughput vs
concurrency, and CPU per chunk, from one run's figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from .context import Context

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def draw(ctx: Context, path: Path, title: str) -> bool:
    """Write the figure; False if matplotlib is not installed (``pip install .[bench]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    _latencies(ctx, axes[0][0])
    _relay(ctx, axes[0][1])
    _throughput(ctx, axes[1][0])
    _cpu(ctx, axes[1][1])
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _ms(key: str, ctx: Context) -> float:
    value = ctx.get(key)
    return value * 1000 if value is not None else math.nan


def _latencies(ctx: Context, ax: Axes) -> None:
    rows = [
        ("pickup\n(POST→job.started)", "e2e.pickup"),
        ("TTFT overhead\ntokenspool", "e2e.ttft"),
        ("TTFT overhead\nlitellm direct", "baseline.litellm.ttft"),
        ("TTFT overhead\nhttpx direct", "baseline.httpx.ttft"),
        ("SSE path\n(Redis→client)", "e2e.sse_path"),
        ("Redis XADD→\nXREAD wake-up", "redis.wakeup"),
    ]
    labels = [label for label, _ in rows]
    p50 = [_ms(f"{key}_p50", ctx) for _, key in rows]
    p99 = [_ms(f"{key}_p99", ctx) for _, key in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], p50, 0.4, label="p50")
    ax.bar([i + 0.2 for i in x], p99, 0.4, label="p99")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title("Latency percentiles at 20 new jobs/s (1 worker)")
    for y, style in ((5, ":"), (25, "--")):
        ax.axhline(y, color="grey", linestyle=style, linewidth=0.8)
    ax.legend(fontsize=8, title="dotted/dashed: pickup targets 5/25 ms", title_fontsize=7)


def _relay(ctx: Context, ax: Axes) -> None:
    series = ctx.series.get("relay") or []
    if series:
        n = [s[0] for s in series]
        for i, label in ((1, "p50"), (2, "p99"), (3, "max")):
            ax.plot(n, [s[i] * 1000 for s in series], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xticks(n, [str(v) for v in n])
    ax.set_yscale("log")
    ax.axhline(2, color="grey", linestyle=":", linewidth=0.8)
    ax.axhline(15, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("concurrent streams (20 chunks/s each)")
    ax.set_ylabel("relay latency, ms (log)")
    ax.set_title("Relay latency vs concurrency (provider → client, 1 worker)")
    ax.legend(fontsize=8, title="targets at 500 streams: p50 2 ms, p99 15 ms", title_fontsize=7)


def _throughput(ctx: Context, ax: Axes) -> None:
    series = ctx.series.get("scaling") or []
    if series:
        workers = [str(w) for w, _ in series]
        ax.bar(
            workers, [r for _, r in series], color="tab:blue", label="tokenspool, chunks/s appended"
        )
    lines: list[tuple[str, str, object]] = [
        ("baseline.litellm.rate", "litellm direct, 1 stream", ":"),
        ("baseline.litellm.concurrent_rate", "litellm direct, concurrent", "-."),
        ("baseline.httpx.rate", "httpx direct, 1 stream", "--"),
        ("tp.litellm_path_rate", "tokenspool, 1 worker, litellm path", (0, (1, 4))),
    ]
    for key, label, style in lines:
        value = ctx.get(key)
        if value is not None:
            ax.axhline(
                value,
                linestyle=style,
                color="black",
                linewidth=0.9,
                label=f"{label}: {value:,.0f}/s",
            )
    ax.axhline(
        20_000, linestyle="-", color="tab:red", linewidth=0.9, label="target: 20,000/s per worker"
    )
    ax.set_yscale("log")
    ax.set_xlabel("worker processes (2 cores in total)")
    ax.set_ylabel("chunks/s (log)")
    ax.set_title("Throughput at saturation vs worker processes")
    ax.legend(fontsize=7, loc="lower right")


def _cpu(ctx: Context, ax: Axes) -> None:
    rows = [
        (f"tokenspool: {name}", seconds * 1e6)
        for name, seconds in sorted((ctx.series.get("cpu") or {}).items())
    ]
    for key, label in (
        ("baseline.litellm.cpu_per_chunk", "litellm direct consumer"),
        ("baseline.httpx.cpu_per_chunk", "httpx direct consumer"),
    ):
        value = ctx.get(key)
        if value is not None:
            rows.append((label, value * 1e6))
    if rows:
        ax.barh(
            [r[0] for r in rows],
            [r[1] for r in rows],
            color=["tab:blue" if r[0].startswith("tokenspool") else "tab:grey" for r in rows],
        )
    ax.set_xscale("log")
    ax.set_xlabel("CPU µs per chunk (log)")
    ax.set_title("CPU per chunk by process at saturation")
    ax.tick_params(axis="y", labelsize=8)
