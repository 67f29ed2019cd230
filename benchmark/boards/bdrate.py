"""What a restorer is worth in bits: Bjøntegaard deltas of every method against the unrestored input.

`bd_rate` / `bd_metric` are the Bjøntegaard metrics (VCEG-M33) with the piecewise cubic Hermite interpolation
(PCHIP) of the JCT-VC / JVET common-test-condition sheets (the `piecewise=1` mode of the usual Python ports):
log-rate is interpolated as a function of the metric (BD-rate), or the metric as a function of log-rate
(BD-metric), over the interval where both curves have points, and integrated exactly (the interpolant is a
piecewise cubic). BD-rate < 0: the test curve needs fewer bits for the same quality.

`benchmark bdrate` reads the committed boards and writes `bdrate.csv`: per (dataset, channels, codec) of the
fidelity board, every method with >= 4 single-pass QFs that `jpeg` also has, for PSNR and SSIM (rate: the rows'
bpp); per (classifier, dataset, codec) of the classification board, every method against `direct` for top-1 and
top-5 vs bpp. Classification rows carry no bpp, so the rate is computed here (`classification_rates`): the mean
over the images of 8 * bytes / (h * w) of the classifier's centre crops encoded by `datamodules.corruptions.apply`
at that QF; the values go into every row's `rates` column (`QF:bpp;...`), which the rate-accuracy plot reads.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator

from benchmark.boards import leaderboard

MIN_POINTS = 4
FIDELITY_METRICS = ("psnr", "ssim")
TASK_METRICS = {"classification": ("top1", "top5"), "detection": ("consistency_map", "consistency_map_50")}
REFERENCE = {"fidelity": "jpeg", "classification": "direct", "detection": "direct"}  # each board's unrestored input
# besides all common QFs, the curves are also compared on these QF ranges where >= 4 common QFs fall in them: the
# compact restorers are trained on QF 5-50, and above it they can cost PSNR (the curves cross)
SUB_RANGES = ((5, 50),)


def qf_sets(qfs: list[int]) -> list[list[int]]:
    """All common QFs, then each SUB_RANGES part of them that has >= MIN_POINTS QFs and is not all of them."""
    sets = [qfs]
    for lo, hi in SUB_RANGES:
        part = [q for q in qfs if lo <= q <= hi]
        if len(part) >= MIN_POINTS and part != qfs:
            sets.append(part)
    return sets

BDRATE_KEY = ["board", "model", "method", "preset", "dataset", "channels", "codec", "subsampling", "metric",
              "qf_range", "source", "weights_sha256"]
BDRATE_COLUMNS = BDRATE_KEY[:-3] + ["reference", "qf_range", "n_points", "bd_rate_pct", "bd_metric", "rate",
                                    "rates", "n_images", "source", "weights_sha256", "carbench_version",
                                    "git_commit", "created_at"]
BDRATE_SCHEMA = leaderboard.Schema(tuple(BDRATE_KEY), tuple(BDRATE_COLUMNS),
                                   ("bd_rate_pct", "bd_metric", "n_points", "n_images"), "bd_rate_pct")


class BDError(ValueError):
    """A curve the Bjøntegaard metrics cannot use; the message names it."""


# ---- the metrics ---------------------------------------------------------------------------------------------------
def _curve(rate, metric, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(rate, metric) sorted by rate, refused unless >= 4 finite points with rate > 0 where the metric rises
    strictly with the rate (PCHIP needs a function both ways)."""
    r, m = np.asarray(rate, dtype=float).ravel(), np.asarray(metric, dtype=float).ravel()
    if r.size != m.size:
        raise BDError(f"{name}: {r.size} rates but {m.size} metric values")
    if r.size < MIN_POINTS:
        raise BDError(f"{name}: {r.size} point(s); the Bjøntegaard metrics need at least {MIN_POINTS}")
    if not (np.isfinite(r).all() and np.isfinite(m).all()):
        raise BDError(f"{name}: non-finite rate or metric in {list(zip(r.tolist(), m.tolist()))}")
    if (r <= 0).any():
        raise BDError(f"{name}: rates must be > 0 (log-rate), got {r.tolist()}")
    order = np.argsort(r, kind="stable")
    r, m = r[order], m[order]
    if not ((np.diff(r) > 0).all() and (np.diff(m) > 0).all()):
        raise BDError(f"{name}: not monotonic (the metric must rise strictly with the rate): "
                      + ", ".join(f"({a:g}, {b:g})" for a, b in zip(r, m)))
    return r, m


