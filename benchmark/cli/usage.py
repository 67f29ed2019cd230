"""Usage errors before the heavy imports: every command's arguments checked against light name tables (no torch,
Lightning, torchvision, timm, pyiqa or pandas), so a typo is answered at once with exit status 2.

Each check raises UsageError naming the flag and its value; `benchmark.cli.main` prints it as `error: ...`. A name
only the heavy path can judge (an entry-point plugin's method, a timm classifier) passes here and is judged there.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
from pathlib import Path

from benchmark.cli.common import _csv, expand_suites, parse_corruptions
from benchmark.evaluate.task_specs import NO_RESTORATION, REAL_DATASETS, TASKS, check_request, parse_dataset
from datamodules.corruptions import CorruptionError
from datamodules.sources import DatasetError, dataset_folder, read_wnids
from lightning_modules.registry import BUILTIN_PRESETS, MethodError, check_name
from lightning_modules.task_model_names import SHAPES_MODEL_TASKS, TaskModelError, check_task_model

IMAGENET_CLASSES = 1000  # the classes of every ImageNet classifier a --wnids file describes


class UsageError(ValueError):
    """A command-line argument that cannot be used; the message names the flag and its value."""


def check(args: argparse.Namespace) -> None:
    """Refuse unusable arguments of the parsed command (UsageError)."""
    checker = CHECKS.get(args.module)
    if checker is not None:
        checker(args)


# ---- the pieces ------------------------------------------------------------------------------------------------------
def positive(args: argparse.Namespace, *dests: str) -> None:
    """Counts (`--n-images`, `--batch-size`, ...): given, they must be >= 1."""
    for dest in dests:
        value = getattr(args, dest, None)
        if value is not None and value < 1:
            raise UsageError(f"--{dest.replace('_', '-')} {value}: must be a positive integer (1 or more)")


def positive_number(args: argparse.Namespace, *dests: str) -> None:
    """Sizes (`--memory-budget GB`): given, they must be > 0."""
    for dest in dests:
        value = getattr(args, dest, None)
        if value is not None and not value > 0:
            raise UsageError(f"--{dest.replace('_', '-')} {value}: must be a positive number")


def corruptions(qf: str | None, passes: str | None = None, codec: str = "jpeg", seed: int = 0,
                subsampling: str = "420") -> None:
    try:
        parse_corruptions(qf, codec, passes, seed, subsampling)
    except CorruptionError as e:
        raise UsageError(str(e)) from None


def methods(names: list[str], preset: str | None = None, flag: str = "--method") -> None:
    for m in names:
        try:
            check_name(m, None if "." in m else preset)
        except MethodError as e:
            raise UsageError(f"{flag} {m!r}: {e}") from None


def _first_accepted(items, check, error) -> list[str]:
    """[] when `check` accepts any item, else every item's refusal (an `error` exception's message)."""
    problems = []
    for item in items:
        try:
            check(item)
            return []
        except error as e:
            problems.append(str(e))
    return problems or ["nothing named"]


def fidelity_datasets(text: str, data_root: str | None) -> None:
    """`run`'s comma list: an unusable item fails its own jobs at run time (the others are kept); a list where no
    item is usable is a usage error."""
    problems = _first_accepted(_csv(text), lambda name: dataset_folder(name, data_root), DatasetError)
    if problems:
        raise UsageError(f"--dataset {text!r}: " + "; ".join(problems))


def task_dataset(tasks: list[str], dataset: str) -> None:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise UsageError(f"--task {','.join(tasks)!r}: unknown task(s) {unknown}: use {', '.join(TASKS)}")
    try:
        parse_dataset(dataset)
        check_request(tasks, dataset)
    except ValueError as e:
        msg = str(e)
        raise UsageError(msg.replace(f"dataset {dataset!r}", f"--dataset {dataset!r}", 1) if msg.startswith(
            "dataset ") else f"--dataset {dataset!r}: {msg}") from None
    kind, root = parse_dataset(dataset)
    if root is not None and not Path(root).expanduser().is_dir():
        raise UsageError(f"--dataset {dataset!r}: folder {root} does not exist (a {kind} layout: "
                         f"{' / '.join(REAL_DATASETS[kind])})")


def task_model(tasks: list[str], name: str) -> None:
    """Refused when no requested task can use it (one that fits some tasks fails the others' jobs at run time)."""
    if tasks:
        problems = _first_accepted(tasks, lambda task: check_task_model(task, name), TaskModelError)
        if problems:
            raise UsageError(f"--task-model {name!r}: " + "; ".join(problems))


def wnids(path: str) -> None:
    """A --wnids file lists the classifier's classes in its output order: one wnid a line, exactly 1000."""
    try:
        listed = read_wnids(path)
    except (DatasetError, OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--wnids {path}: {e}") from None
    if len(listed) != IMAGENET_CLASSES:
        raise UsageError(f"--wnids {path}: lists {len(listed)} wnids; the classifier has {IMAGENET_CLASSES} classes "
                         f"(one wnid a line, in the model's class order): with fewer, class indices would not match "
                         f"its outputs")


def task_leaderboard(leaderboard: str | None) -> None:
    if leaderboard and leaderboard.lower().endswith(".csv"):  # it would become a folder named x.csv
        raise UsageError(f"with --task, --leaderboard is a folder (one <task>.csv per task is written in it), not a "
                         f"CSV file: got {leaderboard!r}")


def run_dataset(args: argparse.Namespace, tasks: list[str]) -> str:
    """The dataset a --task run reads (`run` says the $CARBENCH_IMAGENET choice itself)."""
    dataset = "shapes" if args.dataset == "samples" else args.dataset
    if dataset == "shapes" and tasks == ["classification"] and os.environ.get("CARBENCH_IMAGENET"):
        from benchmark.cli.common import imagenet_dataset

        dataset = imagenet_dataset(os.environ["CARBENCH_IMAGENET"])
    return dataset


# ---- the commands ----------------------------------------------------------------------------------------------------
def board_folder(leaderboard: str | None, task: bool) -> None:
    """The committed boards (leaderboards/) take rows from an unmodified tree only (benchmark.boards.provenance)."""
    if not leaderboard:
        return
    from benchmark.boards import provenance

    folder = leaderboard if task or leaderboard.endswith(("/", os.sep)) or os.path.isdir(leaderboard) else \
        os.path.dirname(leaderboard) or "."
    why = provenance.refusal(folder)
    if why:
        raise UsageError(why)


def writable_boards(leaderboard: str | None, boards: list[Path], flag: str = "--leaderboard") -> None:
    """Every board the command writes must be writable, checked before anything is computed (a run that cannot
    write its rows would lose them all at the end)."""
    from benchmark.boards.targets import RESULTS_ENV, unwritable

    for board in boards:
        why = unwritable(board)
        if why:
            where = f"{flag} {leaderboard}: " if leaderboard else \
                f"the default board folder (${RESULTS_ENV} or ./carbench-results/): "
            raise UsageError(f"{where}{board} cannot be written ({why}); name a writable folder with {flag} DIR")


def run_boards(args: argparse.Namespace) -> list[Path]:
    """The boards `benchmark run` writes."""
    from benchmark.boards.targets import fidelity_target, task_targets

    return task_targets(args.leaderboard, _csv(args.task)) if args.task else [fidelity_target(args.leaderboard)]


def check_run(args: argparse.Namespace) -> None:
    board_folder(args.leaderboard, bool(args.task))
    corruptions(args.qf, args.passes, args.codec, args.seed, args.subsampling)
    positive(args, "n_images", "batch_size", "tile")
    positive_number(args, "memory_budget")
    names = [m for m in _csv(args.method) if not (args.task and m in NO_RESTORATION)]
    methods(names, args.preset)
    if args.wnids:
        wnids(args.wnids)
    if not args.task:
        fidelity_datasets(args.dataset, args.data_root)
    else:
        tasks = _csv(args.task)
        if args.qf_override is not None:
            raise UsageError("--qf-override applies to fidelity runs, not --task runs")
        task_leaderboard(args.leaderboard)
        task_dataset(tasks, run_dataset(args, tasks))
        if args.task_model:
            task_model(tasks, args.task_model)
    if not args.dry_run:  # a dry run writes nothing
        writable_boards(args.leaderboard, run_boards(args))


COMPARE_RUN_DEFAULTS = {"baselines": "all", "qf": "10,20,30,40", "dataset": "samples", "data_root": None,
                        "task": None, "no_report": False, "quiet": False}  # the flags of `compare --method` alone


def check_compare_rows(args: argparse.Namespace) -> None:
    from benchmark.boards.compare_rows import BOARDS, parse_selector

    if args.method:
        raise UsageError("--rows compares two rows of a board; --method runs a method against the baselines: use "
                         "one of them")
    given = [k for k, v in COMPARE_RUN_DEFAULTS.items() if getattr(args, k, v) != v]
    if given:
        raise UsageError(f"--rows: {', '.join('--' + k.replace('_', '-') for k in given)} appl"
                         f"{'ies' if len(given) == 1 else 'y'} to `compare --method`, not to two board rows")
    for flag, text in (("--rows", args.rows[0]), ("--rows", args.rows[1]), ("--where", args.where)):
        if text is None:
            continue
        try:
            parse_selector(text)
        except ValueError as e:
            raise UsageError(f"{flag} {text!r}: {e}") from None
    if args.boards:
        path = Path(args.boards)
        if path.suffix.lower() == ".csv":
            if path.stem not in BOARDS:
                raise UsageError(f"--leaderboard {args.boards}: a board CSV is one of "
                                 f"{', '.join(b + '.csv' for b in BOARDS)}")
            if args.board and args.board != path.stem:
                raise UsageError(f"--board {args.board} and --leaderboard {args.boards} name different boards")
            if not path.is_file():
                raise UsageError(f"--leaderboard {args.boards}: file does not exist")
        elif not path.is_dir():
            raise UsageError(f"--leaderboard {args.boards}: folder does not exist")


def check_compare(args: argparse.Namespace) -> None:
    if args.rows is not None:
        return check_compare_rows(args)
    if not args.method:
        raise UsageError("compare needs --method (your method against the baselines) or --rows A B (two rows of a "
                         "board)")
    rows_only = [f for f, v in (("--board", args.board), ("--where", args.where)) if v is not None]
    if rows_only:
        raise UsageError(f"{', '.join(rows_only)}: only with --rows A B")
    board_folder(getattr(args, "leaderboard", None), False)
    corruptions(args.qf)
    methods(_csv(args.method))
    if args.baselines != "all":
        methods(_csv(args.baselines), flag="--baselines")
    fidelity_datasets(args.dataset, args.data_root)
    if args.task:
        task_dataset(_csv(args.task), "shapes")


def check_train(args: argparse.Namespace) -> None:
    positive(args, "steps", "batch_size", "crop", "train_images")
    if args.task:
        name = args.model or next(n for n, t in SHAPES_MODEL_TASKS.items() if t == args.task)
        if SHAPES_MODEL_TASKS.get(name) != args.task:
            choices = [n for n, t in SHAPES_MODEL_TASKS.items() if t == args.task]
            raise UsageError(f"--model {name!r}: no trainable {args.task!r} model {name!r}; choose from {choices}")
        return
    if args.method or not args.config:  # else the recipe names the method (checked when it is read)
        methods([args.method or "dncnn"], None if args.method and "." in args.method else args.preset)
    if args.task_model:
        task_model(["classification"], args.task_model)
    layout, sep, folder = (args.train_dir or "").partition(":")
    if not sep or layout not in ("imagenet", "imagenet-flat"):  # a labelled layout names its folder after the colon
        folder = args.train_dir
    if folder and folder != "shapes" and not Path(folder).is_dir():
        raise UsageError(f"--train-dir {args.train_dir}: folder does not exist")
    clean_share = getattr(args, "clean_share", None)
    if clean_share is not None and not 0 <= clean_share < 1:
        raise UsageError(f"--clean-share {clean_share}: a share of the crops in [0, 1)")
    save_at = getattr(args, "save_at", None)
    if save_at:
        try:
            fractions = [float(t) for t in save_at.split(",") if t.strip()]
        except ValueError:
            fractions = []
        if not fractions or any(not 0 < f <= 1 for f in fractions):
            raise UsageError(f"--save-at {save_at!r}: a comma list of fractions of the steps in (0, 1], "
                             f"e.g. 0.25,0.5,1")


def check_check(args: argparse.Namespace) -> None:
    try:
        expand_suites(_csv(args.suite or ""))
    except ValueError as e:
        raise UsageError(f"--suite {args.suite!r}: {e}") from None
    if args.method:
        methods(_csv(args.method))


def check_efficiency(args: argparse.Namespace) -> None:
    positive(args, "size", "repeat")
    from lightning_modules.registry import _REGISTRY, _plugin_entry_points

    known = [f"{m}.{p}" for m, ps in {**BUILTIN_PRESETS, **{n: tuple(e.presets) for n, e in _REGISTRY.items()}}.items()
             for p in ps]
    for pattern in _csv(args.method):
        if not any(fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n.split(".")[0], pattern) for n in known) \
                and not _plugin_entry_points():
            raise UsageError(f"--method {pattern!r}: no method matches {pattern!r}; see `benchmark list`")
    if not args.dry_run:  # the default board is the committed one
        from benchmark.boards.provenance import COMMITTED_BOARDS

        board_folder(args.leaderboard or str(COMMITTED_BOARDS / "efficiency.csv"), False)


def check_bench(args: argparse.Namespace) -> None:
    positive(args, "images", "full_images", "repeat", "map_images")


BDRATE_BOARDS = ("fidelity.csv", "classification.csv", "detection.csv")  # the boards `bdrate` reads


def check_bdrate(args: argparse.Namespace) -> None:
    from benchmark.boards.provenance import COMMITTED_BOARDS
    from benchmark.boards.targets import bdrate_target

    for flag, value in (("--boards", args.boards), ("--imagenet", args.imagenet)):
        if value is not None and not (value and Path(value).is_dir()):
            raise UsageError(f"{flag} {value}: folder does not exist")
    boards = Path(args.boards) if args.boards is not None else COMMITTED_BOARDS
    if not any((boards / name).is_file() for name in BDRATE_BOARDS):
        flag = f"--boards {args.boards}" if args.boards is not None else f"the default --boards {boards}"
        raise UsageError(f"{flag}: holds no board ({', '.join(BDRATE_BOARDS)}): name the folder the boards are in")
    board_folder(str(bdrate_target(args.leaderboard)), False)
    writable_boards(args.leaderboard, [bdrate_target(args.leaderboard)])


CHECKS = {"run": check_run, "compare": check_compare, "train": check_train, "check": check_check,
          "efficiency": check_efficiency, "bench": check_bench, "bdrate": check_bdrate}
