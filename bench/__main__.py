"""``make bench`` / ``python -m bench``: every scenario in one run, side by side with baselines.

A full run writes docs/benchmarks.md and docs/benchmarks.png. ``--quick`` (smaller sizes, a
smoke check) and ``--only`` (some groups) write to a temporary directory unless ``--out`` says
where, so they never overwrite the reference figures by accident.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    # before litellm is imported anywhere: no cost-map download, no telemetry
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    from . import machine, plot, report, runner
    from .context import Context

    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    parser.add_argument(
        "--only", metavar="NAME[,NAME]", help=f"run only these groups: {', '.join(runner.NAMES)}"
    )
    parser.add_argument("--out", type=Path, help="directory for benchmarks.md and .png")
    args = parser.parse_args(argv)
    names = runner.NAMES
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(runner.NAMES))
        if unknown:
            parser.error(
                f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(runner.NAMES)}"
            )
    partial = args.quick or args.only
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="tokenspool-bench-")) if partial else REPO / "docs"
    )

    command = "python -m bench" + (
        ""
        if argv is None and len(sys.argv) == 1
        else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = machine.load()
    tree_before = machine.tree()
    t0 = time.monotonic()
    ctx = Context(quick=args.quick)
    try:
        groups = runner.run(ctx, names)
        facts = machine.facts(ctx.redis_url)
        if facts["tokenspool code measured"] != tree_before:
            facts["tokenspool code measured"] = (
                f"CHANGED DURING THE RUN: {tree_before} at the start, "
                f"{facts['tokenspool code measured']} at the end"
            )
    finally:
        ctx.close()
    seconds = time.monotonic() - t0
    figure = out / "benchmarks.png"
    drew = plot.draw(
        ctx,
        figure,
        f"tokenspool benchmarks, {started}, "
        f"{os.cpu_count()} cores" + (" (--quick)" if args.quick else ""),
    )
    info = report.RunInfo(
        command=command,
        started=started,
        seconds=seconds,
        quick=args.quick,
        only=names if args.only else None,
        machine=facts,
        load_before=load_before,
        load_after=machine.load(),
        figure=figure.name if drew else None,
    )
    report.write(out / "benchmarks.md", info, ctx, groups)
    runner.log(
        f"wrote {out / 'benchmarks.md'}"
        + (
            f" and {figure}"
            if drew
            else " (no figure: matplotlib missing, pip install -e '.[bench]')"
        )
    )
    print(report.render_targets(ctx))
    return 1 if any(g.error for g, _ in groups) else 0


if __name__ == "__main__":
    sys.exit(main())
