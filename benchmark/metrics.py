"""Fidelity metrics with the field's conventions: PSNR, SSIM and PSNR-B per image on uint8, then the mean.

Conventions (those of the tables carbench reproduces; see README "Metric conventions"):
- Inputs are uint8 images (N, C, H, W) with C = 1 (gray) or 3 (RGB). Float inputs are model outputs in [0, 1]
  and are rounded to uint8 first, as the field saves its results as 8-bit images before scoring.
- `channels="rgb"`: the image's own channels (gray: 1, colour: RGB). `channels="y"`: colour images are scored on
  MATLAB `rgb2ycbcr` luma (16..235), rounded to uint8 as MATLAB does for uint8 input; gray images are unchanged.
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
from functools import lru_cache

import torch
from torchmetrics import Metric

CHANNELS = ("rgb", "y")
_SSIM_K1, _SSIM_K2, _SSIM_SIGMA, _SSIM_WIN = 0.01, 0.03, 1.5, 11
MIN_SIDE = _SSIM_WIN  # the smallest image every metric can score (SSIM's valid window); sources skip smaller ones
PSNR_MAX = 100.0  # dB; identical images (MSE 0) score this instead of +inf, so per-image means stay finite


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """MATLAB rgb2ycbcr luma for RGB in [0, 255] (..., 3, H, W) -> (..., 1, H, W) in [16, 235], unrounded."""
    r, g, b = img.unbind(-3)
    return ((65.481 * r + 128.553 * g + 24.966 * b) / 255.0 + 16.0).unsqueeze(-3)


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """Model output in [0, 1] -> uint8, the way results are saved before scoring. NaN/inf is an error."""
    if img.dtype == torch.uint8:
        return img
    if not torch.isfinite(img).all():
        raise ValueError("image contains NaN or inf values")
    return (img.clamp(0, 1) * 255.0).round().to(torch.uint8)


def _prepare(preds: torch.Tensor, target: torch.Tensor, channels: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> float64 (N, C, H, W) in [0, 255] on the requested channels."""
    if channels not in CHANNELS:
        raise ValueError(f"channels={channels!r}: use one of {CHANNELS}")
    preds, target = to_uint8(preds), to_uint8(target)
    if preds.ndim == 3:
        preds, target = preds.unsqueeze(0), target.unsqueeze(0)
    if preds.shape != target.shape:
        raise ValueError(f"shape mismatch: preds {tuple(preds.shape)} vs target {tuple(target.shape)}")
    if preds.ndim != 4 or preds.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, 1|3, H, W) images, got {tuple(preds.shape)}")
    p, t = preds.double(), target.double()
    if channels == "y" and p.shape[1] == 3:
        p, t = rgb_to_y(p).round(), rgb_to_y(t).round()
    return p, t


