"""Fidelity metrics with the field's conventions: PSNR, SSIM and PSNR-B per image on uint8, then the mean.

Conventions (those of the tables carbench reproduces; see README "Metric conventions"):
- Inputs are uint8 images (N, C, H, W) with C = 1 (gray) or 3 (RGB). Float inputs are model outputs in [0, 1]
  and are rounded to uint8 first, as the field saves its results as 8-bit images before scoring.
- `channels="rgb"`: the image's own channels (gray: 1, colour: RGB). `channels="y"`: colour images are scored on
  MATLAB `rgb2ycbcr` luma (16..235), rounded to uint8 as MATLAB does for uint8 input (half away from zero, in exact
  integer arithmetic); gray images are unchanged.
- PSNR = 10 log10(255^2 / MSE) per image, capped at PSNR_MAX = 100 dB: identical images (a flat
  image that JPEG reproduces exactly has MSE 0) score 100 dB instead of +inf, which would make the whole set's mean
  +inf. PSNR-B is capped the same way.
- SSIM: Wang et al. 2004 / MATLAB `ssim_index`: 11x11 Gaussian window (sigma 1.5), K = (0.01, 0.03), L = 255,
  *valid* filtering (no border padding), mean over the map, then over channels. Images under 11 px on a side
  cannot be scored: evaluation datasets skip them (MIN_SIDE).
- PSNR-B (Yim & Bovik 2011) as FBCNN's evaluation computes the published tables: 10 log10(255^2 / (MSE + BEF)),
  MSE over all channels, BEF on the image being scored -- for colour images on the Y channel of the restored image.
  Block boundaries at columns/rows 7, 15, ... (< size-1); N_HB = H (W/8 - 1) with true division;
  BEF = eta (D_B - D_BC) if D_B > D_BC else 0, eta = log2(8) / log2(min(H, W)).
  (KAIR's current `calculate_psnrb` averages per-channel RGB values and uses floor division: it does not match.)

Each metric has a functional form returning one value per image and a torchmetrics `Metric` that averages per
image and stays exact under DDP: images carry an id, and ids seen twice (the distributed sampler pads the last
batch by repeating images) count once.
"""
from __future__ import annotations

import functools
import math
import threading
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric

from benchmark.metrics import compiled
from datamodules.sources import SCORABLE_MIN_SIDE, luma_rounded, rgb_to_y  # rgb_to_y: also re-exported

CHANNELS = ("rgb", "y")
_SSIM_K1, _SSIM_K2, _SSIM_SIGMA, _SSIM_WIN = 0.01, 0.03, 1.5, 11
MIN_SIDE = SCORABLE_MIN_SIDE  # the smallest image every metric can score; sources skip smaller ones
if MIN_SIDE != _SSIM_WIN:
    raise ImportError(f"datamodules.sources.SCORABLE_MIN_SIDE ({MIN_SIDE}) must equal the SSIM window ({_SSIM_WIN})")
# bump when a kernel's values change: cached reference scores (benchmark.evaluate.score_cache) of older kernels are not served
# 3: Y rounds its exact ties half away from zero as MATLAB does (107 colours of 2^24 rounded down before; "y" scores
#    and colour PSNR-B of images with such pixels move by <= 1e-5 dB)
METRICS_VERSION = 3
PSNR_MAX = 100.0  # dB; identical images (MSE 0) score this instead of +inf, so per-image means stay finite


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """Model output in [0, 1] -> uint8, the way results are saved before scoring. NaN/inf is an error."""
    return _uint8(_pixels(img))


