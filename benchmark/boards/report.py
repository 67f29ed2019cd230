"""`benchmark report`: the leaderboards as one Markdown page and one static HTML page (sortable tables, measured
beside paper with deltas) plus PNG plots: PSNR vs QF per method (one figure per dataset and channels, measured and
paper rows side by side), PSNR vs number of JPEG passes, each task's metric vs QF, PSNR gain vs latency (DAGN Fig. 8's
view) and a params/MACs bubble chart (AFD Figs. 9-10's view)."""
from __future__ import annotations

import html
import os
from pathlib import Path

import pandas as pd

from benchmark.boards import leaderboard, published

TASKS = {"classification": "top1", "detection": "map", "segmentation": "mIoU"}
GAIN_AT = ("live1", "10")  # the PSNR gain plotted against cost: LIVE1 (RGB), QF 10


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, **savefig) -> Path:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, **savefig)
    _plt().close(fig)
    os.replace(tmp, out)
    return out


def _label(r) -> str:
    return r["method"] if r["preset"] in ("", "none") else f"{r['method']}.{r['preset']}"


def _fidelity(boards: Path) -> pd.DataFrame:
    df = leaderboard.read(boards / "fidelity.csv")
    if df.empty:
        return df
    df = df.copy()
    for c in ("psnr", "ssim", "psnrb", "bpp"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df["label"] = [_label(r) for _, r in df.iterrows()]
    return df


def paper_value(df: pd.DataFrame, r, metric: str) -> float | None:
    """The paper's value for a measured row: a source=paper row of the same method/dataset/QF, else the reference
    tables' value (`published.fidelity_value`)."""
    same = df[(df.source == "paper") & (df.method == r["method"]) & (df.dataset == r["dataset"])
              & (df.channels == r["channels"]) & (df.codec == r["codec"]) & (df.qf == r["qf"])]
    if len(same) and pd.notna(same.iloc[0][metric]):
        return float(same.iloc[0][metric])
    return published.fidelity_value(r["method"], r["dataset"], r["channels"], r["codec"], r["qf"], metric)


# ---- plots -------------------------------------------------------------------------------------------------------
SOURCES = ("measured", "paper")  # the two panels of a PSNR-vs-QF figure, left to right


def fidelity_qf_series(df: pd.DataFrame, dataset: str, channels: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{source: {label: [(qf, psnr), ...]}} of one dataset's single-pass JPEG rows in one channel space (rgb, y or
    gray): a line never joins rows of different datasets or channels (a Y-channel PSNR is ~2 dB above the RGB one)."""
    sel = df[(df.dataset == dataset) & (df.channels == channels) & (df.passes == "1") & df.qf.str.isdigit()
             & (df.codec == "jpeg") & df.psnr.notna()]
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for source in SOURCES:
        rows = sel[sel.source == source]
        series[source] = {label: sorted((int(q), float(v)) for q, v in zip(g.qf, g.psnr))
                          for label, g in rows.groupby("label")}
    return series


def fidelity_qf_channels(df: pd.DataFrame, dataset: str) -> list[str]:
    """The channel spaces of a dataset's single-pass JPEG rows (measured or paper), rgb first."""
    sel = df[(df.dataset == dataset) & (df.passes == "1") & df.qf.str.isdigit() & (df.codec == "jpeg")]
    return sorted(set(sel.channels), key=lambda c: (c != "rgb", c))


def fidelity_vs_qf_figure(df: pd.DataFrame, dataset: str, channels: str):
    """The PSNR-vs-QF figure of one (dataset, channels): measured rows on the left panel, paper rows on the right,
    one colour per method across both, the legend outside the axes on the right. None when neither panel has a
    line over two QFs."""
    series = fidelity_qf_series(df, dataset, channels)
    if not any(len({q for q, _ in pts}) >= 2 for by_label in series.values() for pts in by_label.values()):
        return None
    plt = _plt()
    method_of = dict(zip(df.label, df.method))
    methods = sorted({method_of[label] for by_label in series.values() for label in by_label})
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    color = {m: cmap(i % cmap.N) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=120, sharex=True, sharey=True)
    handles, labels = [], []
    for ax, source in zip(axes, SOURCES):
        by_label = series[source]
        seen: dict[str, int] = {}
        for label, pts in by_label.items():
            method = method_of[label]
            k = seen[method] = seen.get(method, -1) + 1  # a method's second preset: same colour, other dashes
            style = ("-", "-.", ":")[k % 3] if source == "measured" else ("--", ":", "-.")[k % 3]
            (line,) = ax.plot([q for q, _ in pts], [v for _, v in pts], linestyle=style, color=color[method],
                              marker="o" if source == "measured" else "s", markersize=4)
            handles.append(line)
            labels.append(label if source == "measured" else f"{label.removesuffix('.paper')} (paper)")
        if not by_label:
            ax.text(0.5, 0.5, f"no {source} rows", transform=ax.transAxes, ha="center", va="center", color="gray")
        ax.set(xlabel="JPEG quality factor", title=f"{source} ({len(by_label)} series)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"PSNR (dB, {channels})")
    fig.suptitle(f"PSNR vs QF: {dataset} ({channels})")
    fig.tight_layout()
    axes[-1].legend(handles, labels, fontsize=7, ncol=2 if len(labels) > 12 else 1, bbox_to_anchor=(1.02, 1),
                    loc="upper left", borderaxespad=0.0)
    return fig


def plot_fidelity_vs_qf(df: pd.DataFrame, dataset: str, channels: str, out: Path) -> Path | None:
    fig = fidelity_vs_qf_figure(df, dataset, channels)
    return _save(fig, out, bbox_inches="tight") if fig is not None else None


def plot_passes(df: pd.DataFrame, out: Path) -> Path | None:
    sel = df[(df.source == "measured") & df.qf.str.contains("/")]
    if sel.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for (label, dataset, qf), g in sel.groupby(["label", "dataset", "qf"]):
        g = g.assign(n=g.passes.astype(int)).sort_values("n")
        ax.plot(g.n, g.psnr, marker="o", label=f"{label} on {dataset} (QFs {qf})")
    ax.set(xlabel="JPEG passes", ylabel="PSNR (dB)", title="Multi-pass JPEG")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


def plot_task_passes(boards: Path, task: str, metric: str, out: Path) -> Path | None:
    """A task's metric vs the number of JPEG passes (multi-pass rows), one line per method; clean as a line."""
    df = leaderboard.read(boards / f"{task}.csv")
    if df.empty:
        return None
    sel = df[(df.metric == metric) & (df.source == "measured") & df.qf.str.contains("/")]
    if sel.empty:
        return None
    clean = df[(df.metric == metric) & (df.method == "clean")]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for (label, qf), g in sel.assign(label=[_label(r) for _, r in sel.iterrows()]).groupby(["label", "qf"]):
        g = g.assign(n=g.passes.astype(int), v=g.value.astype(float)).sort_values("n")
        ax.plot(g.n, g.v, marker="o", label=f"{label} (QFs {qf})")
    if len(clean):
        ax.axhline(float(clean.value.iloc[0]), color="gray", linestyle="--", label="clean")
    ax.set(xlabel="JPEG passes", ylabel=f"{metric} (%)", title=f"{task}: {metric} vs JPEG passes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


def interval_text(delta, lo, hi, digits: int = 2) -> str:
    """`+2.50 [+0.40, +4.60]` from a row's delta cells, `... (tie)` when the interval contains 0; the delta alone
    when there is no interval; "" when there is no delta."""
    d, lo, hi = _num(delta), _num(lo), _num(hi)
    if d != d:
        return ""
    if lo != lo or hi != hi:
        return f"{d:+.{digits}f}"
    return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]" + (" (tie)" if lo <= 0 <= hi else "")


def _num(v) -> float:
    """A board cell as a float; empty (a paper that printed no such figure) is NaN."""
    return float(v) if v not in ("", None) and not pd.isna(v) else float("nan")


def cost_sizes(eff: pd.DataFrame) -> list[str]:
    """The input sizes ("512x512", "224x224") with measured efficiency rows, largest first."""
    if eff.empty:
        return []
    sizes = {str(i).split()[0] for i in eff[eff.source == "measured"]["input"] if str(i).strip()}
    return sorted(sizes, key=lambda s: -int(s.split("x")[0]))


def cost_points(df: pd.DataFrame, eff: pd.DataFrame, size: str = "512x512") -> list[dict]:
    """Per (method.preset, source) at one input size: PSNR gain over jpeg at GAIN_AT, latency, MACs, params.
    Sizes never mix in one plot (cost grows with pixels); a figure a paper did not print is NaN, left off its axis."""
    if df.empty or eff.empty:
        return []
    dataset, qf = GAIN_AT
    rows = df[(df.dataset == dataset) & (df.qf == qf) & (df.channels == "rgb") & (df.codec == "jpeg")
              & (df.passes == "1")]
    points = []
    for _, e in eff[eff["input"].astype(str).str.split().str[0] == size].iterrows():
        src = rows[rows.source == e["source"]]
        base = src[src.method == "jpeg"]
        own = src[(src.method == e["method"]) & (src.preset == e["preset"])]
        if base.empty or own.empty:
            continue
        r = own.iloc[0]
        # the paired interval of the gain where the row's delta is the same gain (psnr vs jpeg of this data set)
        lo, hi = (_num(r.get(c, "")) for c in ("delta_lo", "delta_hi"))
        points.append({"label": _label(e), "source": e["source"], "gain": float(own.psnr.iloc[0] - base.psnr.iloc[0]),
                       "gain_lo": lo, "gain_hi": hi,
                       "latency_ms": _num(e["latency_ms"]), "gmacs": _num(e["gmacs"]),
                       "params_m": _num(e["params_m"]), "device": e["device"], "size": size})
    return points


def _scatter_by_source(points: list[dict], x: str, out: Path, xlabel: str, title: str, bubbles: bool = False):
    pts_all = [p for p in points if p[x] == p[x]]  # NaN != NaN: a figure the paper did not print
    if not pts_all:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for src, color in (("measured", "tab:blue"), ("paper", "tab:orange")):
        pts = [p for p in pts_all if p["source"] == src]
        if not pts:
            continue
        sizes = [20 + 4 * (p["params_m"] if p["params_m"] == p["params_m"] else 0) for p in pts] if bubbles else 30
        ax.scatter([p[x] for p in pts], [p["gain"] for p in pts], s=sizes, alpha=0.5 if bubbles else 1.0,
                   color=color, marker="o" if src == "measured" else "s",
                   label=("measured (this CPU)" if src == "measured" else "paper (its own device)")
                   + (" (bubble: params)" if bubbles else ""))
        bars = [p for p in pts if p.get("gain_lo", float("nan")) == p.get("gain_lo") and
                p.get("gain_hi", float("nan")) == p.get("gain_hi")]
        if bars:  # the gain's paired 95 % interval, where the board has one
            ax.errorbar([p[x] for p in bars], [p["gain"] for p in bars], fmt="none", ecolor=color, capsize=3,
                        yerr=[[max(p["gain"] - p["gain_lo"], 0.0) for p in bars],
                              [max(p["gain_hi"] - p["gain"], 0.0) for p in bars]])
        for p in pts:
            text = f"{p['label']} {p['params_m']:.1f}M" if bubbles and p["params_m"] == p["params_m"] else p["label"]
            ax.annotate(text, (p[x], p["gain"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="PSNR gain over jpeg (dB)", title=f"{title} ({GAIN_AT[0]}, QF {GAIN_AT[1]})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


def plot_gain_vs_latency(points: list[dict], out: Path) -> Path | None:
    size = points[0]["size"] if points else ""
    return _scatter_by_source(points, "latency_ms", out, f"latency per {size} image (ms, log)", "Gain vs latency")


def plot_params_macs(points: list[dict], out: Path) -> Path | None:
    size = points[0]["size"] if points else ""
    return _scatter_by_source(points, "gmacs", out, f"GMACs at {size} (log)", "Cost vs gain", bubbles=True)


# ---- tables ----------------------------------------------------------------------------------------------------
def fidelity_table(df: pd.DataFrame) -> pd.DataFrame:
    """Measured rows with the paper's PSNR/SSIM beside them and the deltas."""
    rows = []
    measured = df[df.source == "measured"]
    intervals = "delta" in df.columns and (measured.get("delta", pd.Series(dtype=str)).astype(str) != "").any()
    for _, r in measured.iterrows():
        p_psnr, p_ssim = paper_value(df, r, "psnr"), paper_value(df, r, "ssim")
        rows.append({"method": r["label"], "dataset": r["dataset"], "ch": r["channels"], "codec": r["codec"],
                     "qf": r["qf"], "passes": r["passes"], "n": r["n_images"], "PSNR": round(r["psnr"], 2),
                     "SSIM": round(r["ssim"], 4), "PSNR-B": round(r["psnrb"], 2),
                     "paper PSNR": p_psnr if p_psnr is not None else "",
                     "dPSNR vs paper": round(r["psnr"] - p_psnr, 2) + 0.0 if p_psnr is not None else "",
                     "paper SSIM": p_ssim if p_ssim is not None else ""})
        if intervals:  # the paired 95 % interval of psnr - jpeg on the same images (issue 26)
            rows[-1]["dPSNR vs jpeg [95 % CI]"] = interval_text(r["delta"], r["delta_lo"], r["delta_hi"])
    return pd.DataFrame(rows)


def task_table(boards: Path, task: str) -> pd.DataFrame:
    df = leaderboard.read(boards / f"{task}.csv")
    if df.empty:
        return df
    df = df[df.source == "measured"]
    wide = df.pivot_table(index=["model", "dataset", "method", "preset", "codec", "qf", "n_images"], columns="metric",
                          values="value", aggfunc="first").reset_index()
    wide.columns.name = None
    metrics = [c for c in wide.columns if c not in ("model", "dataset", "method", "preset", "codec", "qf", "n_images")]
    for c in metrics:
        wide[c] = pd.to_numeric(wide[c], errors="coerce").round(2)
    if "delta" in df.columns and (df.delta.astype(str) != "").any():  # each metric's delta to direct / clean, its CI
        iv = df.assign(_iv=[interval_text(r["delta"], r["delta_lo"], r["delta_hi"], 1) for _, r in df.iterrows()])
        iv = iv.pivot_table(index=["model", "dataset", "method", "preset", "codec", "qf", "n_images"],
                            columns="metric", values="_iv", aggfunc="first").reset_index()
        iv.columns.name = None
        index = ["model", "dataset", "method", "preset", "codec", "qf", "n_images"]
        named = {m: f"d{m} [95 % CI]" for m in metrics if m in iv.columns and (iv[m].fillna("") != "").any()}
        if named:
            wide = wide.merge(iv[index + list(named)].rename(columns=named), on=index, how="left").fillna("")
    return wide


def efficiency_table(boards: Path) -> pd.DataFrame:
    df = leaderboard.read(boards / "efficiency.csv")
    if df.empty:
        return df
    if "form" not in df.columns:  # boards written before re-parameterised forms were measured
        df["form"] = "deploy"
    return df[["method", "preset", "form", "source", "params_m", "gmacs", "latency_ms", "device", "input"]]


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(empty)_\n"
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(out) + "\n"


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>(empty)</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, i) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
  const key = tr => { const t = tr.cells[i].textContent; const n = parseFloat(t); return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    return (x > y ? 1 : x < y ? -1 : 0) * (asc ? 1 : -1); }).forEach(r => body.appendChild(r));
}));
"""
CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
       "font-size:13px;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}"
       "th{background:#eef;cursor:pointer}img{max-width:48%;margin:4px;border:1px solid #ddd}")


def photo_detection_plots(boards: Path, out: Path) -> dict[str, Path]:
    """Consistency mAP and the label proxy vs QF of the real detectors on photos, one figure per (detector, photo
    set, metric)."""
    from benchmark.boards.plots import plot_task_board

    df = leaderboard.read(boards / "detection.csv")
    plots: dict[str, Path] = {}
    if df.empty:
        return plots
    keys = df[df.metric.isin(["consistency_map", "label_proxy"])][["model", "dataset", "metric"]].drop_duplicates()
    for model, dataset, metric in sorted(map(tuple, keys.values.tolist())):
        safe = dataset.replace(":", "_").replace("[", "_").replace("]", "")
        p = plot_task_board(boards / "detection.csv", metric, out / f"detection_{model}_{safe}_{metric}.png", dataset,
                            model=model)
        if p:
            plots[f"detection: {metric} of {model} on {dataset}"] = p
    return plots


def build(boards: str | Path | None = None, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write report.md, report.html and the plots into out_dir (default leaderboards/report)."""
    boards = Path(boards) if boards else leaderboard.LEADERBOARD_DIR
    out = Path(out_dir) if out_dir else boards / "report"
    out.mkdir(parents=True, exist_ok=True)
    df = _fidelity(boards)
    eff = leaderboard.read(boards / "efficiency.csv")
    plots: dict[str, Path] = {}
    if not df.empty:
        for dataset in sorted(df[df.source == "measured"].dataset.unique()):
            for channels in fidelity_qf_channels(df, dataset):  # one figure per (dataset, channels)
                name = f"fidelity_{dataset.replace(':', '_')}_{channels}.png"
                p = plot_fidelity_vs_qf(df, dataset, channels, out / name)
                if p:
                    plots[f"PSNR vs QF: {dataset} ({channels})"] = p
        p = plot_passes(df, out / "passes.png")
        if p:
            plots["Multi-pass JPEG"] = p
    for n, size in enumerate(cost_sizes(eff)):
        points = cost_points(df, eff, size)
        suffix = "" if n == 0 else f"_{size.split('x')[0]}"  # the largest size keeps the plain names
        for title, fn, name in (("Gain vs latency", plot_gain_vs_latency, "gain_vs_latency"),
                                ("Cost vs gain (bubble: params)", plot_params_macs, "params_macs")):
            p = fn(points, out / f"{name}{suffix}.png")
            if p:
                plots[f"{title} at {size}"] = p
    from benchmark.boards.plots import plot_task_board

    for task, metric in TASKS.items():
        if (boards / f"{task}.csv").exists():
            p = plot_task_board(boards / f"{task}.csv", metric, out / f"{task}.png")
            if p:
                plots[f"{task}: {metric} vs QF"] = p
            p = plot_task_passes(boards, task, metric, out / f"{task}_passes.png")
            if p:
                plots[f"{task}: {metric} vs JPEG passes"] = p
    plots.update(photo_detection_plots(boards, out))
    from benchmark.boards.plots import plot_board_delta_intervals  # deltas with their 95 % intervals (issue 26)

    for name in ("fidelity", *TASKS):
        if (boards / f"{name}.csv").exists():
            plots.update(plot_board_delta_intervals(boards / f"{name}.csv", name, out))
    from benchmark.boards.rd_plots import write_plots  # rate-distortion and rate-accuracy figures

    plots.update(write_plots(boards, out))
    sections = [("Fidelity (measured; paper value and delta where a paper reports the same row)",
                 fidelity_table(df) if not df.empty else pd.DataFrame())]
    sections += [(f"{task.capitalize()} (values in percent; d<metric>: the delta to direct / clean with its paired "
                  f"95 % interval, (tie): the interval contains 0)", task_table(boards, task)) for task in TASKS]
    sections += [("Efficiency (measured and papers' tables)", efficiency_table(boards))]
    stamp = f"carbench {leaderboard.carbench_version()}, commit {leaderboard.git_commit()}, {leaderboard.now()}"
    md = [f"# carbench leaderboards\n\n_{stamp}_\n"]
    for title, table in sections:
        md.append(f"## {title}\n\n{_md(table)}")
    md.append("## Plots\n\n" + "\n".join(f"![{t}]({p.name})" for t, p in plots.items()) + "\n")
    (out / "report.md").write_text("\n".join(md))
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>carbench leaderboards</title>"
            f"<style>{CSS}</style></head><body><h1>carbench leaderboards</h1><p><em>{html.escape(stamp)}</em></p>"
            "<p>Click a column header to sort.</p>"]
    for title, table in sections:
        page.append(f"<h2>{html.escape(title)}</h2>{_html_table(table)}")
    page.append("<h2>Plots</h2>" + "".join(f'<img src="{p.name}" alt="{html.escape(t)}" title="{html.escape(t)}">'
                                             for t, p in plots.items()))
    page.append(f"<script>{SORT_JS}</script></body></html>")
    (out / "report.html").write_text("".join(page))
    return {"markdown": out / "report.md", "html": out / "report.html", **{t: p for t, p in plots.items()}}
