"""`benchmark report`: Markdown + static HTML leaderboard and PNG plots."""
from __future__ import annotations


def main(args) -> int:
    from benchmark.boards.report import build

    written = build(args.boards, args.out)
    for what, path in written.items():
        print(f"{what}: {path}")
    return 0