class _Workspace(threading.local):
    """Work arrays kept from call to call, per thread. A fresh multi-MB temporary costs a page fault per 4 kB on every
    call (glibc hands large freed blocks back to the OS): measured, 3/4 of float-input PSNR's time on a loaded
    machine. Arrays over _WORKSPACE_MAX values are not kept, so huge images do not pin their size in memory."""

    def __init__(self):
        self.arrays: dict[tuple[str, type], np.ndarray] = {}

    def __call__(self, slot: str | None, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """An uninitialised array of `shape` (a fresh one where `slot` is None): valid until `slot` is asked again."""
        n, dtype = math.prod(shape), np.dtype(dtype)
        kept = self.arrays.get((slot, dtype)) if slot else None
        if kept is None or kept.size < n:
            kept = np.empty(n, dtype)
            if slot and n <= _WORKSPACE_MAX:
                self.arrays[slot, dtype] = kept
        return kept[:n].reshape(shape)

    def like(self, slot: str | None, a: np.ndarray, dtype=np.float32) -> np.ndarray:
        """`self(slot, a.shape, dtype)` laid out in `a`'s memory order: a ufunc whose output is ordered unlike its
        inputs (a C-order result of a channels-last image) runs 3x slower."""
        order = sorted(range(a.ndim), key=lambda i: -abs(a.strides[i]))  # outermost axis first
        return self(slot, tuple(a.shape[i] for i in order), dtype).transpose(np.argsort(order))


_WORKSPACE_MAX = 1 << 23  # values per array: 32 MB in float32, a 2.8 MP colour image
_work = _Workspace()


def _pixels(img: torch.Tensor, slot: str | None = None) -> torch.Tensor:
    """`to_uint8`'s values in a type the kernels take as they are: uint8 images unchanged, float32/float64 CPU images as
    float32 integers in [0, 255] (exact; no uint8 round trip; in workspace `slot` when given), other floats (CUDA,
    half) as uint8."""
    if img.dtype == torch.uint8:
        return img
    if img.device.type != "cpu" or img.dtype not in (torch.float32, torch.float64):
        if not torch.isfinite(img).all():
            raise ValueError("image contains NaN or inf values")
        return (img.clamp(0, 1) * 255.0).round().to(torch.uint8)
    a = img.detach().numpy()
    # numpy in place, chunk by chunk: torch's isfinite/clamp/mul/round each allocate and walk a whole image (10x slower)
    x = _work.like(slot, a, a.dtype)
    flat_a, flat_x = a.ravel(order="K"), x.ravel(order="K")  # memory order: views of both where `a` is dense
    if np.may_share_memory(flat_a, a):
        for i in range(0, flat_a.size, _CHUNK):
            _scale_round(flat_a[i:i + _CHUNK], flat_x[i:i + _CHUNK])
    else:
        _scale_round(a, x)
    return torch.from_numpy(x.astype(np.float32, copy=False))


_CHUNK = 1 << 16  # values: a chunk's four passes run in the L2 cache (measured 5-10% faster than whole images)


def _scale_round(a: np.ndarray, x: np.ndarray) -> None:
    """x = round(clamp(a, 0, 1) * 255) for float a; NaN/inf is an error."""
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):  # min and max propagate NaN
        raise ValueError("image contains NaN or inf values")
    # scaling before clipping gives clamp(0, 1) * 255 exactly: 1 * 255 is exact and rounding is monotone
    np.multiply(a, 255, out=x)
    if lo < 0 or hi > 1:
        np.clip(x, 0, 255, out=x)
    np.rint(x, out=x)  # half to even, as torch.round


def _uint8(img: torch.Tensor) -> torch.Tensor:
    """Integer-valued image (uint8, or float32 from `_pixels`) -> a uint8 tensor of its own."""
    return img if img.dtype == torch.uint8 else torch.from_numpy(img.numpy().astype(np.uint8))


