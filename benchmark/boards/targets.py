"""Where a command writes its boards, and whether it can: light on purpose (no pandas, no torch), so that
`benchmark.cli.usage` refuses a board that cannot be written before anything is computed."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

RESULTS_ENV = "CARBENCH_RESULTS"


def user_results_dir() -> Path:
    """Where `benchmark run` / `compare` write without --leaderboard: $CARBENCH_RESULTS, else ./carbench-results/
    (the committed boards in leaderboards/ change only when --leaderboard names them)."""
    return Path(os.environ.get(RESULTS_ENV) or "carbench-results")


def fidelity_target(leaderboard: str | None) -> Path:
    """The fidelity CSV a run writes: --leaderboard FILE, --leaderboard DIR (its fidelity.csv), else the user's."""
    if not leaderboard:
        return user_results_dir() / "fidelity.csv"
    if leaderboard.endswith(("/", os.sep)) or Path(leaderboard).is_dir():
        return Path(leaderboard) / "fidelity.csv"
    return Path(leaderboard)


def task_targets(leaderboard: str | None, tasks: list[str]) -> list[Path]:
    """The task boards a `run --task` writes: <folder>/<task>.csv."""
    folder = Path(leaderboard) if leaderboard else user_results_dir()
    return [folder / f"{task}.csv" for task in tasks]


def bdrate_target(leaderboard: str | None) -> Path:
    """The bdrate CSV `benchmark bdrate` writes: --leaderboard FILE, --leaderboard DIR (its bdrate.csv), else the
    user's."""
    if not leaderboard:
        return user_results_dir() / "bdrate.csv"
    p = Path(leaderboard)
    return p / "bdrate.csv" if leaderboard.endswith(("/", "\\")) or p.is_dir() else p


def unwritable(board: str | os.PathLike) -> str | None:
    """Why the board file cannot be written (its folder, or the folder that would hold it, refuses a new file; the
    path under a file; the board itself a folder), or None. A real probe: a temp file created and removed, so a
    read-only mount, a full inode table or root's immutable flag are seen too, not only the mode bits."""
    board = Path(board)
    if board.is_dir():
        return f"{board} is a folder, not a board file"
    folder = board.parent
    existing = folder
    while not existing.exists():  # the folders the run would create: the nearest existing one must take them
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".carbench-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{existing}: {e.strerror or e}"
    lock = Path(f"{board}.lock")
    if lock.exists() and not os.access(lock, os.W_OK):
        return f"{lock}: the board's lock file is read-only"
    return None
