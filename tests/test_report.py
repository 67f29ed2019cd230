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


def test_cost_plots_keep_input_sizes_apart_and_skip_figures_a_paper_did_not_print(tmp_path):
    import pandas as pd

    from benchmark.report import cost_points, cost_sizes, plot_gain_vs_latency

    def fid(method, source, psnr):
        return {"method": method, "preset": "paper" if source == "paper" else "compact", "dataset": "live1",
                "qf": "10", "channels": "rgb", "codec": "jpeg", "passes": "1", "source": source, "psnr": psnr}

    df = pd.DataFrame([fid("jpeg", "measured", 25.0), fid("net", "measured", 26.0),
                       fid("jpeg", "paper", 25.5), fid("net", "paper", 27.0)])
    df.loc[df.method == "jpeg", "preset"] = "-"

    def eff(source, size, ms, gmacs):
        return {"method": "net", "preset": "paper" if source == "paper" else "compact", "input": f"{size}x{size} rgb",
                "source": source, "latency_ms": ms, "gmacs": gmacs, "params_m": "0.5", "device": "cpu"}

    effs = pd.DataFrame([eff("measured", 224, "10", "1.0"), eff("measured", 512, "55", "5.2"),
                         eff("paper", 512, "", "4.0")])  # the paper printed no latency
    assert cost_sizes(effs) == ["512x512", "224x224"]
    at512 = cost_points(df, effs, "512x512")
    assert [(p["source"], p["gain"], p["gmacs"]) for p in at512] == [("measured", 1.0, 5.2), ("paper", 1.5, 4.0)]
    assert at512[1]["latency_ms"] != at512[1]["latency_ms"]  # NaN, not 0
    assert [p["latency_ms"] for p in cost_points(df, effs, "224x224")] == [10.0]
    assert plot_gain_vs_latency(at512, tmp_path / "g.png").stat().st_size > 5000