def _overlap(a: np.ndarray, b: np.ndarray, what: str, names: tuple[str, str]) -> tuple[float, float]:
    lo, hi = max(a[0], b[0]), min(a[-1], b[-1])
    if hi <= lo:
        raise BDError(f"{names[0]} and {names[1]}: no overlapping {what} interval "
                      f"([{a[0]:g}, {a[-1]:g}] vs [{b[0]:g}, {b[-1]:g}])")
    return lo, hi


def bd_rate(rate_ref, metric_ref, rate_test, metric_test, *, ref_name: str = "reference",
            test_name: str = "test") -> float:
    """Average rate difference (percent) of the test curve at equal metric, over the metric interval both cover."""
    r1, m1 = _curve(rate_ref, metric_ref, ref_name)
    r2, m2 = _curve(rate_test, metric_test, test_name)
    lo, hi = _overlap(m1, m2, "metric", (ref_name, test_name))
    f1, f2 = PchipInterpolator(m1, np.log(r1)), PchipInterpolator(m2, np.log(r2))
    mean_log_ratio = (f2.integrate(lo, hi) - f1.integrate(lo, hi)) / (hi - lo)
    return 100.0 * math.expm1(mean_log_ratio)


def bd_metric(rate_ref, metric_ref, rate_test, metric_test, *, ref_name: str = "reference",
              test_name: str = "test") -> float:
    """Average metric difference of the test curve at equal rate (BD-PSNR in dB for PSNR), over the log-rate
    interval both cover."""
    r1, m1 = _curve(rate_ref, metric_ref, ref_name)
    r2, m2 = _curve(rate_test, metric_test, test_name)
    l1, l2 = np.log(r1), np.log(r2)
    lo, hi = _overlap(l1, l2, "log-rate", (ref_name, test_name))
    g1, g2 = PchipInterpolator(l1, m1), PchipInterpolator(l2, m2)
    return float((g2.integrate(lo, hi) - g1.integrate(lo, hi)) / (hi - lo))


# ---- rates of the classification rows ------------------------------------------------------------------------------
_PREPROCESS = re.compile(r"resize (\d+) (\w+), crop (\d+)")


def classification_rates(folder: str | Path, codec: str, qfs, subsampling: str = "420", resize: int = 256,
                         crop: int = 224, interpolation: str = "bicubic", n: int | None = None,
                         progress: bool = False) -> dict[int, float]:
    """{qf: mean bpp} of an ImageNet folder's classifier crops (resize shorter side, centre crop, as the
    classification run does) encoded by `corruptions.apply` at each QF: mean over images of 8 * bytes / (h * w).
    `n`: the first n files only (rows of `dataset[:n]`); unreadable files are skipped, as the run skips them."""
    from datamodules.corruptions import Corruption, apply
    from datamodules.sources import ImageError

    from datamodules import classification as C

    folder = Path(folder)
    layout = C.imagenet_folders if any(p.is_dir() for p in folder.iterdir()) else C.imagenet_flat
    samples = layout(folder).samples
    samples = samples if n is None else samples[:n]
    corruptions = {int(q): Corruption(codec, (int(q),), subsampling=subsampling) for q in qfs}
    bits = {q: [] for q in corruptions}
    for i, (path, _) in enumerate(samples):
        try:
            px = C.resize_center_crop(C.load_rgb_noted(path)[0], resize, crop, interpolation)
        except ImageError:
            continue
        for q, c in corruptions.items():
            bits[q].append(8.0 * len(apply(px, c)[1]) / (px.shape[0] * px.shape[1]))
        if progress and (i + 1) % 200 == 0:
            print(f"  rates: {i + 1}/{len(samples)} images", file=sys.stderr)
    return {q: float(np.mean(v)) for q, v in bits.items()}


