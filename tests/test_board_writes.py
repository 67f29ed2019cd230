"""Fault 3: a board that cannot be written is refused before anything is computed, and every finished job's rows are
on the board as soon as the job ends (an interrupted run keeps them; a failing write keeps the rows in memory and
names the path, and the remaining jobs still run)."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import pandas as pd
import pytest

from benchmark.boards import leaderboard, per_image
from benchmark.cli import main
from benchmark.cli.common import EXIT_FAILED, EXIT_USAGE


@pytest.fixture
def blur(monkeypatch):
    """A cheap registered restorer (a 3x3 box blur: its PSNR differs from jpeg's, so its delta is not 0)."""
    import torch

    from lightning_modules import registry
    from lightning_modules.registry import Preset, register

    class Blur(torch.nn.Module):
        in_channels = None

        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register("blur", presets={"none": Preset()})(lambda: Blur())
    return "blur"


def _read_only(folder):
    """chmod 555, and for root (who ignores modes) the immutable flag; skip where the folder stays writable."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    probe = folder / "probe"
    try:
        probe.write_text("")
    except OSError:
        return immutable
    probe.unlink()
    _writable_again(folder, immutable)
    pytest.skip("cannot make a read-only folder here")


def _writable_again(folder, immutable):
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=False)
    folder.chmod(0o755)


@pytest.mark.parametrize("task", [False, True], ids=["fidelity", "task"])
def test_unwritable_board_is_refused_before_anything_is_computed(tmp_path, capsys, monkeypatch, task):
    import benchmark.evaluate.fidelity as fidelity
    import benchmark.evaluate.tasks as tasks

    def computed(*a, **k):
        raise AssertionError("rows computed for a board that cannot be written")

    monkeypatch.setattr(fidelity, "run_fidelity", computed)
    monkeypatch.setattr(tasks, "run_tasks", computed)
    folder = tmp_path / "ro"
    immutable = _read_only(folder)
    try:
        argv = ["run", "--method", "dncnn", "--qf", "20", "--quiet", "--leaderboard", f"{folder}/"]
        t0 = time.perf_counter()
        rc = main(argv + (["--task", "classification", "--n-images", "4"] if task else []))
        elapsed = time.perf_counter() - t0
    finally:
        _writable_again(folder, immutable)
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE and elapsed < 1.0
    assert "error: --leaderboard" in err and str(folder) in err and "cannot be written" in err
    assert "Traceback" not in err


def test_board_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "plain").write_text("not a folder")
    rc = main(["run", "--method", "dncnn", "--qf", "20", "--quiet", "--leaderboard", str(tmp_path / "plain/x.csv")])
    assert rc == EXIT_USAGE and "cannot be written" in capsys.readouterr().err


def test_interrupted_run_keeps_the_finished_jobs_rows(tmp_path, capsys, monkeypatch, blur):
    import benchmark.evaluate.fidelity as fidelity

    create = fidelity.create

    def interrupted(method, *a, **k):
        if method == blur:
            raise KeyboardInterrupt  # Ctrl-C while the second job starts
        return create(method, *a, **k)

    monkeypatch.setattr(fidelity, "create", interrupted)
    board = tmp_path / "b" / "fidelity.csv"
    try:
        rc = main(["run", "--method", blur, "--qf", "20,40", "--quiet", "--leaderboard", str(board)])
    except KeyboardInterrupt:
        rc = None
    df = leaderboard.read(board)
    assert sorted(df.method) == ["jpeg", "jpeg"]  # the first job's rows are kept
    assert all(per_image.path_for(board, r, leaderboard.FIDELITY_KEY).exists() for r in df.to_dict("records"))
    assert rc == 130 and "interrupted" in capsys.readouterr().err

    monkeypatch.setattr(fidelity, "create", create)  # the re-run: the same board as an uninterrupted run
    assert main(["run", "--method", blur, "--qf", "20,40", "--quiet", "--leaderboard", str(board)]) == 0
    other = tmp_path / "c" / "fidelity.csv"
    assert main(["run", "--method", blur, "--qf", "20,40", "--quiet", "--leaderboard", str(other)]) == 0
    a, b = leaderboard.read(board), leaderboard.read(other)
    same = [c for c in a.columns if c not in ("created_at", "seconds", "command")]
    pd.testing.assert_frame_equal(a[same], b[same])
    # the delta of a row whose reference row was written by an earlier job: filled, paired on the per-image files
    for r in a[a.method == blur].to_dict("records"):
        ref = a[(a.method == "jpeg") & (a.qf == r["qf"])].iloc[0].to_dict()
        own = per_image.read(per_image.path_for(board, r, leaderboard.FIDELITY_KEY))
        base = per_image.read(per_image.path_for(board, ref, leaderboard.FIDELITY_KEY))
        assert r["delta"] != "" and float(r["delta"]) == pytest.approx((own["psnr"] - base["psnr"]).mean(), abs=1e-4)


def test_failed_writes_keep_the_rows_and_the_remaining_jobs(tmp_path, capsys, monkeypatch, blur):
    import benchmark.evaluate.fidelity as fidelity

    jobs = []
    create = fidelity.create
    monkeypatch.setattr(fidelity, "create", lambda method, *a, **k: jobs.append(method) or create(method, *a, **k))
    board = tmp_path / "b" / "fidelity.csv"

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(leaderboard, "upsert", full)
    rc = main(["run", "--method", blur, "--qf", "20", "--quiet", "--leaderboard", str(board)])
    out, err = capsys.readouterr()
    assert rc == EXIT_FAILED and jobs == ["jpeg", blur]  # the job after the failed write still ran
    assert str(board) in err and "No space left on device" in err and "2 row(s) not written" in err
    assert "Traceback" not in err
    assert any(line.startswith(blur) for line in out.splitlines())  # its row is printed, not lost


def test_a_write_that_fails_once_is_retried_after_the_next_job(tmp_path, capsys, monkeypatch, blur):
    board = tmp_path / "b" / "fidelity.csv"
    upsert, calls = leaderboard.upsert, []

    def once(path, rows, *a, **k):
        calls.append(len(rows))
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return upsert(path, rows, *a, **k)

    monkeypatch.setattr(leaderboard, "upsert", once)
    assert main(["run", "--method", blur, "--qf", "20", "--quiet", "--leaderboard", str(board)]) == 0
    assert sorted(leaderboard.read(board).method) == ["blur", "jpeg"] and calls == [1, 2]
    assert "retried" in capsys.readouterr().err
