"""`benchmark import-paper`: a paper's published tables as source=paper rows."""
from __future__ import annotations

import sys
from pathlib import Path


def main(args) -> int:
    from benchmark.boards import leaderboard
    from benchmark.boards.published import paper_classification_rows, paper_fidelity_rows, published_dir

    boards = {"fidelity": paper_fidelity_rows(args.paper), "classification": paper_classification_rows(args.paper)}
    if not any(boards.values()):
        where = published_dir() or "../shared/published (not found; set $CARBENCH_PUBLISHED)"
        print(f"error: no published fidelity or classification rows for paper {args.paper!r} in {where}",
              file=sys.stderr)
        return 2
    layout = {"fidelity": (leaderboard.FIDELITY_KEY, leaderboard.FIDELITY_COLUMNS),
              "classification": (leaderboard.TASK_KEY, leaderboard.TASK_COLUMNS)}
    folder = Path(args.leaderboard_dir) if args.leaderboard_dir else None
    for board, rows in boards.items():
        if rows:
            target = folder / f"{board}.csv" if folder else leaderboard.default_path(board)
            path = leaderboard.upsert(target, rows, key=layout[board][0], columns=layout[board][1])
            print(f"{len(rows)} source=paper rows of {args.paper} -> {path}")
    return 0