def photo_rates(folder: str | Path, codec: str, qfs, subsampling: str = "420", n: int | None = None) -> dict[int, float]:
    """{qf: mean bpp} of the whole photos of a folder (the first n usable ones, as the detection run reads them)
    encoded by `corruptions.apply` at each QF."""
    from datamodules.classification import load_rgb_noted
    from datamodules.corruptions import Corruption, apply
    from datamodules.photos import photo_paths
    from datamodules.sources import SCORABLE_MIN_SIDE, ImageError

    corruptions = {int(q): Corruption(codec, (int(q),), subsampling=subsampling) for q in qfs}
    bits: dict[int, list[float]] = {q: [] for q in corruptions}
    used = 0
    for path in photo_paths(folder, "imagenet" if any(p.is_dir() for p in Path(folder).iterdir()) else "folder"):
        if n is not None and used >= n:
            break
        try:
            px = load_rgb_noted(path)[0]
        except ImageError:
            continue
        if min(px.shape[:2]) < SCORABLE_MIN_SIDE:
            continue
        used += 1
        for q, c in corruptions.items():
            bits[q].append(8.0 * len(apply(px, c)[1]) / (px.shape[0] * px.shape[1]))
    return {q: float(np.mean(v)) for q, v in bits.items()}


def _imagenet_spec(dataset: str, model_weights: str, imagenet: Path | None, board: str = "classification"):
    """(folder, n, resize, crop, interpolation) for a classification row's dataset, or a reason it has none."""
    from benchmark.evaluate.tasks import dataset_label

    base, _, sub = dataset.partition("[:")
    n = int(sub.rstrip("]")) if sub else None
    if not base.startswith("imagenet"):
        return "its bpp is computed for ImageNet folders only (not procedural or other sets)"
    if imagenet is None or not imagenet.is_dir():
        return "no ImageNet folder to compute its rate (--imagenet DIR or $CARBENCH_IMAGENET)"
    if dataset_label(f"imagenet-flat:{imagenet}") != base:
        return f"its images are not {imagenet} (--imagenet DIR names the folder)"
    if board == "detection":  # the whole photos
        return imagenet, n, 0, 0, ""
    m = _PREPROCESS.search(model_weights)
    if not m:
        return f"its model_weights {model_weights!r} do not say the classifier's resize/crop"
    return imagenet, n, int(m.group(1)), int(m.group(3)), m.group(2)


# ---- the board -----------------------------------------------------------------------------------------------------
def _label(method: str, preset: str) -> str:
    return method if preset in ("", "none") else f"{method}.{preset}"


def _qf_range(qfs) -> str:
    return f"{min(qfs)}-{max(qfs)}"


def _rates_text(rates: dict[int, float]) -> str:
    return ";".join(f"{q}:{rates[q]:.4f}" for q in sorted(rates))


def parse_rates(text: str) -> dict[int, float]:
    """The `rates` column back into {qf: bpp}."""
    return {int(q): float(b) for q, b in (item.split(":") for item in text.split(";") if item)}


def _single_pass(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df.source == "measured") & (df.passes == "1") & df.qf.str.isdigit()].copy()


def _row(**kw) -> dict:
    return {"source": "measured", "carbench_version": leaderboard.carbench_version(),
            "git_commit": leaderboard.git_commit(), "created_at": leaderboard.now(), **kw}


def _delta_row(board, ref, test, metric, qfs, rate_ref, rate_test, what, **context) -> dict:
    """One board row: BD-rate and BD-metric of `test` against `ref` on their common QFs."""
    y_ref = [ref[q][metric] for q in qfs]
    y_test = [test[q][metric] for q in qfs]
    names = {"ref_name": f"{REFERENCE[board]} {metric} curve of {what}",
                 "test_name": f"{context['method']}.{context['preset']} {metric} curve of {what}"}
    pct = bd_rate(rate_ref, y_ref, rate_test, y_test, **names)
    delta = bd_metric(rate_ref, y_ref, rate_test, y_test, **names)
    return _row(board=board, metric=metric, reference=REFERENCE[board], qf_range=_qf_range(qfs), n_points=len(qfs),
                bd_rate_pct=f"{pct:.4f}", bd_metric=f"{delta:.6f}", **context)


