"""`benchmark bdrate`: BD-rate and BD-metric of every method against the unrestored input, with their 95 % paired
bootstrap intervals over the images where every point has a per-image file -> bdrate.csv."""
from __future__ import annotations

import sys
from pathlib import Path

from benchmark.boards import leaderboard
from benchmark.boards.bdrate import build, format_table, interval_summary, remove_refused, write
from benchmark.boards.targets import bdrate_target as target


def main(args) -> int:
    from datamodules.classification import default_imagenet_folder
    from datamodules.sources import DatasetError, default_data_root

    boards = Path(args.boards) if args.boards is not None else leaderboard.LEADERBOARD_DIR
    imagenet = Path(args.imagenet) if args.imagenet else default_imagenet_folder()
    photos = getattr(args, "photos", None)
    photo_roots = [Path(photos)] if photos else [r for r in [default_data_root()] if r is not None]
    refused: list[dict] = []
    try:
        rows, notes = build(boards, imagenet, progress=not args.quiet, refused=refused, photo_roots=photo_roots)
    except leaderboard.LeaderboardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DatasetError, FileNotFoundError) as e:  # the ImageNet folder the rates are computed from
        print(f"error: --imagenet {imagenet}: {e}", file=sys.stderr)
        return 2
    out = target(args.leaderboard)
    removed = remove_refused(out, refused)  # a curve refused now: its row from an earlier run is stale
    if removed:
        print(f"{removed} row(s) of refused curves removed from {out} (see `left out` below)")
    if rows:
        write(out, rows)
        print(format_table(rows))
        print()
        for line in interval_summary(rows):
            print(line)
        print(f"{len(rows)} rows -> {out}")
    else:
        print("no curve pair with enough points: nothing written")
    for n in notes:
        print(f"left out: {n}", file=sys.stderr)
    if args.plot:
        from benchmark.boards.rd_plots import write_plots

        for title, p in write_plots(boards, Path(args.plot), out).items():
            print(f"{title}: {p}")
    return 0 if rows else 1
