"""`benchmark efficiency`: parameters, FLOPs and latency of methods, upserted into the efficiency board."""
from __future__ import annotations

import sys

from benchmark.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    METHOD_PAPER,
    _csv,
)


def main(args) -> int:
    from benchmark.evaluate.efficiency import format_table, measure_forms, paper_rows, write
    from lightning_modules import available

    names: list[str] = []
    for pattern in _csv(args.method):
        found = available(pattern)
        if not found:
            print(f"error: no method matches {pattern!r}; see `benchmark list`", file=sys.stderr)
            return EXIT_USAGE
        names += [n for n in found if n not in names and n.split(".")[0] != "jpeg"]  # jpeg: no network
    rows, failed = [], []
    for name in names:
        print(f"measuring {name} at {args.size}x{args.size} ...", flush=True)
        try:
            rows += measure_forms(name, args.size, args.repeat)
        except Exception as e:  # noqa: BLE001 -- named, and the other methods are still measured
            failed.append(name)
            print(f"error: {name}: {type(e).__name__}: {e}", file=sys.stderr)
    rows += paper_rows(sorted({METHOD_PAPER[n.split(".")[0]] for n in names if n.split(".")[0] in METHOD_PAPER}))
    print(format_table(rows))
    if rows and not args.dry_run:
        write(rows, args.leaderboard)
    return EXIT_FAILED if failed else 0
