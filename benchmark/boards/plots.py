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


# ---- deltas with their paired 95 % intervals (issue 26) ---------------------------------------------------------
def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f else None


def delta_interval_series(board: str | os.PathLike, name: str) -> dict:
    """{(group, ...): {label: [(x, delta, lo, hi), ...]}} of the measured rows whose delta carries an interval
    (`delta_lo` / `delta_hi`); a group is one figure: (model, dataset, codec, metric) of a task board, (dataset,
    channels, codec) of the fidelity board; x is the QF ("QF 10"; "25/18/15/10/7 x3" for multi-pass rows)."""
    df = leaderboard.read(board)
    if df.empty or "delta_lo" not in df.columns:
        return {}
    group_cols = ("dataset", "channels", "codec") if name == "fidelity" else ("model", "dataset", "codec", "metric")
    out: dict = {}
    for r in df.to_dict("records"):
        d, lo, hi = (_float(r.get(c)) for c in ("delta", "delta_lo", "delta_hi"))
        if r.get("source") != "measured" or None in (d, lo, hi):
            continue
        x = f"QF {r['qf']}" if str(r.get("passes", "1")) == "1" and "/" not in str(r["qf"]) else \
            f"{r['qf']} x{r.get('passes', '')}"
        label = r["method"] if r.get("preset", "") in ("", "none") else f"{r['method']}.{r['preset']}"
        out.setdefault(tuple(r[c] for c in group_cols), {}).setdefault(label, []).append((x, d, lo, hi))
    return out


def _x_order(x: str):
    head = x.removeprefix("QF ").split()[0]
    return (0, int(head), x) if head.isdigit() else (1, 0, x)


def plot_delta_intervals(series: dict, out: str | os.PathLike, title: str, ylabel: str) -> Path | None:
    """Each method's delta to the reference at each QF with its 95 % interval as an error bar; a hollow marker: the
    interval contains 0 (a tie). `series`: {label: [(x, delta, lo, hi), ...]} (`delta_interval_series`)."""
    if not any(series.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.lines import Line2D

    handles = []
    xs = sorted({p[0] for pts in series.values() for p in pts}, key=_x_order)
    labels = sorted(series)
    width = 0.8 / max(len(labels), 1)
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(max(5.5, 1.2 + 0.35 * len(labels) * len(xs)), 3.6), dpi=120)
    for i, label in enumerate(labels):
        color = cmap(i % cmap.N)
        for j, (x, d, lo, hi) in enumerate(sorted(series[label], key=lambda p: _x_order(p[0]))):
            pos = xs.index(x) - 0.4 + width * (i + 0.5)
            tie = lo <= 0 <= hi
            ax.errorbar([pos], [d], yerr=[[max(d - lo, 0.0)], [max(hi - d, 0.0)]], fmt="o", color=color, capsize=3,
                        markerfacecolor="white" if tie else color)
        handles.append(Line2D([], [], color=color, marker="o", label=label))
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xticks(range(len(xs)), xs)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
              title="hollow: tie (95 % CI has 0)", title_fontsize=7)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out)
    return out


def plot_board_delta_intervals(board: str | os.PathLike, name: str, out_dir: str | os.PathLike) -> dict[str, Path]:
    """One error-bar figure per group of `delta_interval_series`: {title: path}."""
    plots: dict[str, Path] = {}
    for group, series in sorted(delta_interval_series(board, name).items()):
        if name == "fidelity":
            dataset, channels, codec = group
            title = f"PSNR - jpeg\n{dataset} ({channels}, {codec})"
            ylabel, stem = "delta PSNR vs jpeg (dB)", f"delta_fidelity_{dataset}_{channels}_{codec}"
        else:
            model, dataset, codec, metric = group
            ref = "clean" if codec == "none" else "direct"
            title = f"{name}: {metric} - {ref}\n{model} on {dataset} ({codec})"
            ylabel, stem = f"delta {metric} vs {ref} (points)", f"delta_{name}_{model}_{dataset}_{codec}_{metric}"
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
        p = plot_delta_intervals(series, Path(out_dir) / f"{safe}.png", title + ", 95 % paired CI", ylabel)
        if p:
            plots[title.replace("\n", ": ")] = p
    return plots
