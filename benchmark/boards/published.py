"""The papers' published numbers (../shared/published), for `paper` reference columns and protocol checks."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pandas as pd

# (carbench dataset, scored channels) -> (published dataset, channels) whose protocol it reproduces.
# The papers' "Y channel" tables compress the MATLAB-Y image as a gray JPEG: our gray sets and `NAME:y`.
PUBLISHED_DATASET = {
    ("live1", "rgb"): ("live1", "rgb"),
    ("live1-gray", "gray"): ("live1", "y"),
    ("classic5", "gray"): ("classic5", "y"),
    ("bsds500", "rgb"): ("bsds500", "rgb"),
    ("bsds500:y", "gray"): ("bsds500", "y"),
}
# The tables whose JPEG rows carbench reproduces exactly: jarcal's (FBCNN's evaluation) and dagn Table I LIVE1.
# dagn's `bsd500` is a different image set/encoder (its JPEG row differs from jarcal's bsds500), so it is not mapped.
REFERENCE_TABLES = {("jarcal", "1"), ("jarcal", "3"), ("jarcal", "4"), ("dagn", "I")}


def published_dir() -> Path | None:
    if os.environ.get("CARBENCH_PUBLISHED"):
        return Path(os.environ["CARBENCH_PUBLISHED"])
    guess = Path(__file__).resolve().parents[3] / "shared" / "published"
    return guess if guess.is_dir() else None


@functools.lru_cache(maxsize=4)
def load(name: str = "fidelity") -> pd.DataFrame:
    d = published_dir()
    if d is None or not (d / f"{name}.csv").is_file():
        return pd.DataFrame()
    return pd.read_csv(d / f"{name}.csv", dtype=str, keep_default_na=False)


def fidelity_value(method: str, dataset: str, channels: str, codec: str, qf: str, metric: str) -> float | None:
    """The published value for a measured row, when the papers agree on one; else None."""
    df = load("fidelity")
    target = PUBLISHED_DATASET.get((dataset, channels))
    if df.empty or target is None:
        return None
    sel = df[(df.method == method) & (df.dataset == target[0]) & (df.channels == target[1]) & (df.codec == codec)
             & (df.qf == str(qf)) & (df.metric == metric)]
    in_reference = [(p, t) in REFERENCE_TABLES for p, t in zip(sel.paper, sel.table)]
    values = {float(v) for v, ok in zip(sel.value, in_reference) if ok}
    return values.pop() if len(values) == 1 else None


# downstream: (task, carbench dataset kind, metric) -> (published table file, dataset, metric); ImageNet-C rows are
# the JPEG protocol on 224 crops, which carbench runs on any ImageNet layout
PUBLISHED_TASK = {
    ("detection", "coco", "map"): ("downstream", "ms-coco", "bbox_map"),
    ("segmentation", "voc", "mIoU"): ("downstream", "pascal-voc", "miou"),
    ("classification", "imagenet", "top1"): ("classification", "imagenet-c", "top1"),
    ("classification", "imagenet-flat", "top1"): ("classification", "imagenet-c", "top1"),
}


def task_value(task: str, dataset_kind: str, model: str, method: str, codec: str, qf: str, metric: str) -> float | None:
    """The published downstream value (percent) for a measured row, when exactly one paper row matches; else None.
    `direct` is the papers' `jpeg`/`direct` row; classification rows must also match the backbone."""
    target = PUBLISHED_TASK.get((task, dataset_kind, metric))
    if target is None or not qf:
        return None
    df = load(target[0])
    if df.empty:
        return None
    if target[0] == "downstream":
        names = {"jpeg", "direct"} if method == "direct" else {method}
        sel = df[(df.task == task) & (df.dataset == target[1]) & (df.metric == target[2]) & (df.qf == str(qf))
                 & df.method.isin(names)]
        values = {float(v) for v in sel.value}
    else:
        sel = df[(df.dataset == target[1]) & (df.backbone == model) & (df.codec == codec) & (df.qf == str(qf))
                 & (df.method == method)]
        values = {float(v) for v in sel.top1}
    return values.pop() if len(values) == 1 else None


# the published metrics with a fidelity-board column (jarcal Table 2 prints LPIPS and FID)
PAPER_FIDELITY_METRICS = ("psnr", "ssim", "psnrb", "lpips", "fid")