def _mse(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (p - t).square().flatten(1).mean(1)


def _image_by_image(fn):
    """Run a batch one image at a time: per-image temporaries stay small enough for the allocator to reuse, while
    batch-sized float64 buffers cost fresh pages every call (measured 12x slower for PSNR on 6x3x256x256)."""
    @functools.wraps(fn)
    def wrapper(preds: torch.Tensor, target: torch.Tensor, channels: str = "rgb") -> torch.Tensor:
        if preds.ndim == 4 and preds.shape[0] > 1 and preds.shape == target.shape:
            return torch.cat([fn(p, t, channels) for p, t in zip(preds.split(1), target.split(1))])
        return fn(preds, target, channels)
    return wrapper


@_image_by_image
def psnr(preds: torch.Tensor, target: torch.Tensor, channels: str = "rgb") -> torch.Tensor:
    """Per-image PSNR in dB, shape (N,), capped at PSNR_MAX (100 dB): identical images give 100, not +inf."""
    p, t = _prepare(preds, target, channels)
    # capped: an exactly reproduced (e.g. flat) image must not turn the set's mean into +inf
    return (10.0 * torch.log10(255.0**2 / _mse(p, t))).clamp(max=PSNR_MAX)


@lru_cache(maxsize=8)
def _gaussian(device: str) -> torch.Tensor:
    x = torch.arange(_SSIM_WIN, dtype=torch.float64, device=device) - _SSIM_WIN // 2
    g = torch.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable 11x11 Gaussian, valid region only (no padding), per channel.

    Eleven in-place shifted multiply-adds per axis: float64 depthwise conv2d is 2-3x slower on CPU.
    """
    g = _gaussian(str(x.device)).tolist()
    k, (h, w) = len(g), x.shape[-2:]
    rows = x[..., 0:h - k + 1, :] * g[0]
    for i in range(1, k):
        rows.add_(x[..., i:h - k + 1 + i, :], alpha=g[i])
    out = rows[..., 0:w - k + 1] * g[0]
    for i in range(1, k):
        out.add_(rows[..., i:w - k + 1 + i], alpha=g[i])
    return out


@_image_by_image
def ssim(preds: torch.Tensor, target: torch.Tensor, channels: str = "rgb") -> torch.Tensor:
    """Per-image SSIM, shape (N,): mean over the valid SSIM map, then over channels."""
    p, t = _prepare(preds, target, channels)
    if min(p.shape[-2:]) < _SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {tuple(p.shape[-2:])}")
    c1, c2 = (_SSIM_K1 * 255) ** 2, (_SSIM_K2 * 255) ** 2
    n, c = p.shape[:2]
    # one filtering pass over the five moments
    stats = _filter_valid(torch.cat([p, t, p * p, t * t, p * t], dim=1).view(n, 5 * c, *p.shape[-2:]))
    mu_p, mu_t, pp, tt, pt = stats.view(n, 5, c, *stats.shape[-2:]).unbind(1)
    mu_pp, mu_tt, mu_pt = mu_p * mu_p, mu_t * mu_t, mu_p * mu_t
    var_p, var_t, cov = pp - mu_pp, tt - mu_tt, pt - mu_pt
    smap = ((2 * mu_pt + c1) * (2 * cov + c2)) / ((mu_pp + mu_tt + c1) * (var_p + var_t + c2))
    return smap.flatten(2).mean(2).mean(1)


def blocking_effect_factor(img: torch.Tensor, block: int = 8) -> torch.Tensor:
    """BEF of (N, C, H, W) images in [0, 255] (float64), summed over channels; shape (N,)."""
    _, _, h, w = img.shape
    dh = (img[..., :, :-1] - img[..., :, 1:]).square()  # column j vs j+1
    dv = (img[..., :-1, :] - img[..., 1:, :]).square()
    cols = torch.arange(block - 1, w - 1, block, device=img.device)
    rows = torch.arange(block - 1, h - 1, block, device=img.device)
    boundary = dh[..., cols].sum((1, 2, 3)) + dv[..., rows, :].sum((1, 2, 3))
    inner = dh.sum((1, 2, 3)) + dv.sum((1, 2, 3)) - boundary
    n_boundary = h * (w / block - 1) + w * (h / block - 1)
    n_inner = h * (w - 1) + w * (h - 1) - n_boundary
    if n_boundary <= 0 or n_inner <= 0:
        return torch.zeros(img.shape[0], dtype=img.dtype, device=img.device)
    d_b, d_bc = boundary / n_boundary, inner / n_inner
    eta = math.log2(block) / math.log2(min(h, w))
    return torch.where(d_b > d_bc, eta * (d_b - d_bc), torch.zeros_like(d_b))


@_image_by_image
def psnrb(preds: torch.Tensor, target: torch.Tensor, channels: str = "rgb") -> torch.Tensor:
    """Per-image PSNR-B in dB, shape (N,), capped at PSNR_MAX like PSNR. Colour: MSE over RGB, BEF on the Y channel
    of `preds`."""
    p, t = _prepare(preds, target, channels)
    bef_input = rgb_to_y(p).round() if p.shape[1] == 3 else p
    return (10.0 * torch.log10(255.0**2 / (_mse(p, t) + blocking_effect_factor(bef_input)))).clamp(max=PSNR_MAX)


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
