"""`benchmark run`: evaluate methods (fidelity, or downstream tasks with --task) and upsert leaderboard rows."""
from __future__ import annotations

import os
import sys
import time

from benchmark.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    _board_hint,
    _csv,
    _method_label,
    _print_dry_run,
    imagenet_dataset,
    parse_corruptions,
)
from datamodules.corruptions import CorruptionError


def main(args) -> int:
    from lightning_modules.registry import MethodError, resolve_preset

    try:
        corruptions = parse_corruptions(args.qf, args.codec, args.passes, args.seed, args.subsampling)
    except CorruptionError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    methods = _csv(args.method)
    from benchmark.evaluate.task_specs import NO_RESTORATION

    try:  # fail fast on names, before any image is read
        for m in methods:
            if not (args.task and m in NO_RESTORATION):
                resolve_preset(m, None if "." in m else args.preset)
    except MethodError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from benchmark.metrics import (
        DEFAULT_METRICS,
        DISTRIBUTION_METRICS,
        MissingExtra,
        PerceptualWeightsError,
        PerceptualWeightsMissing,
        SetLevelDDPError,
        fidelity_metrics,
    )

    try:
        metrics = fidelity_metrics(args.metrics)
    except ValueError as e:
        print(f"error: --metrics: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.inception_weights and not set(metrics) & set(DISTRIBUTION_METRICS):
        print(f"error: --inception-weights is read by --metrics ...,{','.join(DISTRIBUTION_METRICS)} only; got "
              f"--metrics {','.join(metrics)}", file=sys.stderr)
        return EXIT_USAGE
    if args.task:
        if metrics != DEFAULT_METRICS:
            print("error: --metrics applies to fidelity runs; --task runs score their task's metrics",
                  file=sys.stderr)
            return EXIT_USAGE
        return _run_tasks(args, methods, corruptions)
    from benchmark.boards import leaderboard
    from benchmark.evaluate.fidelity import REFERENCE_METHOD, FidelityRequest, format_table, run_fidelity

    if args.dry_run:
        ref = [] if args.no_reference else [REFERENCE_METHOD]
        labels = [_method_label(m, None if m == REFERENCE_METHOD else args.preset)
                  for m in dict.fromkeys(ref + methods)]
        jobs = [(m, d, c.key) for m in labels for d in _csv(args.dataset) for c in corruptions]
        return _print_dry_run(["method", "dataset", "corruption"], jobs, "rows")

    req = FidelityRequest(methods=methods, corruptions=corruptions, datasets=_csv(args.dataset),
                          channels=args.channels, data_root=args.data_root, preset=args.preset, weights=args.weights,
                          cache_dir=args.cache_dir, use_cache=not args.no_cache, accelerator=args.accelerator,
                          devices=args.devices, add_reference=not args.no_reference, progress=not args.quiet,
                          qf_override=args.qf_override, metrics=metrics, inception_weights=args.inception_weights,
                          tile=args.tile, memory_budget=args.memory_budget)
    t0 = time.time()
    profile: dict = {}
    try:
        rows, failures = run_fidelity(req, profile)
    except SetLevelDDPError as e:  # fid/kid with several devices: checked before any job
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (PerceptualWeightsMissing, PerceptualWeightsError, MissingExtra) as e:  # checked before any job
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    rows, bad_rows = leaderboard.split_valid(rows)  # a row the board refuses must not cost the others
    path = None
    notes = []
    if rows:  # written before anything else can go wrong: measured rows are never lost
        target = leaderboard.fidelity_target(args.leaderboard)
        notes = _per_image(target, "fidelity", rows, leaderboard.FIDELITY_KEY)
        path = leaderboard.upsert(target, rows)
    print(format_table(rows))
    for note in notes:
        print(f"note: {note}")
    if path is not None:
        print(f"\n{len(rows)} rows -> {path}{_board_hint(args.leaderboard)}")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        n = max(r["n_skipped"] for r in rows if r["dataset"] == dataset)
        if n:
            print(f"note: {n} unusable image(s) skipped in {dataset} (see the warnings above)")
        n_gray = max(r["n_gray"] for r in rows if r["dataset"] == dataset)
        if n_gray:
            print(f"note: {n_gray} gray image(s) in {dataset} scored on their one channel inside its colour rows "
                  f"(n_gray; see the warning above)")
    for f in failures:
        print(f"FAILED {f.method} on {f.dataset}: {f.error}", file=sys.stderr)
    for msg in bad_rows:
        print(f"FAILED, not written: {msg}", file=sys.stderr)
    total = time.time() - t0
    cached = profile["cached_reference_jobs"]
    print(f"done in {total:.1f} s (model forwards {profile['forward_seconds']:.1f} s, "
          f"{100 * profile['forward_seconds'] / max(total, 1e-9):.0f} %"
          + (f"; {cached} reference job(s) read from the score cache" if cached else "") + ")")
    return EXIT_FAILED if failures or bad_rows else 0


def _per_image(board_path, board: str, rows: list[dict], key) -> list[str]:
    """Per-image files beside the board and the rows' paired delta columns (benchmark.boards.per_image); a failure
    here never costs the rows themselves, which are written next."""
    from benchmark.boards import leaderboard, per_image

    try:
        existing = leaderboard.read(board_path).to_dict("records")
    except (leaderboard.LeaderboardError, OSError):
        existing = []
    try:
        return per_image.record(board_path, board, rows, key, existing)
    except Exception as e:  # noqa: BLE001
        for r in rows:
            for c in per_image.DELTA_COLUMNS:
                r[c] = ""
        return [f"per-image files / paired intervals failed: {type(e).__name__}: {e}"]


def _run_tasks(args, methods, corruptions) -> int:
    from benchmark.boards import leaderboard
    from benchmark.evaluate.tasks import TaskRequest, check_request, format_task_table, run_tasks

    tasks = _csv(args.task)
    dataset = "shapes" if args.dataset == "samples" else args.dataset
    if dataset == "shapes" and tasks == ["classification"] and os.environ.get("CARBENCH_IMAGENET"):
        dataset = imagenet_dataset(os.environ["CARBENCH_IMAGENET"])  # real photos and a real classifier
        print(f"classification on $CARBENCH_IMAGENET: --dataset {dataset}", file=sys.stderr)
    # --qf-override and a CSV --leaderboard were refused before (benchmark.cli.usage)
    try:
        check_request(tasks, dataset)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.dry_run:
        ref = [] if args.no_reference else ["clean+direct (reference)"]
        jobs = [(t, m, dataset, c.key) for t in tasks for m in dict.fromkeys(ref + methods) for c in corruptions]
        return _print_dry_run(["task", "method", "dataset", "corruption"], jobs, "jobs")
    req = TaskRequest(tasks=tasks, methods=methods, corruptions=corruptions, dataset=dataset, n_images=args.n_images,
                      seed=args.seed, task_model=args.task_model, task_weights=args.task_weights, preset=args.preset,
                      weights=args.weights, batch_size=args.batch_size, tile=args.tile, cache_dir=args.cache_dir,
                      use_cache=not args.no_cache, accelerator=args.accelerator, devices=args.devices,
                      progress=not args.quiet, imagenet_c_resave=args.imagenet_c_resave, wnids=args.wnids,
                      seg_mode=args.seg_mode, add_reference=not args.no_reference, memory_budget=args.memory_budget)
    t0 = time.time()
    rows, failures = run_tasks(req)
    if int(os.environ.get("RANK", "0")) != 0:  # DDP: rank 0 reports and writes
        return EXIT_FAILED if failures else 0
    bad_rows = []
    for task, task_rows in rows.items():
        task_rows, bad = leaderboard.split_valid(task_rows, leaderboard.TASK_COLUMNS)  # one bad row costs only itself
        bad_rows += bad
        path = None
        if task_rows:  # written first: measured rows are never lost
            folder = args.leaderboard or str(leaderboard.user_results_dir())
            notes = _per_image(f"{folder}/{task}.csv", task, task_rows, leaderboard.TASK_KEY)
            path = leaderboard.upsert(f"{folder}/{task}.csv", task_rows, leaderboard.TASK_KEY, leaderboard.TASK_COLUMNS)
        print(format_task_table(task, task_rows))
        for note in notes if task_rows else ():
            print(f"note: {note}")
        if path is not None:
            from benchmark.boards.plots import plot_task_board

            first = task_rows[0]  # its headline metric (top1, map or consistency_map), data set and model
            png = plot_task_board(path, first["metric"], path.with_suffix(".png"), first["dataset"],
                                  model=first["model"])
            print(f"{len(task_rows)} rows -> {path}" + (f" (plot: {png})" if png else "") +
                  _board_hint(args.leaderboard) + "\n")
    for f in failures:
        print(f"FAILED {f.method} on {f.dataset}: {f.error}", file=sys.stderr)
    for msg in bad_rows:
        print(f"FAILED, not written: {msg}", file=sys.stderr)
    print(f"done in {time.time() - t0:.1f} s")
    return EXIT_FAILED if failures or bad_rows else 0
