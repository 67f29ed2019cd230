"""A researcher's own method: from a file (`path.py:Class`) or an installed package (entry point), compared with
every baseline in one command."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from benchmark.boards import leaderboard
from benchmark.cli import main
from lightning_modules import create
from lightning_modules.registry import MethodError

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "example_plugin"
FILE_SPEC = f"{PLUGIN / 'carbench_example' / '__init__.py'}:SmoothDeblock"


def test_file_spec_runs_and_names_errors(tmp_path):
    board = tmp_path / "f.csv"
    assert main(["run", "--method", FILE_SPEC, "--qf", "10", "--leaderboard", str(board), "--quiet"]) == 0
    df = leaderboard.read(board)
    mine = df[df.method == "smoothdeblock"]
    ref = df[df.method == "jpeg"]
    assert len(mine) == 1 and float(mine.psnr.iloc[0]) > float(ref.psnr.iloc[0])  # smoothing helps at QF 10
    with pytest.raises(MethodError, match="has no 'Nope'"):
        create(f"{PLUGIN / 'carbench_example' / '__init__.py'}:Nope")
    with pytest.raises(MethodError, match="does not exist"):
        create("no/such/file.py:Cls")


@pytest.mark.slow  # whole CLI jobs in subprocesses: minutes on 2 cores
def test_installed_plugin_and_compare_end_to_end(tmp_path):
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(PLUGIN)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    boards = tmp_path / "boards"
    out = subprocess.run([sys.executable, "-m", "benchmark.cli", "compare", "--method", "smooth_deblock",
                          "--baselines", "dncnn", "--qf", "10,20", "--boards", str(boards)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    df = pd.read_csv(boards / "fidelity.csv", dtype=str)
    assert {"smooth_deblock", "dncnn", "jpeg"} <= set(df.method) and (df.method == "smooth_deblock").sum() == 2
    assert (boards / "report" / "report.html").exists() and "smooth_deblock" in (boards / "report" / "report.md").read_text()
    listed = subprocess.run([sys.executable, "-m", "benchmark.cli", "list"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120).stdout
    assert "smooth_deblock.none" in listed