def _checked(preds: torch.Tensor, target: torch.Tensor, channels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated (N, C, H, W) CPU pairs, still unconverted where `_pixels` converts on the CPU."""
    if channels not in CHANNELS:
        raise ValueError(f"channels={channels!r}: use one of {CHANNELS}")
    if preds.ndim == 3:
        preds, target = preds.unsqueeze(0), target.unsqueeze(0)
    if preds.shape != target.shape:
        raise ValueError(f"shape mismatch: preds {tuple(preds.shape)} vs target {tuple(target.shape)}")
    if preds.ndim != 4 or preds.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1|3, H, W) images, got {tuple(preds.shape)}")
    # scores are a few integer sums and one small filter per image: the CPU is as fast as a round trip (a CUDA image
    # is converted there: `_pixels` gives uint8)
    return tuple(x if x.device.type == "cpu" else _pixels(x).cpu() for x in (preds, target))


def _on_channels(img: torch.Tensor, channels: str, slot: str | None = None) -> torch.Tensor:
    """Integer-valued image on the requested channels: colour -> rounded MATLAB Y for "y"."""
    return _luma(img, slot) if channels == "y" and img.shape[-3] == 3 else img


def _prepare(preds: torch.Tensor, target: torch.Tensor, channels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> uint8 (N, C, H, W) CPU tensors on the requested channels (colour -> rounded MATLAB Y for "y")."""
    return tuple(_uint8(_on_channels(_pixels(x), channels)) for x in _checked(preds, target, channels))


def _y_uint8(img: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) -> rounded MATLAB luma (N, 1, H, W) uint8 (16..235)."""
    return _uint8(_luma(img))


def _luma(img: torch.Tensor, slot: str | None = None) -> torch.Tensor:
    """Integer-valued RGB (..., 3, H, W) (uint8 or float32) -> rounded MATLAB luma (..., 1, H, W) as float32 integers
    (16..235), in workspace `slot` when given: `datamodules.sources.luma_rounded`, the same rounding as `:y` sets."""
    r, g, b = np.moveaxis(img.numpy(), -3, 0)  # plane views, whatever the memory layout
    y = _work(slot, (*r.shape[:-2], 1, *r.shape[-2:]))
    luma_rounded(r, g, b, y[..., 0, :, :], lambda name, shape, dtype: _work(f"luma_{name}", shape, dtype))
    return torch.from_numpy(y)


def _single_threaded(fn):
    """SSIM runs on one thread: on LIVE1-size images the work per call is a few ms, where extra threads cost more than
    they give and collapse when the CPU is shared (measured: SSIM 892 ms with 2 threads under load vs 460 ms with 1).
    (PSNR and PSNR-B are numpy, one thread anyway: they skip the switch.)"""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        n = torch.get_num_threads()
        if n == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(n)
    return wrapper


def _per_image(kernel=None, *, unconverted: bool = False):
    """Functional metric from a kernel on one image pair ((C, H, W) tensors of uint8 or float32 integers, valid for
    the call: workspace arrays) -> (N,) float64.

    `unconverted`: the kernel takes a third argument, `unit` = (preds?, target?), True where that image is still a
    CPU float32/float64 image in [0, 1] that the kernel converts itself, chunk by chunk (`_squared_error_sum`): a
    whole-image conversion first writes and re-reads 4 MB per LIVE1 image (float PSNR 2x slower). Images scored on
    luma are converted first (the luma needs the rounded RGB)."""
    if kernel is None:
        return functools.partial(_per_image, unconverted=unconverted)

    def prepare(x: torch.Tensor, slot: str, channels: str) -> tuple[torch.Tensor, bool]:
        if unconverted and x.dtype in (torch.float32, torch.float64) and not (channels == "y" and x.shape[-3] == 3):
            return x, True  # `_checked` left it on the CPU
        return _on_channels(_pixels(x, slot), channels, f"{slot}_y"), False

    @functools.wraps(kernel)
    def wrapper(preds: torch.Tensor, target: torch.Tensor, channels: str = "rgb") -> torch.Tensor:
        values = []
        for p, t in zip(*_checked(preds, target, channels)):
            (p, p_unit), (t, t_unit) = prepare(p, "preds", channels), prepare(t, "target", channels)
            values.append(kernel(p, t, (p_unit, t_unit)) if unconverted else kernel(p, t))
        return torch.tensor(values, dtype=torch.float64)
    return wrapper


_SSE_CHUNK = 1 << 18  # values per chunk of `_squared_error_sum`: 1 MB of float32 per work array, in L2 (2 MB here);
# measured on LIVE1 (1.06 M values per image): 2^14..2^16 lose 10-60% to per-call overhead, 2^18 is the fastest


def _squared_error_sum(p: np.ndarray, t: np.ndarray, unit: tuple[bool, bool] = (False, False)) -> int:
    """Exact sum of squared differences of the uint8 values of two images of one shape: uint8 or float32 integers
    as they are, and where `unit` says so, float images in [0, 1] (scaled and rounded as `to_uint8` does, NaN/inf
    an error).

    One walk over both images in L2-sized chunks: each chunk is converted, subtracted and squared while in cache, and
    no full-size temporary is written (each one costs a pass over memory: float-input PSNR ran 2x slower)."""
    order = sorted(range(p.ndim), key=lambda i: -abs(p.strides[i]))  # `p`'s memory order: views for dense layouts
    p, t = p.transpose(order).reshape(-1), t.transpose(order).reshape(-1)
    if compiled.enabled():  # opt-in fused kernel: one pass over both images (None: a layout or type it leaves to us)
        done = compiled.squared_error_sum(p, t, unit)
        if done is not None:  # the < 256 values it leaves: here
            total, m = done
            return total + (_squared_error_sum(p[m:], t[m:], unit) if m < p.size else 0)
    n = p.size
    total = 0
    for i in range(0, n, _SSE_CHUNK):
        pc, tc = p[i:i + _SSE_CHUNK], t[i:i + _SSE_CHUNK]
        d = _work("sse_d", pc.shape)
        if pc.dtype == tc.dtype == np.uint8:  # int16 difference, then float32: 2x faster than two float32 copies
            np.copyto(d, np.subtract(pc, tc, dtype=np.int16, out=_work("sse_i16", pc.shape, np.int16)))
        else:
            np.subtract(_chunk_values(pc, unit[0], "sse_p"), _chunk_values(tc, unit[1], "sse_t"), out=d)
        total += _sum_of_squares(d)
    return total


def _chunk_values(a: np.ndarray, unit: bool, slot: str) -> np.ndarray:
    """A chunk's uint8 values as float32 (uint8 converted, [0, 1] floats scaled and rounded; float32 integers as
    they are) in workspace `slot`."""
    if a.dtype == np.float32 and not unit:
        return a
    x = _work(slot, a.shape, a.dtype if unit else np.float32)  # float64 input rounds in float64, as `_pixels` does
    if unit:
        _scale_round(a, x)
    else:
        np.copyto(x, a)
    return x


_EXACT_F32_ROW = 256  # 256 * 255^2 < 2^24: any partial sum of a row of squared uint8 differences is exact in float32


def _sum_of_squares(d: np.ndarray) -> int:
    """Exact sum of squares of integer-valued float32 differences (|d| <= 255): float32 dot products over rows of 256,
    each exact, summed in float64 (3.5x faster than int32 products with an int64 sum)."""
    d = d.ravel(order="K")  # memory order: a view for any dense layout (e.g. a permuted HWC image)
    n = d.size - d.size % _EXACT_F32_ROW
    rows = d[:n].reshape(-1, _EXACT_F32_ROW)
    tail = d[n:].astype(np.float64)
    return int(np.einsum("ij,ij->i", rows, rows).sum(dtype=np.float64) + tail @ tail)


def _db(mse: float) -> float:
    """10 log10(255^2 / mse), capped at PSNR_MAX: an exactly reproduced (e.g. flat) image must not turn the set's
    mean into +inf."""
    return PSNR_MAX if mse <= 0 else min(PSNR_MAX, 10.0 * math.log10(255.0**2 / mse))


@_per_image(unconverted=True)
def psnr(p: torch.Tensor, t: torch.Tensor, unit: tuple[bool, bool]) -> float:
    """Per-image PSNR in dB, shape (N,), capped at PSNR_MAX (100 dB): identical images give 100, not +inf."""
    return _db(_squared_error_sum(p.numpy(), t.numpy(), unit) / p.numel())


@lru_cache(maxsize=8)
def _gaussian(device: str) -> torch.Tensor:
    x = torch.arange(_SSIM_WIN, dtype=torch.float64, device=device) - _SSIM_WIN // 2
    g = torch.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


@lru_cache(maxsize=8)
def _separable_gaussian(planes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise (planes, 1, 1, 11) and (planes, 1, 11, 1) float32 Gaussian weights."""
    g = _gaussian("cpu").float()
    return (g.view(1, 1, 1, -1).expand(planes, 1, 1, -1).contiguous(),
            g.view(1, 1, -1, 1).expand(planes, 1, -1, 1).contiguous())