def paper_fidelity_rows(paper: str) -> list[dict]:
    """A paper's fidelity tables (not its single-image figures) as leaderboard rows with source=paper: one row
    per (dataset, channels, codec, QF, method), metrics side by side. Two tables that print different metrics of
    one setting (jarcal Table 1: PSNR/SSIM/PSNR-B, Table 2: LPIPS) make one row naming both; two different values
    of one metric are an error. Datasets keep the paper's names (dagn's `bsd500` is its own image set, not
    carbench's `bsds500`)."""
    df = load("fidelity")
    if df.empty:
        return []
    df = df[(df.paper == paper) & ~df.table.str.startswith("Fig")]
    rows = []
    for (table, dataset, channels, codec, qf, method), g in df.groupby(
            ["table", "dataset", "channels", "codec", "qf", "method"], sort=True):
        metrics = dict(zip(g.metric, g.value))
        notes = sorted({n for n in g.note if n})
        if not set(metrics) & set(PAPER_FIDELITY_METRICS):
            continue
        rows.append({"method": method, "preset": "paper", "dataset": dataset, "channels": channels, "codec": codec,
                     "qf": qf, "passes": 1, "subsampling": "", "seed": "", "source": "paper",
                     **{m: metrics.get(m, "") for m in PAPER_FIDELITY_METRICS},
                     "weights": f"{paper} Table {table}" + (f": {'; '.join(notes)}" if notes else "")})
    return _merge_tables(rows)


def _merge_tables(rows: list[dict]) -> list[dict]:
    """One fidelity row per leaderboard key: the metrics of every table that prints that setting (before, a later
    table's row replaced an earlier one's under the same key and its numbers were lost)."""
    from benchmark.boards.leaderboard import FIDELITY_KEY

    merged: dict[tuple, dict] = {}
    for r in rows:
        key = tuple(str(r.get(k, "")) for k in FIDELITY_KEY)
        if key not in merged:
            merged[key] = dict(r)
            continue
        row = merged[key]
        for m in PAPER_FIDELITY_METRICS:
            if r[m] != "" and row[m] != "" and float(r[m]) != float(row[m]):
                raise ValueError(f"published rows disagree for {dict(zip(FIDELITY_KEY, key))}: {m} {row[m]} "
                                 f"({row['weights']}) vs {r[m]} ({r['weights']})")
            row[m] = row[m] if row[m] != "" else r[m]
        row["weights"] += "; also " + r["weights"]
    return list(merged.values())


# the papers' method names for carbench's methods (the AFD paper's DDP and "transfer learning" rows)
PAPER_METHOD_NAMES = {"ddp": "degradation_prior", "transfer_learning": "jpeg_finetune"}


def paper_classification_rows(paper: str) -> list[dict]:
    """A paper's classification tables as `classification.csv` rows with source=paper (one per printed top-1),
    averages over QFs or passes left out (they are not measurements). Multi-pass rows (Table VI: each pass draws
    from 25/18/15/10/7) carry that set as their QF, clean-image rows codec `none`, like measured rows."""
    from datamodules.corruptions import AFD_QF_SET

    df = load("classification")
    if df.empty:
        return []
    df = df[(df.paper == paper) & (df.qf != "avg") & (df.passes != "avg")]
    rows = []
    for r in df.to_dict("records"):
        passes = int(r["passes"]) if r["passes"] else (1 if r["codec"] else 0)
        qf = "/".join(map(str, AFD_QF_SET)) if r["passes"] else r["qf"]
        rows.append({"task": "classification", "model": r["backbone"],
                     "method": PAPER_METHOD_NAMES.get(r["method"], r["method"]), "preset": "paper",
                     "dataset": r["dataset"], "codec": r["codec"] or "none", "qf": qf, "passes": passes,
                     "subsampling": "", "seed": "", "metric": "top1", "value": r["top1"], "n_images": "",
                     "source": "paper", "model_weights": "", "codec_lib": "",
                     "weights": f"{paper} Table {r['table']}" + (f": {r['note']}" if r["note"] else "")})
    return _merge_repeats(rows)


def _merge_repeats(rows: list[dict]) -> list[dict]:
    """One row per leaderboard key: a number two tables print alike (AFD Tables V and X) is one row naming both;
    two different numbers under one key are an error, never a silent pick."""
    from benchmark.boards.leaderboard import TASK_KEY

    merged: dict[tuple, dict] = {}
    for r in rows:
        key = tuple(str(r.get(k, "")) for k in TASK_KEY)
        if key not in merged:
            merged[key] = r
        elif merged[key]["value"] != r["value"]:
            raise ValueError(f"published rows disagree for {dict(zip(TASK_KEY, key))}: {merged[key]['value']} "
                             f"({merged[key]['weights']}) vs {r['value']} ({r['weights']})")
        else:
            merged[key]["weights"] += "; also " + r["weights"]
    return list(merged.values())
