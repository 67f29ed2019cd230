"""`benchmark report`: Markdown + HTML with the measured values, the paper values beside them, and the plots."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from benchmark.boards import leaderboard
from benchmark.boards.report import build


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
    for name in ("gain_vs_latency.png", "params_macs.png", "passes.png", "fidelity_samples_rgb.png"):
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

    from benchmark.boards.report import cost_points, cost_sizes, plot_gain_vs_latency

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



def test_psnr_vs_qf_keeps_channels_apart_with_measured_and_paper_panels_and_the_legend_outside(tmp_path):
    """LIVE1 RGB (jpeg 25.69 at QF 10) and LIVE1-gray Y (jpeg 27.77) never on one line; legend right of the axes."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from benchmark.boards.report import _fidelity, build, fidelity_qf_series, fidelity_vs_qf_figure, plot_fidelity_vs_qf

    def row(method, preset, dataset, channels, qf, psnr, source):
        return {"method": method, "preset": preset, "dataset": dataset, "channels": channels, "codec": "jpeg",
                "qf": str(qf), "passes": "1", "subsampling": "420", "seed": "0", "n_images": "29", "n_skipped": "0",
                "psnr": str(psnr), "ssim": "0.7", "psnrb": str(psnr), "bpp": "0.4", "source": source}

    rows = [row("jpeg", "paper", "live1", "rgb", 10, 25.69, "paper"),
            row("jpeg", "paper", "live1", "rgb", 20, 28.06, "paper"),
            row("jpeg", "paper", "live1-gray", "y", 10, 27.77, "paper"),
            row("jpeg", "paper", "live1-gray", "y", 20, 30.07, "paper"),
            row("jpeg", "paper", "live1", "y", 10, 27.77, "paper"),  # the committed board's LIVE1 Y rows
            row("jpeg", "paper", "live1", "y", 20, 30.07, "paper"),
            row("jpeg", "none", "live1", "rgb", 10, 25.6925, "measured"),
            row("jpeg", "none", "live1", "rgb", 20, 28.06, "measured"),
            row("jpeg", "none", "live1-gray", "gray", 10, 27.7698, "measured"),
            row("jpeg", "none", "live1-gray", "gray", 20, 30.07, "measured")]
    rows += [row(f"net{i}", "compact", "live1", "rgb", qf, 26 + i / 10 + qf / 10, "measured")
             for i in range(8) for qf in (10, 20)]
    rows += [row(f"net{i}", "paper", "live1", "rgb", qf, 26.5 + i / 10 + qf / 10, "paper")
             for i in range(4) for qf in (10, 20)]  # live1 rgb: 9 measured + 5 paper series, two legend columns
    boards = tmp_path / "boards"
    boards.mkdir()
    pd.DataFrame(rows, columns=leaderboard.FIDELITY_COLUMNS).fillna("").to_csv(boards / "fidelity.csv", index=False)
    df = _fidelity(boards)

    rgb = fidelity_qf_series(df, "live1", "rgb")
    assert rgb["paper"]["jpeg.paper"] == [(10, 25.69), (20, 28.06)]
    assert "jpeg.paper" not in rgb["measured"] and "jpeg" in rgb["measured"] and "jpeg" not in rgb["paper"]
    assert fidelity_qf_series(df, "live1-gray", "y")["paper"]["jpeg.paper"] == [(10, 27.77), (20, 30.07)]

    figs = [fidelity_vs_qf_figure(df, ds, ch) for ds, ch in
            (("live1", "rgb"), ("live1", "y"), ("live1-gray", "y"), ("live1-gray", "gray"))]
    plotted = []
    try:
        for fig in figs:
            assert fig is not None
            measured_ax, paper_ax = fig.axes
            assert measured_ax.get_title().startswith("measured") and paper_ax.get_title().startswith("paper")
            for ax in (measured_ax, paper_ax):
                for line in ax.get_lines():
                    ys = [round(float(y), 2) for y in line.get_ydata()]
                    assert not (25.69 in ys and 27.77 in ys), ys  # RGB and Y never joined
                    plotted.append(ys)
            fig.canvas.draw()
            legend = paper_ax.get_legend()
            to_fig = fig.transFigure.inverted().transform_bbox
            for ax in (measured_ax, paper_ax):  # the legend sits right of both panels, over no data
                assert to_fig(legend.get_window_extent()).x0 >= to_fig(ax.get_window_extent()).x1
        texts = figs[0].axes[1].get_legend().get_texts()
        assert len(texts) == 14 and {t.get_text() for t in texts} >= {"jpeg", "jpeg (paper)", "net0.compact"}
        assert len({round(t.get_window_extent().x0) for t in texts}) == 2  # > 12 series: two columns
        assert [25.69, 28.06] in plotted and [27.77, 30.07] in plotted
        gray = figs[3]  # the measured gray rows never land beside paper Y rows, nor the other way round
        assert len(gray.axes[0].get_lines()) == 1 and gray.axes[1].get_lines() == []
    finally:
        for fig in figs:
            plt.close(fig)

    assert plot_fidelity_vs_qf(df, "live1", "rgb", tmp_path / "f.png").stat().st_size > 5000
    out = build(boards, tmp_path / "report")
    names = {p.name for p in out.values()} - {"report.md", "report.html"}
    assert {"fidelity_live1_rgb.png", "fidelity_live1_y.png", "fidelity_live1-gray_gray.png",
            "fidelity_live1-gray_y.png"} <= names
    md = out["markdown"].read_text()
    for name in names:  # every plot the page links to exists
        assert f"]({name})" in md and (tmp_path / "report" / name).exists()
