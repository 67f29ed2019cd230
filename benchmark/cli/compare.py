"""`benchmark compare`: a new method beside every baseline (fidelity and task boards, report)."""
from __future__ import annotations

import sys

from benchmark.cli.common import (
    EXIT_USAGE,
    _csv,
    baseline_methods,
)


def main(args) -> int:
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
