"""`benchmark migrate-boards`: fill weights_sha256 on boards written before the column existed."""
from __future__ import annotations

import sys
from pathlib import Path

from benchmark.cli.common import (
    EXIT_FAILED,
)


def main(args) -> int:
    """Fill `weights_sha256` in boards written before it existed (measured rows whose weights file resolves)."""
    from benchmark.boards import leaderboard

    folder = Path(args.leaderboard) if args.leaderboard else leaderboard.LEADERBOARD_DIR
    for board in ("fidelity", "classification", "detection", "segmentation"):
        path = folder / f"{board}.csv"
        if path.is_file():
            try:
                n = leaderboard.add_weights_hashes(path, board)
            except leaderboard.LeaderboardError as e:
                print(f"error: {e}", file=sys.stderr)
                return EXIT_FAILED
            print(f"{path}: weights_sha256 filled in {n} row(s)")
    return 0