def fidelity_rows(df: pd.DataFrame, notes: list[str]) -> list[dict]:
    """BD rows of a fidelity board: each method against `jpeg` on the same images, codec and channels."""
    rows = []
    df = _single_pass(df)
    for c in ("psnr", "ssim", "bpp"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    group = ["dataset", "channels", "codec", "subsampling", "seed"]
    for (dataset, channels, codec, subsampling, seed), g in df.groupby(group, sort=True):
        what = f"{dataset} ({channels}, {codec}, {subsampling}, seed {seed})"
        ref_rows = g[g.method == REFERENCE["fidelity"]]
        if ref_rows.empty:
            continue
        ref = {int(r.qf): r._asdict() for r in ref_rows.itertuples()}
        for (method, preset, sha), t in g[g.method != REFERENCE["fidelity"]].groupby(
                ["method", "preset", "weights_sha256"], sort=True):
            test = {int(r.qf): r._asdict() for r in t.itertuples()}
            qfs = _shared_qfs(test, ref, f"{_label(method, preset)} on {what}", "fidelity", notes)
            if qfs is None:
                continue
            if {test[q]["n_images"] for q in qfs} != {ref[q]["n_images"] for q in qfs}:
                notes.append(f"{_label(method, preset)} on {what}: scored on another image count than jpeg")
                continue
            context = {"model": "", "method": method, "preset": preset, "dataset": dataset, "channels": channels,
                       "codec": codec, "subsampling": subsampling, "weights_sha256": sha,
                       "rate": "bpp of the board's rows", "n_images": test[qfs[0]]["n_images"]}
            for part in qf_sets(qfs):
                context["rates"] = _rates_text({q: test[q]["bpp"] for q in part})
                for metric in FIDELITY_METRICS:
                    try:
                        rows.append(_delta_row("fidelity", ref, test, metric, part, [ref[q]["bpp"] for q in part],
                                               [test[q]["bpp"] for q in part], what, **context))
                    except BDError as e:
                        notes.append(str(e))
    return rows


def _shared_qfs(test: dict, ref: dict, name: str, board: str, notes: list[str]) -> list[int] | None:
    """The QFs a method shares with its board's reference, or None (with a note when it had a curve) when fewer than
    MIN_POINTS."""
    qfs = sorted(set(test) & set(ref))
    if len(qfs) >= MIN_POINTS:
        return qfs
    if len(test) >= 2:
        shared = f" ({', '.join(map(str, qfs))})" if board == "fidelity" else ""
        notes.append(f"{name}: {len(qfs)} QF(s) shared with {REFERENCE[board]}{shared}, {MIN_POINTS} needed")
    return None


def _by_qf(rows: pd.DataFrame) -> dict[int, dict[str, float]]:
    """Long-format task rows -> {qf: {metric: value}}."""
    return {int(q): dict(zip(r.metric, r.value)) for q, r in rows.groupby("qf")}


def classification_rows(df: pd.DataFrame, notes: list[str], imagenet: Path | None,
                        progress: bool = False, board: str = "classification") -> list[dict]:
    """BD rows of the classification board: each method against `direct` (the classifier on the compressed
    crops), top-1 and top-5 vs the crops' bpp (computed once per dataset, codec and QF set). `board="detection"`:
    the real detectors on ImageNet photos, consistency mAP (and its AP50) vs the whole photos' bpp."""
    rows = []
    df = _single_pass(df)
    df = df[df.metric.isin(TASK_METRICS[board])]
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    rate_cache: dict[tuple, dict[int, float]] = {}
    group = ["model", "dataset", "codec", "subsampling", "seed"]
    for (model, dataset, codec, subsampling, seed), g in df.groupby(group, sort=True):
        what = f"{model} on {dataset} ({codec}, {subsampling}, seed {seed})"
        ref_rows = g[g.method == REFERENCE[board]]
        if ref_rows.empty:
            continue
        ref = _by_qf(ref_rows)
        for (method, preset, sha), t in g[g.method != REFERENCE[board]].groupby(
                ["method", "preset", "weights_sha256"], sort=True):
            test = _by_qf(t)
            qfs = _shared_qfs(test, ref, f"{_label(method, preset)} on {what}", board, notes)
            if qfs is None:
                continue
            spec = _imagenet_spec(dataset, t.model_weights.iloc[0], imagenet, board)
            if isinstance(spec, str):
                notes.append(f"{_label(method, preset)} on {what}: {spec}")
                continue
            folder, n, resize, crop, interp = spec
            key = (str(folder), n, resize, crop, interp, codec, subsampling)
            need = [q for q in qfs if q not in rate_cache.get(key, {})]
            if need:
                if progress:
                    print(f"computing the bpp of {dataset} ({codec}, QF {','.join(map(str, need))}, "
                          f"resize {resize} {interp}, crop {crop})", file=sys.stderr)
                rate_cache.setdefault(key, {}).update(
                    photo_rates(folder, codec, need, subsampling, n) if board == "detection" else
                    classification_rates(folder, codec, need, subsampling, resize, crop, interp, n, progress))
            context = {"model": model, "method": method, "preset": preset, "dataset": dataset, "channels": "rgb",
                       "codec": codec, "subsampling": subsampling, "weights_sha256": sha,
                       "rate": "bpp of the whole photos, computed" if board == "detection" else
                       f"bpp of the {crop}x{crop} crops (resize {resize} {interp}), computed",
                       "n_images": t.n_images.iloc[0]}
            for part in qf_sets(qfs):
                rate = [rate_cache[key][q] for q in part]
                context["rates"] = _rates_text(dict(zip(part, rate)))
                for metric in TASK_METRICS[board]:
                    if not all(metric in test[q] and metric in ref[q] for q in part):
                        continue
                    try:
                        rows.append(_delta_row(board, ref, test, metric, part, rate, rate, what,
                                               **context))
                    except BDError as e:
                        notes.append(str(e))
    return rows


def build(boards: Path, imagenet: Path | None = None, progress: bool = False) -> tuple[list[dict], list[str]]:
    """(bdrate rows, notes on the curves left out and why) from a folder of boards."""
    notes: list[str] = []
    rows = fidelity_rows(leaderboard.read(boards / "fidelity.csv", "fidelity"), notes) \
        if (boards / "fidelity.csv").exists() else []
    if (boards / "classification.csv").exists():
        rows += classification_rows(leaderboard.read(boards / "classification.csv", "classification"), notes,
                                    imagenet, progress)
    if (boards / "detection.csv").exists():
        rows += classification_rows(leaderboard.read(boards / "detection.csv", "detection"), notes, imagenet,
                                    progress, board="detection")
    return rows, notes


def write(path: Path, rows: list[dict]) -> Path:
    """Upsert rows into a bdrate board (validated against its schema first; atomic, locked)."""
    new = pd.DataFrame([{c: leaderboard._fmt(r.get(c, "")) for c in BDRATE_COLUMNS} for r in rows],
                       columns=BDRATE_COLUMNS, dtype=str)
    leaderboard.validate(new, BDRATE_SCHEMA, f"rows for {path}")
    return leaderboard.upsert(path, rows, key=BDRATE_KEY, columns=BDRATE_COLUMNS)


def read(path: Path) -> pd.DataFrame:
    df = leaderboard.read(path)
    if not df.empty:
        leaderboard.validate(df, BDRATE_SCHEMA, str(path))
    return df


def format_table(rows: list[dict]) -> str:
    mw = max([7] + [len(r["metric"]) + 1 for r in rows])  # consistency_map_50 is long
    lines = [f"{'board':<15}{'method':<24}{'dataset':<28}{'codec':<6}{'metric':<{mw}}{'QFs':<8}{'n':>3}"
             + f"{'BD-rate %':>11}{'BD-metric':>11}"]
    for r in rows:
        lines.append(f"{r['board']:<15}{_label(r['method'], r['preset']):<24}"
                     f"{(r['dataset'] + ('/' + r['channels'] if r['board'] == 'fidelity' else '')):<28}"
                     f"{r['codec']:<6}{r['metric']:<{mw}}{r['qf_range']:<8}{r['n_points']:>3}"
                     f"{float(r['bd_rate_pct']):>11.2f}{float(r['bd_metric']):>11.4f}")
    return "\n".join(lines)