def _filter_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable 11x11 Gaussian of (H, W, P) float32 planes (channels last), valid region only (no padding), per
    plane -> (H - 10, W - 10, P).

    Two depthwise float32 convolutions in channels-last layout, where the CPU kernels vectorise over the planes:
    measured 5x faster than the NCHW depthwise conv and 8x faster than float64 shifted multiply-adds on LIVE1-size
    images; 3e-6 from scikit-image's float64 SSIM."""
    rows, cols = _separable_gaussian(x.shape[-1])
    x = x[None].permute(0, 3, 1, 2)  # a channels-last NCHW view, no copy
    out = F.conv2d(F.conv2d(x, rows, groups=x.shape[1]), cols, groups=x.shape[1])
    return out[0].permute(1, 2, 0)


# moments are filtered around mid-grey: E[x^2] - E[x]^2 cancels less in float32 on values in [-128, 127]
_SSIM_SHIFT = 128.0


_SSIM_STRIP = 64  # output rows per strip: the strip's buffers stay in cache and are reused, not fresh pages


@_per_image
@_single_threaded
def ssim(p: torch.Tensor, t: torch.Tensor) -> float:
    """Per-image SSIM, shape (N,): mean over the valid SSIM map, then over channels."""
    c, h, w = p.shape
    if min(h, w) < _SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {(h, w)}")
    p, t = p.permute(1, 2, 0), t.permute(1, 2, 0)  # (H, W, C): the filter runs channels last
    total, halo = 0.0, _SSIM_WIN - 1
    for top in range(0, h - halo, _SSIM_STRIP):
        bottom = min(top + _SSIM_STRIP + halo, h)
        total += float(_ssim_map(p[top:bottom], t[top:bottom]).sum(dtype=torch.float64))
    return total / ((h - halo) * (w - halo) * c)


