"""`benchmark check`: re-run the embedded suite and compare with the committed leaderboards (regression gate).

The suite is the README's offline commands; each re-run writes to a scratch folder, never to the committed boards.
Every committed `source=measured` row that the re-run produces again is compared metric by metric with the
tolerances of `leaderboards/tolerances.yaml`; a row the re-run produces that the committed board lacks is a
failure too (the board is stale). Exit status 0: all within tolerance; 1: regressions (a table names each one).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

# the suites (SUITE, IMAGENET_SUITE) live in benchmark.cli.common: the command line checks --suite before the boards
# (pandas) are imported, which happens when a check runs
from benchmark.cli.common import EXIT_USAGE, IMAGENET_SUITE, SUITE, _csv  # noqa: F401 -- IMAGENET_SUITE re-exported

if TYPE_CHECKING:
    from benchmark.boards.check import Finding


def run_check(suites: list[str] | None = None, committed_dir: str | Path | None = None,
              tolerance_file: str | Path | None = None, methods: str | None = None,
              quiet: bool = True) -> tuple[int, list[Finding]]:
    """Re-run `suites` (default all) into a scratch folder and compare with `committed_dir` (default
    leaderboards/). `methods` replaces the fidelity suite's method list (the rows named)."""
    from benchmark.boards import leaderboard
    from benchmark.boards.check import TASK_BOARDS, Finding, compare, load_tolerances
    from benchmark.cli import main as cli_main

    committed_dir = Path(committed_dir) if committed_dir else leaderboard.LEADERBOARD_DIR
    tolerances = load_tolerances(tolerance_file)
    suites = suites or list(SUITE)
    unknown = [s for s in suites if s not in SUITE]
    if unknown:
        raise ValueError(f"unknown check suite(s) {unknown}; suites: {list(SUITE)}")
    findings: list[Finding] = []
    rc = 0
    with tempfile.TemporaryDirectory(prefix="carbench-check-") as scratch:
        for suite in suites:
            argv = list(SUITE[suite])
            if suite in ("imagenet", "photos-detection"):
                from datamodules.classification import default_imagenet_folder

                folder = default_imagenet_folder()
                if folder is None:
                    print(f"check: {suite} suite skipped (no ImageNet sample: set $CARBENCH_IMAGENET)", flush=True)
                    continue
                argv += ["--dataset", f"imagenet-flat:{folder}"]
            if suite == "photos-detection":
                from lightning_modules.task_models.human_models import HumanModelsError, human_model_files

                try:
                    human_model_files("centernet")
                except HumanModelsError as e:
                    print(f"check: {suite} suite skipped ({e})", flush=True)
                    continue
            if suite == "photos-segmentation":
                from datamodules.sources import default_data_root
                from lightning_modules.task_models.human_models import HumanModelsError, human_model_files

                root = default_data_root()
                if root is None or not (root / "BSDS500_test").is_dir():
                    print(f"check: {suite} suite skipped (no BSDS500_test: set $CARBENCH_DATA)", flush=True)
                    continue
                try:
                    human_model_files("selfie")
                except HumanModelsError as e:
                    print(f"check: {suite} suite skipped ({e})", flush=True)
                    continue
                argv += ["--dataset", f"photos:{root / 'BSDS500_test'}"]
            if suite == "fidelity" and methods:
                argv[argv.index("--method") + 1] = methods
            print(f"check: benchmark {' '.join(argv)}", flush=True)
            target = Path(scratch) / ("fidelity.csv" if suite == "fidelity" else "")
            argv += ["--leaderboard", str(target)] + (["--quiet"] if quiet else [])
            if cli_main(argv) != 0:
                rc = 1
                findings.append(Finding(suite, "(the run)", "*", "-", "failed", None, "REGRESSION"))
            boards = ["fidelity"] if suite == "fidelity" else list(TASK_BOARDS)
            for board in boards:
                findings += compare(board, committed_dir / f"{board}.csv", Path(scratch) / f"{board}.csv",
                                    tolerances.get(board, {}))
    if any(f.failed for f in findings):
        rc = 1
    return rc, findings



def main(args) -> int:
    from benchmark.boards.check import format_findings
    from benchmark.cli.check import run_check

    try:
        rc, findings = run_check(_csv(args.suite) if args.suite else None, args.committed, args.tolerances,
                                 args.method)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(format_findings(findings, all_rows=args.all))
    print("check: " + ("FAILED" if rc else "passed"))
    return rc
