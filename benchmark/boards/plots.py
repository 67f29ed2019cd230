"""Plots of leaderboard boards: a task's headline metric against the quality factor, one line per method."""
from __future__ import annotations

import os
from pathlib import Path

from benchmark.boards import leaderboard


def task_series(board: str | os.PathLike, metric: str, dataset: str = "shapes", model: str | None = None) -> dict:
    """{label: [(qf, value), ...]} of single-pass rows, plus {"clean": value}; what `plot_task_board` draws."""
    df = leaderboard.read(board)
    if df.empty:
        return {}
    df = df[(df.metric == metric) & (df.dataset == dataset)]
    if model is not None:
        df = df[df.model == model]
    series: dict = {}
    for r in df.itertuples():
        if r.method == "clean":
            series["clean"] = float(r.value)
        elif r.qf.isdigit() and r.passes == "1" and r.codec == "jpeg":
            label = r.method if not r.preset else f"{r.method}.{r.preset}"
            series.setdefault(label, []).append((int(r.qf), float(r.value)))
    for label, pts in series.items():
        if label != "clean":
            pts.sort()
    return series


def plot_task_board(board: str | os.PathLike, metric: str, out: str | os.PathLike, dataset: str = "shapes",
                    title: str = "", model: str | None = None) -> Path | None:
    series = task_series(board, metric, dataset, model)
    if not any(k != "clean" for k in series):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=120)
    for label, pts in series.items():
        if label != "clean":
            ax.plot([q for q, _ in pts], [v for _, v in pts], marker="o", label=label)
    if "clean" in series:
        ax.axhline(series["clean"], color="gray", linestyle="--", label="clean")
    ax.set_xlabel("JPEG quality factor")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title or f"{Path(board).stem}{f' ({model})' if model else ''} on {dataset}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out
