"""`benchmark compare`: a new method beside every baseline (fidelity and task boards, report); `--rows A B`: two rows
of one board, paired on their per-image files (`benchmark.boards.compare_rows`)."""
from __future__ import annotations

import sys

from benchmark.cli.common import (
    EXIT_USAGE,
    _csv,
    baseline_methods,
)


def main(args) -> int:
    if args.rows is not None:
        return rows_main(args)
    from benchmark.boards import leaderboard
    from benchmark.cli import main as cli_main  # each part is the `run` command
    from lightning_modules.registry import MethodError, split_name

    try:
        mine = [split_name(m)[0] if ":" in m else m for m in _csv(args.method)]
    except MethodError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    base_names = {m.split(".")[0] for m in mine}
    baselines = baseline_methods(sorted(base_names)) if args.baselines == "all" else \
        [b for b in _csv(args.baselines) if b.split(".")[0] not in base_names]
    boards = args.boards or str(leaderboard.user_results_dir())
    methods = ",".join(mine + baselines)
    print(f"compare: {', '.join(mine)} against {', '.join(baselines) or '(no baselines)'}")
    common = ["--qf", args.qf, *(["--quiet"] if args.quiet else [])]
    rc = cli_main(["run", "--method", methods, "--dataset", args.dataset, "--leaderboard", f"{boards}/fidelity.csv",
               *common, *(["--data-root", args.data_root] if args.data_root else [])])
    if args.task:
        rc = max(rc, cli_main(["run", "--task", args.task, "--method", "jpeg," + methods, "--leaderboard", boards,
                           *common]))
        plugins = baseline_methods(sorted(base_names), restorers=False) if args.baselines == "all" else []
        if plugins and "classification" in _csv(args.task):  # feature de-drifters etc. exist for classifiers only
            rc = max(rc, cli_main(["run", "--task", "classification", "--method", ",".join(plugins), "--leaderboard",
                               boards, *common]))
    if not args.no_report:
        from benchmark.boards.report import build

        print(f"report: {build(boards)['html']}")
    return rc


def rows_main(args) -> int:
    """`compare --rows A B`: exit 0 with a paired interval, 1 when a row has no per-image values (the board values'
    unpaired difference is printed instead), 2 when a selector picks no row or several."""
    from pathlib import Path

    from benchmark.boards import compare_rows as cr
    from benchmark.boards import leaderboard

    target = Path(args.boards) if args.boards else leaderboard.LEADERBOARD_DIR
    folder, board = (target.parent, target.stem) if target.suffix.lower() == ".csv" else (target, args.board)
    a, b = (cr.parse_selector(s) for s in args.rows)
    where = cr.parse_selector(args.where) if args.where else {}
    try:
        board = board or cr.infer_board(folder, a, b, where)
        path = folder / f"{board}.csv"
        rows, columns = cr.board_rows(path, board)
        if not rows:
            raise cr.RowSelectionError(f"{path}: no such board (or an empty one)")
        ra = cr.select(rows, columns, board, a, where, "A")
        rb = cr.select(rows, columns, board, b, where, "B")
        if ra is rb:
            raise cr.RowSelectionError("both selectors pick the same row")
        result = cr.compare(path, board, ra, rb)
    except cr.RowSelectionError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(cr.report(result)))
    return 1 if result.missing or result.error else 0
