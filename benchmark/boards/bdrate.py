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
Detection rows (real detectors on photos): consistency mAP vs the whole photos' bpp; segmentation rows on photos
(person segmenters): mask IoU and boundary F vs the bpp of the whole photos the rows scored (the clean mask's
selection, named by the reference row's per-image file; folders found under `--photos`).

Each row's 95 % interval (`bd_rate_lo` ... `bd_metric_hi`, `bd_interval`): where every QF row of both curves has a
per-image file (`benchmark.boards.per_image`), the photos are resampled (paired on the image digest, one set of
indices of `benchmark.metrics.paired.bootstrap_indices` per resample for every point of both curves), both mean
curves re-drawn and both BD values recomputed; the percentile interval of 2000 resamples. Fidelity rows resample the
per-image bpp too; task rows have no per-image rate, so it is held at its mean (said in `interval_note`). COCO mAP is
no mean over photos: detection rows recompute it at every point of both curves from the per-image COCOeval matches
(`.coco.gz`) on each resample (`bd_interval_of`; about 10 ms per point and resample on 1000 photos). Elsewhere
the columns stay empty and `interval_note` says why. A BD-rate interval that contains 0 is a tie.
"""
from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.interpolate import PchipInterpolator

from benchmark.boards import leaderboard, per_image
from benchmark.metrics.paired import LEVEL, RESAMPLES, SEED, bootstrap_indices

MIN_POINTS = 4
FIDELITY_METRICS = ("psnr", "ssim")
TASK_METRICS = {"classification": ("top1", "top5"), "detection": ("consistency_map", "consistency_map_50"),
                "segmentation": ("consistency_iou", "consistency_boundary_f")}
REFERENCE = {"fidelity": "jpeg", "classification": "direct", "detection": "direct",  # each board's unrestored input
             "segmentation": "direct"}
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
# bd_rate_lo / _hi, bd_metric_lo / _hi: the 95 % paired bootstrap interval over the images (see `bd_interval`);
# n_paired: the images it resampled (those in every QF row's per-image file of both curves); resamples: drawn;
# dropped: resamples whose curves gave no BD value (counted as the worst case on both sides); interval_note: how the
# interval was drawn, or why the columns are empty (never an invented interval)
INTERVAL_COLUMNS = ("bd_rate_lo", "bd_rate_hi", "bd_metric_lo", "bd_metric_hi", "n_paired", "resamples", "dropped",
                    "interval_note")
BDRATE_COLUMNS = BDRATE_KEY[:-3] + ["reference", "qf_range", "n_points", "bd_rate_pct", "bd_metric", "bd_rate_lo",
                                    "bd_rate_hi", "bd_metric_lo", "bd_metric_hi", "rate", "rates", "n_images",
                                    "n_paired", "resamples", "dropped", "interval_note", "source", "weights_sha256",
                                    "carbench_version", "git_commit", "created_at", "command"]
BDRATE_SCHEMA = leaderboard.Schema(tuple(BDRATE_KEY), tuple(BDRATE_COLUMNS),
                                   ("bd_rate_pct", "bd_metric", "n_points", "n_images", "bd_rate_lo", "bd_rate_hi",
                                    "bd_metric_lo", "bd_metric_hi", "n_paired", "resamples", "dropped"),
                                   "bd_rate_pct")


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


# ---- the same metrics on many curves at once (the bootstrap's resampled curves) -----------------------------------
def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise PCHIP derivatives of (curves, points) knots: scipy's `PchipInterpolator._find_derivatives` (weighted
    harmonic mean inside, the shape-preserving three-point estimate at the ends), on every row at once."""
    h = np.diff(x, axis=1)
    m = np.diff(y, axis=1) / h
    sm = np.sign(m)
    condition = (sm[:, 1:] != sm[:, :-1]) | (m[:, 1:] == 0) | (m[:, :-1] == 0)
    w1 = 2 * h[:, 1:] + h[:, :-1]
    w2 = h[:, 1:] + 2 * h[:, :-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        whmean = (w1 / m[:, :-1] + w2 / m[:, 1:]) / (w1 + w2)
        inner = np.where(condition, 0.0, 1.0 / whmean)

    def edge(h0, h1, m0, m1):
        d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        mask = np.sign(d) != np.sign(m0)
        mask2 = (np.sign(m0) != np.sign(m1)) & (np.abs(d) > 3.0 * np.abs(m0))
        return np.where(mask, 0.0, np.where(mask2, 3.0 * m0, d))

    return np.column_stack([edge(h[:, 0], h[:, 1], m[:, 0], m[:, 1]), inner,
                            edge(h[:, -1], h[:, -2], m[:, -1], m[:, -2])])


def _pchip_integral(x: np.ndarray, y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Row-wise exact integral over [lo, hi] (inside each row's knots) of the PCHIP interpolant of (x, y): the cubic
    Hermite pieces integrated in closed form."""
    d = _pchip_slopes(x, y)
    h = np.diff(x, axis=1)
    full = h * (y[:, :-1] + y[:, 1:]) / 2 + h ** 2 * (d[:, :-1] - d[:, 1:]) / 12  # each whole piece
    before = np.concatenate([np.zeros((len(x), 1)), np.cumsum(full, axis=1)], axis=1)
    rows = np.arange(len(x))

    def antiderivative(v):  # integral from x[:, 0] to v
        i = (x[:, 1:-1] <= v[:, None]).sum(axis=1)  # the piece holding v
        hi_, t = h[rows, i], (v - x[rows, i]) / h[rows, i]
        t2, t3, t4 = t * t, t ** 3, t ** 4
        part = (y[rows, i] * (t4 / 2 - t3 + t) + hi_ * d[rows, i] * (t4 / 4 - 2 * t3 / 3 + t2 / 2)
                + y[rows, i + 1] * (t3 - t4 / 2) + hi_ * d[rows, i + 1] * (t4 / 4 - t3 / 3))
        return before[rows, i] + hi_ * part

    return antiderivative(hi) - antiderivative(lo)


def bd_many(rate_ref, metric_ref, rate_test, metric_test) -> tuple[np.ndarray, np.ndarray]:
    """(BD-rate %, BD-metric) of many curve pairs, one per row of (curves, points) arrays, with the refusals of
    `bd_rate` / `bd_metric` (too few / non-finite / non-positive rates / not monotonic / no overlap) giving NaN.
    Agrees with `bd_rate` / `bd_metric` to rounding (tests); the board's point estimates use those."""
    arrays = [np.atleast_2d(np.asarray(a, dtype=np.float64)) for a in (rate_ref, metric_ref, rate_test, metric_test)]
    k, q = arrays[0].shape
    if q < MIN_POINTS or any(a.shape != (k, q) for a in arrays):
        raise ValueError(f"bd_many: (curves, >= {MIN_POINTS} points) arrays of one shape, got "
                         f"{[a.shape for a in arrays]}")
    ok = np.ones(k, dtype=bool)
    curves = []
    for r, m in ((arrays[0], arrays[1]), (arrays[2], arrays[3])):
        with np.errstate(invalid="ignore", divide="ignore"):
            ok &= np.isfinite(r).all(1) & np.isfinite(m).all(1) & (r > 0).all(1)
            order = np.argsort(r, axis=1, kind="stable")
            r, m = np.take_along_axis(r, order, 1), np.take_along_axis(m, order, 1)
            ok &= (np.diff(r, axis=1) > 0).all(1) & (np.diff(m, axis=1) > 0).all(1)
            curves.append((np.log(np.where(ok[:, None], r, 1.0)), np.where(ok[:, None], m, 0.0)))
    (l1, m1), (l2, m2) = curves
    rate_pct, metric = np.full(k, np.nan), np.full(k, np.nan)
    # BD-rate: log-rate as a function of the metric over the common metric interval
    lo, hi = np.maximum(m1[:, 0], m2[:, 0]), np.minimum(m1[:, -1], m2[:, -1])
    sel = ok & (hi > lo)
    if sel.any():
        s = np.flatnonzero(sel)
        diff = _pchip_integral(m2[s], l2[s], lo[s], hi[s]) - _pchip_integral(m1[s], l1[s], lo[s], hi[s])
        rate_pct[s] = 100.0 * np.expm1(diff / (hi[s] - lo[s]))
    # BD-metric: the metric as a function of log-rate over the common log-rate interval
    lo, hi = np.maximum(l1[:, 0], l2[:, 0]), np.minimum(l1[:, -1], l2[:, -1])
    sel = ok & (hi > lo)
    if sel.any():
        s = np.flatnonzero(sel)
        diff = _pchip_integral(l2[s], m2[s], lo[s], hi[s]) - _pchip_integral(l1[s], m1[s], lo[s], hi[s])
        metric[s] = diff / (hi[s] - lo[s])
    return rate_pct, metric


# ---- their bootstrap interval over the images ----------------------------------------------------------------------
@dataclass(frozen=True)
class BDInterval:
    """95 % paired bootstrap intervals of BD-rate (percent) and BD-metric; None where undefined."""
    rate_lo: float | None
    rate_hi: float | None
    metric_lo: float | None
    metric_hi: float | None
    n_images: int
    resamples: int
    dropped: int  # resamples whose mean curves gave no BD value (not monotonic, no overlap)


def _worst_case_percentiles(values: np.ndarray, dropped: int, level: float) -> tuple[float | None, float | None]:
    """The percentile interval of `values` plus `dropped` resamples that count as -inf for the lower bound and +inf
    for the upper (the worst case either side: a dropped resample never narrows the interval); with no dropped
    resample it is numpy's linear percentile. None where the bound falls on a dropped resample."""
    total = len(values) + dropped
    tail = (1 - level) / 2
    v = np.sort(values)
    lo_pos, hi_pos = (total - 1) * tail, (total - 1) * (1 - tail)  # positions in the sorted resamples
    lo = None if math.floor(lo_pos) < dropped or not len(v) else \
        float(np.interp(lo_pos - dropped, np.arange(len(v)), v))  # the dropped ones sit first (at -inf)
    hi = None if math.ceil(hi_pos) > len(v) - 1 or not len(v) else \
        float(np.interp(hi_pos, np.arange(len(v)), v))  # ... and last (at +inf)
    return lo, hi


def bd_interval(rate_ref, metric_ref, rate_test, metric_test, resamples: int = RESAMPLES, seed: int = SEED,
                level: float = LEVEL) -> BDInterval:
    """Paired bootstrap of BD-rate and BD-metric over images. `metric_*`: (QFs, images) per-image values of each
    curve, the same images in the same column order in every row of both; `rate_*` likewise, or (QFs,) mean rates
    held fixed (no per-image rate). One set of photo indices per resample (`paired.bootstrap_indices`) is applied to
    every QF row of both curves; the mean curves are re-drawn from it and both BD values recomputed (`bd_many`, all
    the resamples of a block at once). Resampled means are a (resamples x images) count matrix times the per-image
    values, one block of indices at a time. A resample whose curves `bd_rate` / `bd_metric` would refuse (not
    monotonic, no overlap) is dropped and counted."""
    m_ref, m_test = np.asarray(metric_ref, dtype=np.float64), np.asarray(metric_test, dtype=np.float64)
    if m_ref.ndim != 2 or m_ref.shape != m_test.shape:
        raise ValueError(f"per-image metrics need two (QFs, images) arrays of one shape, got {m_ref.shape} and "
                         f"{m_test.shape}")
    q, n = m_ref.shape
    if n < 1:
        raise ValueError("no image")
    rates = [np.asarray(r, dtype=np.float64) for r in (rate_ref, rate_test)]
    per_image = [r for r in rates if r.ndim == 2]
    if any(r.shape not in ((q,), (q, n)) for r in rates):
        raise ValueError(f"rates need shape ({q},) or ({q}, {n}), got {rates[0].shape} and {rates[1].shape}")
    columns = np.concatenate([m_ref, m_test, *per_image]).T  # (images, columns)
    if not np.isfinite(columns).all() or not all(np.isfinite(r).all() for r in rates):
        raise ValueError("NaN or inf among the per-image values")
    bd_r, bd_m = [], []
    for idx in bootstrap_indices(n, resamples, seed):
        k = len(idx)
        counts = np.bincount((idx + n * np.arange(k)[:, None]).ravel(), minlength=k * n).reshape(k, n)
        means = counts @ columns / n  # (k, columns): each resample's mean of every curve point
        mr, mt, at = means[:, :q], means[:, q:2 * q], 2 * q
        curve_rates = []
        for r in rates:
            if r.ndim == 2:
                curve_rates.append(means[:, at:at + q])
                at += q
            else:
                curve_rates.append(np.broadcast_to(r, (k, q)))
        a, b = bd_many(curve_rates[0], mr, curve_rates[1], mt)
        bd_r.append(a)
        bd_m.append(b)
    bd_r, bd_m = np.concatenate(bd_r), np.concatenate(bd_m)
    kept = np.isfinite(bd_r) & np.isfinite(bd_m)  # a resample is dropped when either BD value is refused
    dropped = int((~kept).sum())
    bd_r, bd_m = bd_r[kept], bd_m[kept]
    r_lo, r_hi = _worst_case_percentiles(np.array(bd_r), dropped, level)
    m_lo, m_hi = _worst_case_percentiles(np.array(bd_m), dropped, level)
    return BDInterval(r_lo, r_hi, m_lo, m_hi, n, resamples, dropped)


def bd_interval_of(statistic, n: int, rate_ref, rate_test, resamples: int = RESAMPLES, seed: int = SEED,
                   level: float = LEVEL, progress=None) -> BDInterval:
    """`bd_interval` for a set-level metric (COCO mAP): `statistic(indices) -> (reference curve, test curve)`, the
    metric at every QF of both curves recomputed on the photos `indices` (with repeats); the rates (QFs,) are held at
    their means. The same resamples as `bd_interval` (`paired.bootstrap_indices`). `progress(done, total)`."""
    rates = [np.asarray(r, dtype=np.float64) for r in (rate_ref, rate_test)]
    if n < 1:
        raise ValueError("no image")
    bd_r, bd_m, done = [], [], 0
    for idx in bootstrap_indices(n, resamples, seed):
        curves = np.array([np.concatenate(statistic(i)) for i in idx], dtype=np.float64)  # (k, 2 q)
        q = curves.shape[1] // 2
        k = len(idx)
        a, b = bd_many(np.broadcast_to(rates[0], (k, q)), curves[:, :q], np.broadcast_to(rates[1], (k, q)),
                       curves[:, q:])
        bd_r.append(a)
        bd_m.append(b)
        done += k
        if progress is not None:
            progress(done, resamples)
    bd_r, bd_m = np.concatenate(bd_r), np.concatenate(bd_m)
    kept = np.isfinite(bd_r) & np.isfinite(bd_m)
    dropped = int((~kept).sum())
    r_lo, r_hi = _worst_case_percentiles(bd_r[kept], dropped, level)
    m_lo, m_hi = _worst_case_percentiles(bd_m[kept], dropped, level)
    return BDInterval(r_lo, r_hi, m_lo, m_hi, n, resamples, dropped)


# ---- rates of the classification rows ------------------------------------------------------------------------------
_PREPROCESS = re.compile(r"resize (\d+) (\w+), crop (\d+)")


def classification_rates(folder: str | Path, codec: str, qfs, subsampling: str = "420", resize: int = 256,
                         crop: int = 224, interpolation: str = "bicubic", n: int | None = None,
                         progress: bool = False) -> dict[int, float]:
    """{qf: mean bpp} of an ImageNet folder's classifier crops (resize shorter side, centre crop, as the
    classification run does) encoded by `corruptions.apply` at each QF: mean over images of 8 * bytes / (h * w).
    `n`: the first n files only (rows of `dataset[:n]`); unreadable files are skipped, as the run skips them."""
    from datamodules.corruptions import Corruption, apply
    from datamodules.sources import ImageError, imagenet_layout

    from datamodules import classification as C

    folder = Path(folder)
    layout = C.imagenet_folders if imagenet_layout(folder) == "imagenet" else C.imagenet_flat  # as `run` reads it
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


def photo_rates(folder: str | Path, codec: str, qfs, subsampling: str = "420", n: int | None = None,
                names=None) -> dict[int, float]:
    """{qf: mean bpp} of the whole photos of a folder (the first n usable ones, as the detection run reads them)
    encoded by `corruptions.apply` at each QF. `names`: only these photos (file names; the segmentation rows' photos
    selected by the clean mask), every one of which must be in the folder."""
    from datamodules.classification import load_rgb_noted
    from datamodules.corruptions import Corruption, apply
    from datamodules.photos import photo_paths
    from datamodules.sources import SCORABLE_MIN_SIDE, ImageError, imagenet_layout

    corruptions = {int(q): Corruption(codec, (int(q),), subsampling=subsampling) for q in qfs}
    bits: dict[int, list[float]] = {q: [] for q in corruptions}
    used = 0
    paths = photo_paths(folder, "imagenet" if imagenet_layout(folder) == "imagenet" else "folder")
    if names is not None:
        by_name = {p.name: p for p in paths[:n]}
        missing = [x for x in names if x not in by_name]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of the {len(names)} photos scored are not in {folder} "
                                    f"(e.g. {missing[0]})")
        paths, n = [by_name[x] for x in names], None
    for path in paths:
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


_MASK_SELECTION = re.compile(r"\[mask>=[0-9.]+\]$")


def _photo_spec(dataset: str, imagenet: Path | None, photo_roots) -> tuple[Path, int | None] | str:
    """(folder, n) of a segmentation row's photos (`imagenet-sample1000[mask>=0.1]`,
    `folder:BSDS500_test@c76e7b[:50][mask>=0.1]`), or a reason it has none: ImageNet rows read `imagenet`, folder
    rows the folder of `photo_roots` (folders, or folders of folders) whose name and content give the row's label."""
    from benchmark.evaluate.tasks import dataset_label

    base = _MASK_SELECTION.sub("", dataset)
    base, _, sub = base.partition("[:")
    n = int(sub.rstrip("]")) if sub else None
    if base.startswith("imagenet"):
        spec = _imagenet_spec(base, "", imagenet, "detection")
        return spec if isinstance(spec, str) else (spec[0], n)
    if not base.startswith("folder:"):
        return "its bpp is computed for photo folders and ImageNet folders only"
    candidates = []
    for root in photo_roots:
        root = Path(root)
        if root.is_dir():
            candidates += [root] + sorted(p for p in root.iterdir() if p.is_dir())
    name = base.partition(":")[2].partition("@")[0]  # the label names the resolved folder as it is spelled
    for folder in candidates:
        if folder.resolve().name == name and dataset_label(f"photos:{folder}") == base:
            return folder, n
    return (f"no folder under {', '.join(map(str, photo_roots)) or '(none)'} is {base} (--photos DIR names the "
            "folder, or the folder of folders, of the photos)")


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
            "git_commit": leaderboard.git_commit(), "created_at": leaderboard.now(), "command": leaderboard.command(),
            **kw}


class PointFiles:
    """The per-image files of a board's rows (`benchmark.boards.per_image`), read once each. `scale`: per-image
    value -> the row's unit (0/1 correctness -> percent); `rate`: the per-image rate column, None where the rate of
    a point is the rows' mean (held fixed in the bootstrap)."""

    def __init__(self, board_path: Path, key, scale: float = 1.0, rate: str | None = None,
                 resamples: int = RESAMPLES, seed: int = SEED):
        self.board_path, self.key, self.scale, self.rate = Path(board_path), list(key), scale, rate
        self.resamples, self.seed = resamples, seed
        self._cache: dict[Path, dict | None] = {}

    def read(self, row: dict) -> dict | None:
        """A row's per-image values; detection mAP rows: {"image", "digest", "_matches", "_resampler"} (the
        COCOeval matches, recomputed on each resample; one resampler per file, remembering its resamples)."""
        path = per_image.existing_path(self.board_path, row, self.key)
        matches = path.name.endswith(per_image.MATCHES_SUFFIX)
        if path not in self._cache:
            try:
                values = per_image.read_matches(path) if matches else per_image.read(path)
                if values is not None and matches:
                    from benchmark.metrics.coco_resample import MapResampler

                    values["_resampler"] = MapResampler(values["_matches"], memo=True)
                self._cache[path] = values
            except (OSError, ValueError, IndexError, EOFError) as e:  # a damaged file: no interval, said why
                self._cache[path] = {"_error": f"{path.name}: {type(e).__name__}: {e}"}
        return self._cache[path]


_TOLERANCE = 1e-3  # a file's mean vs the board's value (stored with 4 decimals)


def _no_interval(note: str) -> dict:
    return {**{c: "" for c in INTERVAL_COLUMNS}, "interval_note": f"no interval: {note}"}


def _keyed(digests) -> dict:
    """(digest, k-th occurrence) -> position: a photo seen twice pairs its k-th occurrences."""
    seen: dict[str, int] = {}
    out = {}
    for i, d in enumerate(digests):
        out[(d, seen.get(d, 0))] = i
        seen[d] = seen.get(d, 0) + 1
    return out


def _common_images(data: dict) -> tuple[dict, list, list[int]]:
    """(each file's {(digest, k): position}, the images in every file in the first file's order, the file sizes)."""
    keyed = {k: _keyed(d["digest"]) for k, d in data.items()}
    first = next(iter(keyed.values()))
    common = [k for k in first if all(k in other for other in keyed.values())]
    return keyed, common, sorted({len(v) for v in keyed.values()})


def _interval_columns(iv: BDInterval, how: list[str]) -> dict:
    """The INTERVAL_COLUMNS of a drawn interval; `how` (the note's parts) is completed here."""
    out = {"n_paired": iv.n_images, "resamples": iv.resamples, "dropped": iv.dropped}
    if any(b is None for b in (iv.rate_lo, iv.rate_hi, iv.metric_lo, iv.metric_hi)):
        out.update(bd_rate_lo="", bd_rate_hi="", bd_metric_lo="", bd_metric_hi="")
        how.insert(0, f"interval undefined: {iv.dropped} of {iv.resamples} resampled curves gave no BD value "
                      "(not monotonic / no overlap)")
    else:
        out.update(bd_rate_lo=f"{iv.rate_lo:.4f}", bd_rate_hi=f"{iv.rate_hi:.4f}",
                   bd_metric_lo=f"{iv.metric_lo:.6f}", bd_metric_hi=f"{iv.metric_hi:.6f}")
        if iv.dropped:
            how.append(f"{iv.dropped} resample(s) gave no BD value (not monotonic / no overlap), counted as the "
                       "worst case on both sides")
    out["interval_note"] = "; ".join(how)
    return out


def _interval_fields(files: PointFiles, curves: dict, metric: str, qfs, values: dict, rates: dict) -> dict:
    """The INTERVAL_COLUMNS of one BD row. `curves`: {label: {qf: the board row}} (reference first), `values` /
    `rates`: {label: [the board's value / rate per QF]} (the point estimate's inputs)."""
    missing, data = [], {}
    for label, rows in curves.items():
        for q in qfs:
            row = rows.get(q)
            d = None if row is None else files.read(row)
            if d is None:
                missing.append(f"{label} QF {q}")
            elif "_error" in d:
                return _no_interval(f"per-image file of {label} QF {q} unreadable ({d['_error']})")
            else:
                data[label, q] = d
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        return _no_interval(f"per-image files missing ({len(missing)} of {len(qfs) * len(curves)} points: {shown})")
    if any("_resampler" in d for d in data.values()):
        return _set_interval_fields(files, curves, metric, qfs, values, rates, data)
    columns = [metric] + ([files.rate] if files.rate else [])
    for (label, q), d in data.items():
        for c in columns:
            if c not in d:
                return _no_interval(f"the per-image file of {label} QF {q} has no {c}")
        i = list(qfs).index(q)
        for c, board, scale in ((metric, values[label][i], files.scale),) + \
                (((files.rate, rates[label][i], 1.0),) if files.rate else ()):
            mean = float(np.mean(d[c])) * scale if len(d[c]) else float("nan")
            if not abs(mean - float(board)) <= _TOLERANCE:
                return _no_interval(f"the per-image file of {label} QF {q} does not give the row's {c} (mean "
                                    f"{mean:.4f} of {len(d[c])} images, the board {float(board):.4f})")
    keyed, common, sizes = _common_images(data)
    if not common:
        return _no_interval("no image in every per-image file of both curves")
    arrays = {}
    for label in curves:
        for c in columns:
            arrays[label, c] = np.array([data[label, q][c][[keyed[label, q][k] for k in common]] for q in qfs])
    ref, test = list(curves)
    scale = files.scale
    try:
        iv = bd_interval(arrays[ref, files.rate] if files.rate else rates[ref], scale * arrays[ref, metric],
                         arrays[test, files.rate] if files.rate else rates[test], scale * arrays[test, metric],
                         files.resamples, files.seed)
    except ValueError as e:
        return _no_interval(str(e))
    how = [f"paired bootstrap over {iv.n_images} images, {iv.resamples} resamples (seed {files.seed})"]
    if len(sizes) > 1:
        how.append(f"the images in every file of both curves (files of {sizes[0]} to {sizes[-1]} images)")
    how.append(f"rate: per-image {files.rate}" if files.rate else
               f"rate held at the rows' mean bpp (no per-image rate): only the {metric} per image resampled")
    return _interval_columns(iv, how)


def _set_interval_fields(files: PointFiles, curves: dict, metric: str, qfs, values: dict, rates: dict,
                         data: dict) -> dict:
    """`_interval_fields` for detection mAP rows: the mAP of every point of both curves recomputed from its
    per-image COCOeval matches on each resample of the photos in every file (paired on the image digest)."""
    from benchmark.metrics.coco_resample import SCORES

    score = metric.removeprefix("consistency_")
    if score not in SCORES:
        return _no_interval(f"{metric} is not one of the mAP scores the per-image matches give")
    for (label, q), d in data.items():
        if "_resampler" not in d:
            return _no_interval(f"the per-image file of {label} QF {q} holds no COCOeval matches")
        i = list(qfs).index(q)
        whole = 100.0 * d["_resampler"].scores(np.arange(d["_matches"].n_images), (score,))[score]
        if not abs(whole - float(values[label][i])) <= _TOLERANCE:
            return _no_interval(f"the per-image matches of {label} QF {q} do not give the row's {metric} "
                                f"({whole:.4f}, the board {float(values[label][i]):.4f})")
    keyed, common, sizes = _common_images(data)
    if not common:
        return _no_interval("no image in every per-image file of both curves")
    position = {k: np.array([keyed[k][c] for c in common], dtype=np.int64) for k in data}
    ref, test = list(curves)

    def statistic(indices):
        return tuple(np.array([100.0 * data[label, q]["_resampler"].scores(position[label, q][indices],
                                                                           (score,))[score] for q in qfs])
                     for label in (ref, test))

    try:
        iv = bd_interval_of(statistic, len(common), rates[ref], rates[test], files.resamples, files.seed)
    except ValueError as e:
        return _no_interval(str(e))
    how = [f"paired bootstrap over {iv.n_images} images, {iv.resamples} resamples (seed {files.seed}), "
           f"{metric} recomputed from the per-image COCOeval matches on each"]
    if len(sizes) > 1:
        how.append(f"the images in every file of both curves (files of {sizes[0]} to {sizes[-1]} images)")
    how.append("rate held at the rows' mean bpp (no per-image rate)")
    return _interval_columns(iv, how)


def _delta_row(board, ref, test, metric, qfs, rate_ref, rate_test, what, files: PointFiles | None = None,
               curves: dict | None = None, **context) -> dict:
    """One board row: BD-rate and BD-metric of `test` against `ref` on their common QFs, and their bootstrap
    interval over the images where `files` holds every point's per-image values (`curves`: {label: {qf: row}})."""
    y_ref = [ref[q][metric] for q in qfs]
    y_test = [test[q][metric] for q in qfs]
    names = {"ref_name": f"{REFERENCE[board]} {metric} curve of {what}",
                 "test_name": f"{context['method']}.{context['preset']} {metric} curve of {what}"}
    pct = bd_rate(rate_ref, y_ref, rate_test, y_test, **names)
    delta = bd_metric(rate_ref, y_ref, rate_test, y_test, **names)
    if files is None or curves is None:
        interval = _no_interval("no per-image files given")
    else:
        labels = list(curves)
        interval = _interval_fields(files, curves, metric, qfs, {labels[0]: y_ref, labels[1]: y_test},
                                    {labels[0]: list(rate_ref), labels[1]: list(rate_test)})
    return _row(board=board, metric=metric, reference=REFERENCE[board], qf_range=_qf_range(qfs), n_points=len(qfs),
                bd_rate_pct=f"{pct:.4f}", bd_metric=f"{delta:.6f}", **interval, **context)


def fidelity_rows(df: pd.DataFrame, notes: list[str], board_path: Path | None = None,
                  refused: list[dict] | None = None) -> list[dict]:
    """BD rows of a fidelity board: each method against `jpeg` on the same images, codec and channels; with
    `board_path` (the board's file), their intervals from the per-image files beside it (per-image bpp too).
    `refused` receives the key of each curve the metrics refuse (its old row on bdrate.csv is stale)."""
    rows = []
    files = None if board_path is None else PointFiles(board_path, leaderboard.FIDELITY_KEY, rate="bpp")
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
            curves = {REFERENCE["fidelity"]: ref, _label(method, preset): test}
            for part in qf_sets(qfs):
                context["rates"] = _rates_text({q: test[q]["bpp"] for q in part})
                for metric in FIDELITY_METRICS:
                    try:
                        rows.append(_delta_row("fidelity", ref, test, metric, part, [ref[q]["bpp"] for q in part],
                                               [test[q]["bpp"] for q in part], what, files, curves, **context))
                    except BDError as e:
                        notes.append(str(e))
                        _refused(refused, "fidelity", metric, part, context)
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


def _rows_by_qf(rows: pd.DataFrame, metric: str) -> dict[int, dict]:
    """Long-format task rows -> {qf: the row of `metric`} (the key of its per-image file)."""
    return {int(r["qf"]): r for r in rows[rows.metric == metric].to_dict("records")}


def classification_rows(df: pd.DataFrame, notes: list[str], imagenet: Path | None,
                        progress: bool = False, board: str = "classification",
                        board_path: Path | None = None, refused: list[dict] | None = None,
                        photo_roots=()) -> list[dict]:
    """BD rows of the classification board: each method against `direct` (the classifier on the compressed
    crops), top-1 and top-5 vs the crops' bpp (computed once per dataset, codec and QF set). `board="detection"`:
    the real detectors on ImageNet photos, consistency mAP (and its AP50) vs the whole photos' bpp.
    `board="segmentation"`: the person segmenters' mask consistency (IoU, boundary F) vs the bpp of the whole photos
    the rows scored (those the clean mask selected, named by the reference row's per-image file). With
    `board_path`, intervals from the rows' per-image files (0/1 outcomes -> percent) where every point has one; the
    rate has no per-image values here, so it is held at its mean and only the accuracy is resampled."""
    rows = []
    files = None if board_path is None else PointFiles(board_path, leaderboard.TASK_KEY, scale=100.0)
    df = _single_pass(df)
    df = df[df.metric.isin(TASK_METRICS[board])]
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    rate_cache: dict[tuple, dict[int, float]] = {}
    if "model_weights_sha256" not in df.columns:
        df["model_weights_sha256"] = ""
    # rows of a user's task-model file (--task-weights) are their own curves: `model@<its digest>`
    group = ["model", "model_weights_sha256", "dataset", "codec", "subsampling", "seed"]
    for (model, model_sha, dataset, codec, subsampling, seed), g in df.groupby(group, sort=True):
        model = f"{model}@{model_sha}" if model_sha else model
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
            names = None
            if board == "segmentation":  # the whole photos the clean mask selected: the reference row's photos
                spec = _photo_spec(dataset, imagenet, photo_roots)
                if not isinstance(spec, str):
                    first = _rows_by_qf(ref_rows, TASK_METRICS[board][0]).get(qfs[0])
                    scored = None if files is None or first is None else files.read(first)
                    if scored is None or "_error" in scored:
                        spec = "the reference row has no per-image file naming the photos it scored"
                    else:
                        spec, names = (spec[0], spec[1], 0, 0, ""), tuple(scored["image"])
            else:
                spec = _imagenet_spec(dataset, t.model_weights.iloc[0], imagenet, board)
            if isinstance(spec, str):
                notes.append(f"{_label(method, preset)} on {what}: {spec}")
                continue
            folder, n, resize, crop, interp = spec
            key = (str(folder), n, resize, crop, interp, codec, subsampling, names)
            need = [q for q in qfs if q not in rate_cache.get(key, {})]
            if need:
                if progress:
                    print(f"computing the bpp of {dataset} ({codec}, QF {','.join(map(str, need))}, "
                          f"resize {resize} {interp}, crop {crop})", file=sys.stderr)
                rate_cache.setdefault(key, {}).update(
                    photo_rates(folder, codec, need, subsampling, n, names) if board != "classification" else
                    classification_rates(folder, codec, need, subsampling, resize, crop, interp, n, progress))
            context = {"model": model, "method": method, "preset": preset, "dataset": dataset, "channels": "rgb",
                       "codec": codec, "subsampling": subsampling, "weights_sha256": sha,
                       "rate": "bpp of the whole photos, computed" if board == "detection" else
                       f"bpp of the {len(names)} whole photos scored (the clean mask's selection), computed"
                       if board == "segmentation" else
                       f"bpp of the {crop}x{crop} crops (resize {resize} {interp}), computed",
                       "n_images": t.n_images.iloc[0]}
            for part in qf_sets(qfs):
                rate = [rate_cache[key][q] for q in part]
                context["rates"] = _rates_text(dict(zip(part, rate)))
                for metric in TASK_METRICS[board]:
                    if not all(metric in test[q] and metric in ref[q] for q in part):
                        continue
                    curves = {REFERENCE[board]: _rows_by_qf(ref_rows, metric),
                              _label(method, preset): _rows_by_qf(t, metric)}
                    try:
                        rows.append(_delta_row(board, ref, test, metric, part, rate, rate, what, files, curves,
                                               **context))
                    except BDError as e:
                        notes.append(str(e))
                        _refused(refused, board, metric, part, context)
    return rows


def _refused(refused: list[dict] | None, board: str, metric: str, qfs, context: dict) -> None:
    """The bdrate key of a curve the metrics refuse (not monotonic, no overlap, ...)."""
    if refused is not None:
        row = _row(board=board, metric=metric, qf_range=_qf_range(qfs), **context)
        refused.append({k: row.get(k, "") for k in BDRATE_KEY})


def build(boards: Path, imagenet: Path | None = None, progress: bool = False,
          refused: list[dict] | None = None, photo_roots=()) -> tuple[list[dict], list[str]]:
    """(bdrate rows, notes on the curves left out and why) from a folder of boards; `refused` receives the keys
    of the curves the metrics refuse (`remove_refused` deletes their stale rows)."""
    notes: list[str] = []
    rows = fidelity_rows(leaderboard.read(boards / "fidelity.csv", "fidelity"), notes, boards / "fidelity.csv",
                         refused) if (boards / "fidelity.csv").exists() else []
    if (boards / "classification.csv").exists():
        rows += classification_rows(leaderboard.read(boards / "classification.csv", "classification"), notes,
                                    imagenet, progress, board_path=boards / "classification.csv", refused=refused)
    if (boards / "detection.csv").exists():
        rows += classification_rows(leaderboard.read(boards / "detection.csv", "detection"), notes, imagenet,
                                    progress, board="detection", board_path=boards / "detection.csv",
                                    refused=refused)
    if (boards / "segmentation.csv").exists():
        rows += classification_rows(leaderboard.read(boards / "segmentation.csv", "segmentation"), notes, imagenet,
                                    progress, board="segmentation", board_path=boards / "segmentation.csv",
                                    refused=refused, photo_roots=photo_roots)
    return rows, notes


def write(path: Path, rows: list[dict]) -> Path:
    """Upsert rows into a bdrate board (validated against its schema first; atomic, locked)."""
    new = pd.DataFrame([{c: leaderboard._fmt(r.get(c, "")) for c in BDRATE_COLUMNS} for r in rows],
                       columns=BDRATE_COLUMNS, dtype=str)
    leaderboard.validate(new, BDRATE_SCHEMA, f"rows for {path}")
    return leaderboard.upsert(path, rows, key=BDRATE_KEY, columns=BDRATE_COLUMNS)


def remove_refused(path: Path, refused: list[dict]) -> int:
    """Delete the rows of curves the metrics now refuse (a row measured when the curve still passed is stale);
    the number deleted."""
    return leaderboard.remove(path, refused, BDRATE_KEY)


def read(path: Path) -> pd.DataFrame:
    """The bdrate board as strings; a file written before the interval columns reads them as "" (in place)."""
    df = leaderboard.read(path)
    if not df.empty:
        for c in INTERVAL_COLUMNS:
            if c not in df.columns:
                before = BDRATE_COLUMNS[BDRATE_COLUMNS.index(c) - 1]
                df.insert(df.columns.get_loc(before) + 1 if before in df.columns else len(df.columns), c, "")
        leaderboard.validate(df, BDRATE_SCHEMA, str(path))
    return df


def _has_interval(r: dict) -> bool:
    return all(str(r.get(c, "")) != "" for c in ("bd_rate_lo", "bd_rate_hi", "bd_metric_lo", "bd_metric_hi"))


def verdict(r: dict) -> str:
    """"saving" / "cost" (BD-rate interval below / above 0), "tie" (it contains 0), "" (no interval)."""
    if not _has_interval(r):
        return ""
    lo, hi = float(r["bd_rate_lo"]), float(r["bd_rate_hi"])
    return "saving" if hi < 0 else "cost" if lo > 0 else "tie"


def _with_interval(r: dict, value: str, lo: str, hi: str, digits: int) -> str:
    """`-12.70 [-14.10, -11.20]`, or the value alone without an interval."""
    text = f"{float(r[value]):+.{digits}f}"
    return f"{text} [{float(r[lo]):+.{digits}f}, {float(r[hi]):+.{digits}f}]" if _has_interval(r) else text


def format_table(rows: list[dict]) -> str:
    """One line per row: BD-rate % and BD-metric with their 95 % intervals; `tie` where the BD-rate interval
    contains 0."""
    mw = max([7] + [len(r["metric"]) + 1 for r in rows])  # consistency_map_50 is long
    lines = [f"{'board':<15}{'method':<24}{'dataset':<28}{'codec':<6}{'metric':<{mw}}{'QFs':<8}{'n':>3}"
             + f"  {'BD-rate % [95 %]':<27}{'BD-metric [95 %]':<33}verdict"]
    for r in rows:
        lines.append((f"{r['board']:<15}{_label(r['method'], r['preset']):<24}"
                      f"{(r['dataset'] + ('/' + r['channels'] if r['board'] == 'fidelity' else '')):<28}"
                      f"{r['codec']:<6}{r['metric']:<{mw}}{r['qf_range']:<8}{r['n_points']:>3}"
                      f"  {_with_interval(r, 'bd_rate_pct', 'bd_rate_lo', 'bd_rate_hi', 2):<27}"
                      f"{_with_interval(r, 'bd_metric', 'bd_metric_lo', 'bd_metric_hi', 4):<33}"
                      f"{verdict(r)}").rstrip())
    return "\n".join(lines)


def interval_summary(rows: list[dict]) -> list[str]:
    """Lines for the command's output: how many rows carry an interval, how many are ties, and why the others
    have none (grouped by reason)."""
    with_iv = [r for r in rows if _has_interval(r)]
    ties = sum(verdict(r) == "tie" for r in with_iv)
    out = [(f"intervals: {len(with_iv)} of {len(rows)} rows (paired bootstrap over images, 95 %); {ties} tie(s) "
            "(the BD-rate interval contains 0)")]
    reasons: dict[str, int] = {}
    for r in rows:
        if not _has_interval(r):
            note = str(r.get("interval_note", "")) or "no interval"
            reason = re.sub(r" \(.*", "", note)  # the kind of reason, without the points it names
            reasons[reason] = reasons.get(reason, 0) + 1
    out += [f"  {n} row(s): {reason} (interval columns left empty)" for reason, n in sorted(reasons.items())]
    return out