def _ssim_map(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SSIM map (valid region) of integer-valued (H, W, C) rows -> float32 (H - 10, W - 10, C)."""
    h, w, c = p.shape
    c1, c2, s = (_SSIM_K1 * 255) ** 2, (_SSIM_K2 * 255) ** 2, _SSIM_SHIFT
    # only the sum of the variances enters SSIM, so four filtered moments suffice: E p, E t, E(p^2 + t^2), E pt
    x = torch.empty(h, w, 4, c)
    pf = torch.sub(p, s, out=x[:, :, 0])
    tf = torch.sub(t, s, out=x[:, :, 1])
    torch.mul(pf, pf, out=x[:, :, 2]).addcmul_(tf, tf)
    torch.mul(pf, tf, out=x[:, :, 3])
    mu_p, mu_t, sq, pt = _filter_valid(x.view(h, w, 4 * c)).unflatten(-1, (4, c)).unbind(-2)
    mu_pt = mu_p * mu_t
    mu_sq = mu_p.square().addcmul_(mu_t, mu_t)
    var_sum = sq.sub(mu_sq)
    cov = pt.sub(mu_pt)
    # back from the shifted means: (mu_p + s)(mu_t + s) and (mu_p + s)^2 + (mu_t + s)^2
    mu_sum = mu_p.add(mu_t).mul_(s)
    num = mu_pt.add_(mu_sum).add_(s * s + c1 / 2).mul_(2)  # 2 mu_p' mu_t' + c1
    den = mu_sq.add_(mu_sum, alpha=2).add_(2 * s * s + c1)  # mu_p'^2 + mu_t'^2 + c1
    return num.mul_(cov.mul_(2).add_(c2)).div_(den.mul_(var_sum.add_(c2)))


def _bef(y: np.ndarray, block: int = 8) -> float:
    """Blocking effect factor of one integer-valued (C, H, W) image, summed over channels (exact sums)."""
    _, h, w = y.shape
    n_boundary = h * (w / block - 1) + w * (h / block - 1)
    n_inner = h * (w - 1) + w * (h - 1) - n_boundary
    if n_boundary <= 0 or n_inner <= 0:
        return 0.0
    left, up = y[..., :, :-1], y[..., :-1, :]
    dh = np.subtract(left, y[..., :, 1:], dtype=np.float32, out=_work.like("bef_h", left))  # column j vs j+1
    dv = np.subtract(up, y[..., 1:, :], dtype=np.float32, out=_work.like("bef_v", up))  # row i vs i+1
    boundary = _sum_of_squares(dh[..., block - 1::block]) + _sum_of_squares(dv[..., block - 1::block, :])
    inner = _sum_of_squares(dh) + _sum_of_squares(dv) - boundary
    d_b, d_bc = boundary / n_boundary, inner / n_inner
    eta = math.log2(block) / math.log2(min(h, w))
    return eta * (d_b - d_bc) if d_b > d_bc else 0.0


def blocking_effect_factor(img: torch.Tensor, block: int = 8) -> torch.Tensor:
    """BEF of (N, C, H, W) integer-valued images in [0, 255], summed over channels; shape (N,) float64."""
    img = img.detach().cpu().round().to(torch.uint8) if img.is_floating_point() else img.cpu()
    return torch.tensor([_bef(i.numpy(), block) for i in img], dtype=torch.float64)


@_per_image(unconverted=True)
def psnrb(p: torch.Tensor, t: torch.Tensor, unit: tuple[bool, bool]) -> float:
    """Per-image PSNR-B in dB, shape (N,), capped at PSNR_MAX like PSNR. Colour: MSE over RGB, BEF on the Y channel
    of `preds`."""
    if unit[0]:  # the BEF needs the rounded image itself; only the target is converted within the MSE's chunks
        p, unit = _pixels(p, "preds"), (False, unit[1])
    bef_input = _luma(p, "bef_y") if p.shape[0] == 3 else p
    mse = _squared_error_sum(p.numpy(), t.numpy(), unit) / p.numel()
    return _db(mse + _bef(bef_input.numpy()))


FUNCTIONAL = {"psnr": psnr, "ssim": ssim, "psnrb": psnrb}


class _PerImageMean(Metric):
    """Mean of a per-image metric; exact under DDP when `update` gets image ids (duplicates count once)."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False
    fn = staticmethod(psnr)

    def __init__(self, channels: str = "rgb", **kwargs):
        super().__init__(**kwargs)
        if channels not in CHANNELS:
            raise ValueError(f"channels={channels!r}: use one of {CHANNELS}")
        self.channels = channels
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        self.add_values(self.fn(preds, target, self.channels), ids)

    def add_values(self, v: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Record per-image values directly (ids as in `update`)."""
        v = torch.as_tensor(v).reshape(-1)
        if ids is None:  # anonymous images never deduplicate
            ids = torch.full_like(v, -1, dtype=torch.long)
        self.values.append(v.double())
        self.ids.append(torch.as_tensor(ids, dtype=torch.long, device=v.device).reshape(-1))

    def per_image(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, values) after removing repeated ids, sorted by id."""
        return first_per_id(self.values, self.ids)

    def compute(self) -> torch.Tensor:
        _, values = self.per_image()
        return values.mean()

    def n_images(self) -> int:
        """Distinct images scored, over all processes (`per_image` alone sees this process's state)."""
        with self.sync_context():
            ids, _ = self.per_image()
        return int(len(ids))


def first_per_id(values, ids) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image rows (a list state or its gathered tensor) with ids -> (ids, rows): each id once (its first row,
    sorted by id: DDP padding repeats count once), then the anonymous rows (id < 0), which never deduplicate."""
    values = torch.cat(values) if isinstance(values, list) else values
    ids = torch.cat(ids) if isinstance(ids, list) else ids
    anon = ids < 0
    named_ids, first = _first_occurrence(ids[~anon])
    return torch.cat([named_ids, ids[anon]]), torch.cat([values[~anon][first], values[anon]])


def _first_occurrence(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    uniq, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((len(uniq),), len(ids), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(ids), device=ids.device), reduce="amin")
    return uniq, first


class PerImageMean(_PerImageMean):
    """Mean of any per-image quantity (e.g. bits per pixel), deduplicated by image id like the metrics."""

    def update(self, values: torch.Tensor, ids: torch.Tensor | None = None) -> None:  # type: ignore[override]
        self.add_values(values, ids)


class PSNR(_PerImageMean):
    fn = staticmethod(psnr)


class SSIM(_PerImageMean):
    fn = staticmethod(ssim)


class PSNRB(_PerImageMean):
    fn = staticmethod(psnrb)


METRICS = {"psnr": PSNR, "ssim": SSIM, "psnrb": PSNRB}
