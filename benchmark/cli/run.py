"""`benchmark run`: evaluate methods (fidelity, or downstream tasks with --task) and upsert leaderboard rows."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

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
    writer = BoardWriter(leaderboard.fidelity_target(args.leaderboard), "fidelity", leaderboard.FIDELITY_KEY,
                         leaderboard.FIDELITY_COLUMNS)
    try:
        _, failures = run_fidelity(req, profile, on_rows=writer)  # each finished job's rows written as it ends
    except SetLevelDDPError as e:  # fid/kid with several devices: checked before any job
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (PerceptualWeightsMissing, PerceptualWeightsError, MissingExtra) as e:  # checked before any job
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return _interrupted([writer])
    rows = writer.rows
    print(format_table(rows))
    for note in writer.notes:
        print(f"note: {note}")
    if writer.written:
        print(f"\n{writer.written} rows -> {writer.path}{_board_hint(args.leaderboard)}")
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
    for msg in writer.bad:
        print(f"FAILED, not written: {msg}", file=sys.stderr)
    unwritten = writer.finish()
    total = time.time() - t0
    cached = profile["cached_reference_jobs"]
    print(f"done in {total:.1f} s (model forwards {profile['forward_seconds']:.1f} s, "
          f"{100 * profile['forward_seconds'] / max(total, 1e-9):.0f} %"
          + (f"; {cached} reference job(s) read from the score cache" if cached else "") + ")")
    return EXIT_FAILED if failures or writer.bad or unwritten else 0


class BoardWriter:
    """`on_rows` of the runners: each finished job's valid rows get their per-image files and delta columns, then
    go onto the board at once, so an interrupted run keeps its finished jobs (a re-run upserts the same keys: the
    final board is the same). A write that fails (disk full, folder made read-only mid-run) keeps the rows in
    memory (`rows`, printed at the end), says so naming the board, and is retried after the next job and at the
    end; the remaining jobs still run."""

    def __init__(self, path, board: str, key, columns, enabled: bool = True):
        self.path, self.board, self.key, self.columns, self.enabled = Path(path), board, key, columns, enabled
        self.rows: list[dict] = []  # every valid row of this run, in job order
        self.pending: list[dict] = []  # rows not on the board yet
        self.bad: list[str] = []  # rows the board's schema refuses (never written)
        self.notes: list[str] = []
        self.written = 0
        self.error: Exception | None = None

    def __call__(self, job_rows: list[dict]) -> None:
        from benchmark.boards import leaderboard

        good, bad = leaderboard.split_valid(job_rows, self.columns)  # one bad row costs only itself
        self.bad += bad
        self.rows += good
        if not good or not self.enabled:
            return
        # a row's reference (jpeg / direct) may be on the board from an earlier job, or still pending here
        self.notes += _per_image(self.path, self.board, good, self.key, self.pending)
        self.pending += good
        self.flush()

    def flush(self) -> bool:
        """Write the pending rows; False (the error kept and reported once) when the board refuses them."""
        from benchmark.boards import leaderboard

        if not self.pending:
            return True
        try:
            leaderboard.upsert(self.path, self.pending, self.key, self.columns)
        except (OSError, leaderboard.LeaderboardError) as e:
            if self.error is None:
                print(f"error: {self.path} cannot be written ({e}); {len(self.pending)} row(s) kept in memory, "
                      f"retried after the next job; the run goes on", file=sys.stderr)
            self.error = e
            return False
        if self.error is not None:
            print(f"note: {self.path}: the write retried and succeeded ({len(self.pending)} row(s))",
                  file=sys.stderr)
        self.written += len(self.pending)
        self.pending, self.error = [], None
        return True

    def finish(self) -> int:
        """The last try; the number of rows still not written (each named on stderr; the table above shows them)."""
        from benchmark.boards import leaderboard

        if self.flush() or not self.pending:
            return 0
        print(f"error: {self.path} cannot be written ({self.error}): {len(self.pending)} row(s) not written (their "
              f"values are in the table above; free space or fix the folder, then re-run):", file=sys.stderr)
        for r in self.pending:
            print("  not written: " + " ".join(f"{k}={leaderboard._fmt(r.get(k, ''))}" for k in self.key
                                               if leaderboard._fmt(r.get(k, "")) != ""), file=sys.stderr)
        return len(self.pending)


def _interrupted(writers: list[BoardWriter]) -> int:
    """Ctrl-C / SIGINT: the finished jobs' rows are on their boards already; the job under way is lost."""
    for w in writers:
        w.flush()
        kept = f"{w.written} row(s) of finished jobs kept on {w.path}" if w.written else f"nothing written to {w.path}"
        lost = f"; {len(w.pending)} row(s) not written ({w.error})" if w.pending else ""
        print(f"interrupted: {kept}{lost}; a re-run redoes the unfinished jobs", file=sys.stderr)
    return 130


def _per_image(board_path, board: str, rows: list[dict], key, pending: list[dict] = ()) -> list[str]:
    """Per-image files beside the board and the rows' paired delta columns (benchmark.boards.per_image), the
    references looked up among the rows, `pending` (this run's rows not on the board yet) and the board's rows; a
    failure here never costs the rows themselves, which are written next."""
    from benchmark.boards import leaderboard, per_image

    try:
        existing = list(pending) + leaderboard.read(board_path).to_dict("records")
    except (leaderboard.LeaderboardError, OSError):
        existing = list(pending)
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
                      seg_mode=args.seg_mode, add_reference=not args.no_reference, memory_budget=args.memory_budget,
                      min_mask_share=args.min_mask_share)
    t0 = time.time()
    folder = args.leaderboard or str(leaderboard.user_results_dir())
    rank0 = int(os.environ.get("RANK", "0")) == 0  # DDP: rank 0 reports and writes
    writers = {t: BoardWriter(f"{folder}/{t}.csv", t, leaderboard.TASK_KEY, leaderboard.TASK_COLUMNS, rank0)
               for t in tasks}
    try:
        _, failures = run_tasks(req, on_rows=lambda task, job_rows: writers[task](job_rows))  # written per job
    except KeyboardInterrupt:
        return _interrupted([w for w in writers.values() if w.rows]) if rank0 else 130
    if not rank0:
        return EXIT_FAILED if failures else 0
    unwritten = 0
    for task, writer in writers.items():
        task_rows = writer.rows
        print(format_task_table(task, task_rows))
        for note in writer.notes:
            print(f"note: {note}")
        unwritten += writer.finish()
        if writer.written:
            from benchmark.boards.plots import plot_task_board

            path = writer.path
            first = task_rows[0]  # its headline metric (top1, map or consistency_map), data set and model
            png = plot_task_board(path, first["metric"], path.with_suffix(".png"), first["dataset"],
                                  model=first["model"])
            print(f"{writer.written} rows -> {path}" + (f" (plot: {png})" if png else "") +
                  _board_hint(args.leaderboard) + "\n")
    for f in failures:
        print(f"FAILED {f.method} on {f.dataset}: {f.error}", file=sys.stderr)
    bad_rows = [msg for w in writers.values() for msg in w.bad]
    for msg in bad_rows:
        print(f"FAILED, not written: {msg}", file=sys.stderr)
    print(f"done in {time.time() - t0:.1f} s")
    return EXIT_FAILED if failures or bad_rows or unwritten else 0
