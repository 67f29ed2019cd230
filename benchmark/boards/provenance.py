"""Where a measured row comes from: the exact command and the code it ran (commit, and for a modified tree a digest
of the modification). Light on purpose (no pandas, no torch): `benchmark.cli.usage` asks it before heavy imports.

Policy for modified trees (tracked files differing from HEAD; the boards in leaderboards/ do not count: rows landing
there do not change the code that measured them):
- the committed boards (leaderboards/) refuse rows from a modified tree: a committed row must be re-makeable from the
  repository alone, and a digest of a diff that was never committed proves a difference but re-makes nothing;
- any other board records `<commit>-dirty+<digest>` (the first 12 hex digits of the sha256 of `git diff HEAD` over
  tracked files outside leaderboards/, then each untracked, not ignored file's name and bytes): two different
  modifications never share a label.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMITTED_BOARDS = REPO / "leaderboards"
_OUTSIDE_BOARDS = ("--", ".", ":(exclude)leaderboards")
_command: list[str] = []


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)


@functools.lru_cache(maxsize=1)
def tree_state() -> tuple[str, tuple[str, ...], str]:
    """(commit as 12 hex digits or "unknown", files outside leaderboards/ that differ from it -- modified tracked
    files and untracked ones git does not ignore --, digest of the diff and the untracked files' bytes)."""
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return "unknown", (), ""
        # untracked files count too (a new module the code imports); ignored ones (.venv, results) do not
        status = _git("status", "--porcelain", "--untracked-files=all", *_OUTSIDE_BOARDS)
        lines = [line for line in status.stdout.splitlines() if line.strip()]
        files = tuple(line[3:] for line in lines)
        digest = ""
        if files:
            h = hashlib.sha256(subprocess.run(["git", "diff", "HEAD", "--binary", *_OUTSIDE_BOARDS], cwd=REPO,
                                              capture_output=True, timeout=30).stdout)
            for line in lines:
                if line.startswith("??"):
                    h.update(b"\0" + line[3:].encode() + b"\0")
                    try:
                        h.update((REPO / line[3:]).read_bytes())
                    except OSError:
                        pass
            digest = h.hexdigest()[:12]
        return head.stdout.strip(), files, digest
    except (OSError, subprocess.SubprocessError):
        return "unknown", (), ""


def git_commit() -> str:
    """The row's `git_commit`: the commit, or `<commit>-dirty+<diff digest>` for a modified tree."""
    commit, files, digest = tree_state()
    return f"{commit}-dirty+{digest}" if files else commit


def set_command(argv: list[str], program: str = "benchmark") -> None:
    """Called by the CLI with its arguments: the rows of this process say `benchmark <args>`."""
    _command[:] = [program, *argv]


def command() -> str:
    """The exact command that measured this process's rows (shell-quoted); outside the CLI, the Python command line."""
    if _command:
        return shlex.join(_command)
    return shlex.join([Path(sys.executable).name, *sys.argv]) if sys.argv and sys.argv[0] else "python (interactive)"


def is_committed_board(folder: str | os.PathLike) -> bool:
    """Whether `folder` (a board's folder) is this repository's leaderboards/."""
    try:
        return Path(folder).resolve() == COMMITTED_BOARDS.resolve()
    except OSError:
        return False


def refusal(folder: str | os.PathLike) -> str | None:
    """Why rows may not be written to `folder` from this tree, or None: the committed boards take rows from a clean
    tree only."""
    if not is_committed_board(folder):
        return None
    commit, files, _ = tree_state()
    if not files:
        return None
    shown = ", ".join(files[:5]) + (f" (+{len(files) - 5} more)" if len(files) > 5 else "")
    return (f"refusing to write the committed boards in {COMMITTED_BOARDS} from a modified tree: {len(files)} "
            f"file(s) differ from commit {commit} ({shown}). A committed row must be re-makeable from the repository: "
            f"commit first, or write to another board with --leaderboard DIR (its rows record "
            f"{commit}-dirty+<diff digest>)")
