"""Rate-distortion and rate-accuracy figures (matplotlib, Agg): PSNR vs bpp per (dataset, channels, codec) of the
fidelity board, the `jpeg` curve in every panel; top-1 vs bpp per (classifier, dataset, codec) of the
classification board, the `direct` curve in every panel, the bpp read from the bdrate board's `rates` column
(classification rows carry no bpp). At most 8 series per panel (more methods: more panels), legend outside.
Paper rows get their own panel where they carry a bpp (the imported tables print none, so none is drawn today)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from benchmark.boards import leaderboard

MAX_SERIES = 8  # per panel, the reference curve included


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(method: str, preset: str) -> str:
    return method if preset in ("", "none") else f"{method}.{preset}"


def _panels(series: dict[str, list], reference: str) -> list[list[str]]:
    """Labels split into panels of <= MAX_SERIES series, the reference first in each."""
    others = sorted(k for k in series if k != reference)
    step = MAX_SERIES - 1 if reference in series else MAX_SERIES
    chunks = [others[i:i + step] for i in range(0, len(others), step)] or [[]]
    return [([reference] if reference in series else []) + c for c in chunks]


def _figure(panels: list[tuple[str, dict[str, list], str]], xlabel: str, ylabel: str, title: str):
    """One row of panels (title, {label: [(bpp, value), ...]}, reference label), each with its legend below."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), dpi=120, squeeze=False, sharey=True)
    for ax, (name, series, reference) in zip(axes[0], panels):
        for label, pts in series.items():
            pts = sorted(pts)
            ref = label == reference
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", markersize=3, label=label,
                    color="black" if ref else None, linestyle="--" if ref else "-", linewidth=1.6 if ref else 1.1)
        ax.set(xlabel=xlabel, title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title)
    return fig


def _save(fig, out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    _plt().close(fig)
    os.replace(tmp, out)
    return out


def rd_series(fid: pd.DataFrame, dataset: str, channels: str, codec: str, source: str = "measured",
              metric: str = "psnr") -> dict[str, list[tuple[float, float]]]:
    """{label: [(bpp, metric), ...]} of one (dataset, channels, codec)'s single-pass rows with a bpp."""
    sel = fid[(fid.dataset == dataset) & (fid.channels == channels) & (fid.codec == codec) & (fid.passes == "1")
              & fid.qf.str.isdigit() & (fid.source == source) & (fid.bpp != "") & (fid[metric] != "")]
    series: dict[str, list] = {}
    for r in sel.itertuples():
        series.setdefault(_label(r.method, r.preset), []).append((float(r.bpp), float(getattr(r, metric))))
    return {k: v for k, v in series.items() if len(v) >= 2}


def rd_figure(fid: pd.DataFrame, dataset: str, channels: str, codec: str):
    """PSNR vs bpp of one (dataset, channels, codec): measured panels (jpeg in each), then paper panels if any.
    None unless a method beside jpeg has a curve."""
    panels = []
    for source in ("measured", "paper"):
        series = rd_series(fid, dataset, channels, codec, source)
        if not any(k != "jpeg" for k in series):
            continue
        for labels in _panels(series, "jpeg"):
            panels.append((f"{source} ({len(labels)} series)", {k: series[k] for k in labels}, "jpeg"))
    if not panels:
        return None
    return _figure(panels, "bits per pixel", f"PSNR (dB, {channels})", f"Rate-distortion: {dataset} ({codec})")


def accuracy_series(task: pd.DataFrame, bd: pd.DataFrame, model: str, dataset: str, codec: str,
                    metric: str = "top1", board: str = "classification") -> dict[str, list[tuple[float, float]]]:
    """{label: [(bpp, value), ...]} of a classifier's single-pass rows at the QFs whose bpp the bdrate board
    computed (its `rates` column)."""
    from benchmark.boards.bdrate import parse_rates

    sel_bd = bd[(bd.board == board) & (bd.model == model) & (bd.dataset == dataset) & (bd.codec == codec)]
    rates: dict[int, float] = {}
    for text in sel_bd.rates:
        rates.update(parse_rates(text))
    sel = task[(task.model == model) & (task.dataset == dataset) & (task.codec == codec) & (task.passes == "1")
               & task.qf.str.isdigit() & (task.metric == metric) & (task.source == "measured")]
    series: dict[str, list] = {}
    for r in sel.itertuples():
        if int(r.qf) in rates:
            series.setdefault(_label(r.method, r.preset), []).append((rates[int(r.qf)], float(r.value)))
    return {k: v for k, v in series.items() if len(v) >= 2}


RATE_ACCURACY = {  # board -> (metric, x label, y label)
    "classification": ("top1", "bits per pixel (classifier crops)", "top-1 (%)"),
    "detection": ("consistency_map", "bits per pixel (whole photos)", "consistency mAP (%)"),
    "segmentation": ("consistency_iou", "bits per pixel (whole photos scored)", "person-mask IoU vs clean (%)"),
}


def accuracy_figure(task: pd.DataFrame, bd: pd.DataFrame, model: str, dataset: str, codec: str,
                    board: str = "classification"):
    metric, xlabel, ylabel = RATE_ACCURACY[board]
    series = accuracy_series(task, bd, model, dataset, codec, metric, board)
    if not any(k != "direct" for k in series):
        return None
    panels = [(f"{model} ({len(labels)} series)", {k: series[k] for k in labels}, "direct")
              for labels in _panels(series, "direct")]
    return _figure(panels, xlabel, ylabel, f"Rate-accuracy: {dataset} ({codec})")


def write_plots(boards: str | Path, out: str | Path, bdrate_csv: str | Path | None = None) -> dict[str, Path]:
    """Every RD figure of `boards`/fidelity.csv and every rate-accuracy figure of the task boards (classification,
    detection, segmentation) whose bpp the bdrate board (`bdrate_csv`, default `boards`/bdrate.csv) holds. {title: png}."""
    boards, out = Path(boards), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    fid = leaderboard.read(boards / "fidelity.csv")
    if not fid.empty:
        keys = fid[(fid.passes == "1") & (fid.bpp != "")][["dataset", "channels", "codec"]].drop_duplicates()
        for dataset, channels, codec in sorted(map(tuple, keys.values.tolist())):
            fig = rd_figure(fid, dataset, channels, codec)
            if fig is not None:
                name = f"rd_{dataset.replace(':', '_')}_{channels}_{codec}.png"
                plots[f"Rate-distortion: {dataset} ({channels}, {codec})"] = _save(fig, out / name)
    bd = leaderboard.read(Path(bdrate_csv) if bdrate_csv else boards / "bdrate.csv")
    for board in RATE_ACCURACY:
        task = leaderboard.read(boards / f"{board}.csv")
        if bd.empty or task.empty:
            continue
        keys = bd[bd.board == board][["model", "dataset", "codec"]].drop_duplicates()
        for model, dataset, codec in sorted(map(tuple, keys.values.tolist())):
            fig = accuracy_figure(task, bd, model, dataset, codec, board)
            if fig is not None:
                safe = dataset.replace(":", "_").replace("[", "_").replace("]", "").replace(">=", "ge")
                plots[f"Rate-accuracy: {model} on {dataset} ({codec})"] = _save(
                    fig, out / f"rate_accuracy_{model}_{safe}_{codec}.png")
    return plots
