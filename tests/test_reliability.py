"""Reliability of runs and boards: concurrent writers lose nothing, kill -9 then re-run gives the same board (and the
next write clears the killed writer's temp file), the same seed gives a byte-identical board, a wrong-shaped output
fails its row only."""
from __future__ import annotations

import pytest

import os
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from benchmark.boards import leaderboard
from benchmark.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "OMP_NUM_THREADS": "1"}


def _writer(path: str, worker: int, n: int) -> None:
    for i in range(n):
        leaderboard.upsert(path, [{"method": f"w{worker}", "preset": "p", "dataset": "d", "channels": "rgb",
                                   "codec": "jpeg", "qf": str(i), "passes": 1, "subsampling": "420", "seed": 0,
                                   "source": "measured", "psnr": float(i)}])


def test_concurrent_upserts_lose_no_rows(tmp_path):
    path = str(tmp_path / "board.csv")
    ctx = get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    df = leaderboard.read(path)
    assert len(df) == 60 and sorted(set(df.method)) == ["w0", "w1", "w2", "w3"]


def _run(board: Path, *extra: str, cwd: Path = ROOT) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmark.cli", "run", "--method", "dncnn", "--qf", "10,20", "--quiet",
           "--leaderboard", str(board), *extra]
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _in(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.slow  # whole CLI jobs in subprocesses: minutes on 2 cores
def test_two_concurrent_runs_on_one_board_and_byte_identical_reruns(tmp_path):
    shared = tmp_path / "shared.csv"
    a, b = _run(shared, "--dataset", "samples"), _run(shared, "--codec", "avif")
    assert a.wait(300) == 0 and b.wait(300) == 0
    df = leaderboard.read(shared)
    assert set(df.codec) == {"jpeg", "avif"} and len(df) == 8  # 2 methods x 2 QFs x 2 codecs, none lost

    # the same command (rows record it, board path included) from two folders
    first, second = _in(tmp_path / "first"), _in(tmp_path / "second")
    assert _run(Path("board.csv"), cwd=first).wait(300) == 0 and _run(Path("board.csv"), cwd=second).wait(300) == 0
    assert (first / "board.csv").read_bytes() == (second / "board.csv").read_bytes()  # same seed, pinned date


@pytest.mark.slow  # whole CLI jobs in subprocesses: minutes on 2 cores
def test_kill_minus_9_then_rerun_gives_the_same_board(tmp_path):
    ref_dir, run_dir = _in(tmp_path / "reference"), _in(tmp_path / "run")
    reference, board = ref_dir / "board.csv", run_dir / "board.csv"  # the same command in two folders
    assert _run(Path("board.csv"), cwd=ref_dir).wait(300) == 0
    victim = _run(Path("board.csv"), "--no-cache", cwd=run_dir)
    time.sleep(4)  # mid-run: models loaded, images being scored
    victim.kill()  # SIGKILL
    victim.wait(60)
    # never a half-written file; rows go on the board job by job (jpeg's 2, then dncnn's 2): whole jobs only
    assert not board.exists() or leaderboard.read(board).shape[0] in (0, 2, 4)
    assert _run(Path("board.csv"), cwd=run_dir).wait(300) == 0
    assert board.read_bytes() == reference.read_bytes()


def test_wrong_shaped_output_fails_its_row_only(tmp_path, capsys, monkeypatch):
    import torch

    from lightning_modules import registry
    from lightning_modules.registry import Preset, register

    class Cropper(torch.nn.Module):
        def forward(self, x):
            return x[..., 1:, :]

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register("cropper", presets={"none": Preset()})(lambda: Cropper())
    lb = tmp_path / "f.csv"
    rc = main(["run", "--method", "cropper,dncnn", "--qf", "20", "--leaderboard", str(lb), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "'cropper' returned shape" in err
    assert sorted(pd.read_csv(lb).method) == ["dncnn", "jpeg"]  # the other method's and the reference rows are kept


def test_stale_temp_files_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    """A writer killed between writing `.NAME.<pid>.tmp` and renaming it leaves the file behind: the next upsert of
    that board removes it (its pid is dead); a live writer's file and other boards' files are left alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # exited and reaped: its pid is not alive
    board = tmp_path / "board.csv"
    stale = tmp_path / f".board.csv.{dead.pid}.tmp"
    live = tmp_path / f".board.csv.{os.getppid()}.tmp"
    other = tmp_path / f".other.csv.{dead.pid}.tmp"
    for f in (stale, live, other):
        f.write_text("half a board")
    row = {"method": "a", "preset": "p", "dataset": "d", "channels": "rgb", "codec": "jpeg", "qf": "10",
           "passes": 1, "subsampling": "420", "seed": 0, "source": "measured", "psnr": 30.0}
    leaderboard.upsert(board, [row])
    assert not stale.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == sorted(
        ["board.csv", live.name, other.name])
    assert list(leaderboard.read(board).psnr) == ["30.0000"]
