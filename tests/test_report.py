"""`benchmark report`: Markdown + HTML with the measured values, the paper values beside them, and the plots."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from benchmark import leaderboard
from benchmark.report import build


@pytest.fixture()
def boards(tmp_path):
    d = tmp_path / "boards"
    d.mkdir()
    for name in ("fidelity", "classification", "detection", "segmentation", "efficiency"):
        src = leaderboard.default_path(name)
        if src.exists():
            shutil.copy(src, d / f"{name}.csv")
    return d


def test_report_has_tables_deltas_and_plots(boards, tmp_path):
    out = build(boards, tmp_path / "report")
    md, page = out["markdown"].read_text(), out["html"].read_text()
    df = leaderboard.read(boards / "fidelity.csv")
    row = df[(df.method == "jpeg") & (df.dataset == "samples") & (df.qf == "10") & (df.source == "measured")
             & (df.codec == "jpeg") & (df.passes == "1")].iloc[0]
    assert f"| {round(float(row.psnr), 2)} |" in md  # a measured value as the board holds it
    assert 'class="sortable"' in page and "<script>" in page and page.count("<table") >= 2
    for name in ("gain_vs_latency.png", "params_macs.png", "passes.png", "fidelity_samples.png"):
        assert (tmp_path / "report" / name).stat().st_size > 5000, name
    # measured beside paper: the jpeg LIVE1 QF10 row reproduces dagn Table I (delta 0.0)
    if "live1" in set(df.dataset) and (df.source == "paper").any():
        line = next(ln for ln in md.splitlines() if ln.startswith("| jpeg | live1 | rgb | jpeg | 10 |"))
        assert "| 25.69 | 0.0 |" in line


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt install chromium)")
def test_html_renders_in_headless_chromium(boards, tmp_path):
    out = build(boards, tmp_path / "report")
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          out["html"].as_uri()], capture_output=True, text=True, timeout=120).stdout
    n_rows = len(leaderboard.read(boards / "fidelity.csv").query("source == 'measured'"))
    assert dom.count("<tr>") >= n_rows and "carbench leaderboards" in dom
