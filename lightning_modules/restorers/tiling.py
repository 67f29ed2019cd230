"""Restoration of large images in tiles: one function, `restore`, shared by fidelity and downstream-task runs.

An image is restored whole when the restorer's estimated activation memory for it fits the budget (default 2 GB;
`--memory-budget GB` or $CARBENCH_MEMORY_BUDGET), else in overlapping tiles sized to the budget; `--tile N` forces
tiles of at most N x N pixels (overlap included). An out-of-memory error is re-raised as `RestorationOutOfMemory`,
naming the image and the options that help.

Exactness. A tile's border of `overlap` pixels is discarded, so a spatially local network gives the whole-image
result when the overlap covers its receptive radius and tiles start on its downsampling grid. `tiling_spec`
measures both per network, once per architecture:
- alignment: tiles start at multiples of lcm(size_multiple, 8): the network's strided convs/pools see the grid the
  whole image gives them, and the 8x8 JPEG block grid stays where it was (interior tiles are multiples of
  `size_multiple`, the last one is reflection-padded exactly as the whole image is);
- receptive radius, by a structural impulse probe: a float64 copy of the network with every weight set positive
  (1 / fan-in), biases 0 and BatchNorm the identity, so that no ReLU can hide a path (every activation change is
  positive), gets a one-pixel impulse at both ends of an alignment cell; the outputs that differ from the zero
  input's bound the reach (plus the cell width). A support that reaches the probe's border at 1024 px means a
  global operation (global pooling, image-wide attention): that network is declared non-local.
Networks with a global part say how to split it off: `net.tile_context(x, tiled)` computes the global part of the
whole (padded) image -- using `tiled(fn, x, stride)` to run its local feature extractor `fn` over tiles -- and the
network's forward reads it from `net._tile_state = (context, (y0, x0))` while tiles run. The probe measures every
local stage with the context held fixed. Shipped compact restorers (see tests/test_tiling.py, 1e-4 max abs diff):
arcnn, dncnn, n2n_unet: local, exact. fbcnn: the QF predictor's global average is taken over the tiled bottleneck
features (exact; with --qf-override it is local anyway). dagn: the two ResNet encoders run tiled (1/16 maps), the
guiders' global average and the CFM's pyramid-pooled keys/values are computed on the assembled maps (exact).
jarcal: the trunk is local; its pyramid pooling (windows up to 128 px, stretched by nearest upsampling to the whole
image's size) is computed on the assembled 1/4-resolution maps of its bias-free 1x1 reductions (exact up to
float rounding: the reduction is applied before the average instead of after). Any other network with a global
operation and no `tile_context` is not auto-tiled (it is restored whole, with a warning); `--tile` then tiles it
approximately, with a warning.

Memory estimate: peak live activation bytes of one `restore()` on two small inputs (128 and 192 px), tracked with
a TorchDispatchMode that adds the bytes of every storage an op creates and subtracts them when the last tensor on
that storage dies; the slope per pixel, times the image's pixels, is the estimate (cached per architecture and
channel count). It counts what the allocator is asked for, not allocator slack or library workspaces (oneDNN /
cuDNN), so it is a lower bound of the true peak: hence a 2 GB default on machines with several.
"""
from __future__ import annotations

import copy
import math
import os
import warnings
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

DEFAULT_BUDGET_GB = 2.0
BUDGET_ENV = "CARBENCH_MEMORY_BUDGET"  # GB
PROBE_SIZES = (128, 256, 512, 1024)  # structural probe side; a support still touching the border at the last: global


class RestorationOutOfMemory(RuntimeError):
    """Out of memory while restoring one image; the message names the image and the options that help."""


def is_oom(e: BaseException) -> bool:
    if isinstance(e, getattr(torch.cuda, "OutOfMemoryError", ())) or isinstance(e, MemoryError):
        return True
    msg = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in msg.lower() or "can't allocate memory" in msg)


def memory_budget(budget_gb: float | None = None) -> int:
    """Bytes: the given GB, else $CARBENCH_MEMORY_BUDGET (GB), else DEFAULT_BUDGET_GB."""
    if budget_gb is None:
        env = os.environ.get(BUDGET_ENV, "").strip()
        try:
            budget_gb = float(env) if env else DEFAULT_BUDGET_GB
        except ValueError as e:
            raise ValueError(f"${BUDGET_ENV}={env!r}: expected GB, e.g. 2 or 0.5") from e
    if budget_gb <= 0:
        raise ValueError(f"memory budget must be > 0 GB, got {budget_gb}")
    return int(budget_gb * 2 ** 30)


def _net(restorer) -> nn.Module:
    return getattr(restorer, "net", restorer)


def _arch_key(restorer, *extra) -> tuple:
    """The architecture: module tree and the network's plain settings (e.g. switches that repr does not show)."""
    net = _net(restorer)
    settings = tuple(sorted((k, v) for k, v in vars(net).items() if not k.startswith("_tile") and k != "training"
                            and isinstance(v, (bool, int, float, str, tuple, type(None)))))
    return (type(net).__module__, type(net).__qualname__, repr(net), settings,
            getattr(restorer, "size_multiple", 1), *extra)


# ---- memory estimate ------------------------------------------------------------------------------------------------
class _PeakTracker(TorchDispatchMode):
    """Peak bytes of the storages created by ops while active (live until their last tracked tensor dies)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage ptr -> [nbytes, tensors alive on it]
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key not in self.live:
                self.live[key] = [st.nbytes(), 0]
                self.current += st.nbytes()
                self.peak = max(self.peak, self.current)
            self.live[key][1] += 1
            weakref.finalize(t, self._release, key)
        return out


def peak_activation_bytes(restorer, x: torch.Tensor) -> int:
    tracker = _PeakTracker()
    with torch.no_grad(), tracker:
        out = restorer.restore(x)
    del out
    return tracker.peak


_BPP_CACHE: dict[tuple, float] = {}


def activation_bytes_per_pixel(restorer, channels: int = 3, device=None, dtype=torch.float32) -> float:
    """Peak activation bytes per input pixel (N x H x W) of `restorer.restore`, measured once per architecture."""
    device = torch.device(device or next(iter(_net(restorer).parameters()), torch.empty(0)).device)
    key = _arch_key(restorer, channels, str(device.type), str(dtype))
    if key not in _BPP_CACHE:
        align = _alignment(restorer)
        a, b = (math.ceil(s / align) * align for s in (128, 192))
        pa = peak_activation_bytes(restorer, torch.rand(1, channels, a, a, device=device, dtype=dtype))
        pb = peak_activation_bytes(restorer, torch.rand(1, channels, b, b, device=device, dtype=dtype))
        _BPP_CACHE[key] = max((pb - pa) / (b * b - a * a), pb / (b * b) * 0.5, 0.0)
    return _BPP_CACHE[key]


# ---- exactness: alignment and receptive radius -----------------------------------------------------------------------
@dataclass(frozen=True)
class TilingSpec:
    align: int  # tile starts (and overlaps) are multiples of this
    overlap: int | None  # pixels discarded per tile side; None: the network is not local (global operation)
    reach: int | None  # measured receptive radius (before rounding up to `align`)
    context: bool  # global part computed on the whole image by `tile_context`

    @property
    def exact(self) -> bool:
        return self.overlap is not None


def _alignment(restorer) -> int:
    m = int(getattr(restorer, "size_multiple", 1) or 1)
    return m * 8 // math.gcd(m, 8)


def _structural(net: nn.Module) -> nn.Module:
    """A float64 copy with positive weights (1 / fan-in), zero biases, identity BatchNorm: a pixel's influence can
    no longer be cancelled by a ReLU, so the support of an impulse response is the structural receptive field."""
    net = copy.deepcopy(net).cpu().double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is not None:
                    m.running_mean.zero_()
                    m.running_var.fill_(1.0)
                m.eps = 0.0
            for name, p in m.named_parameters(recurse=False):
                if name == "bias" or p.dim() <= 1:
                    p.fill_(1.0 if (name == "weight" and p.dim() == 1) else 0.0)
                else:
                    fan = p.numel() // (p.shape[1] if isinstance(m, nn.modules.conv._ConvTransposeNd) else p.shape[0])
                    p.fill_(1.0 / max(fan, 1))
    return net


def _reach(fn, channels: int, size: int, stride: int, align: int) -> int | None:
    """Largest input distance from an impulse to an output pixel it changes; None: the support reaches the border."""
    c = size // 2 // align * align
    x0 = torch.zeros(2, channels, size, size, dtype=torch.float64)
    x = torch.zeros(2, channels, size, size, dtype=torch.float64)
    x[0, :, c, c] = 1.0
    x[1, :, c + align - 1, c + align - 1] = 1.0
    with torch.no_grad():
        base, out = fn(x0), fn(x)
    reach = 0
    for i, p in enumerate((c, c + align - 1)):
        diff = (out[i] != base[i]).any(0)
        for axis in (0, 1):
            idx = diff.any(1 - axis).nonzero().flatten()
            if idx.numel() == 0:
                continue
            lo, hi = int(idx.min()), int(idx.max())
            if lo == 0 or hi == diff.shape[axis] - 1:
                return None
            reach = max(reach, p - lo * stride, (hi + 1) * stride - 1 - p)
    return reach


_SPEC_CACHE: dict[tuple, TilingSpec] = {}


def tiling_spec(restorer) -> TilingSpec:
    """Alignment and overlap that make tiles exact for this network (measured once per architecture)."""
    key = _arch_key(restorer)
    if key in _SPEC_CACHE:
        return _SPEC_CACHE[key]
    align = _alignment(restorer)
    net = _net(restorer)
    channels = getattr(restorer, "in_channels", None) or getattr(net, "in_channels", None) or 3
    has_context = callable(getattr(net, "tile_context", None))
    reach: int | None = None
    for size in PROBE_SIZES:
        probe = _structural(net)
        reaches: list[int | None] = []

        def record(fn, x, stride):  # the context's local stages: measure, then run whole on the probe input
            reaches.append(_reach(fn, channels, size, stride, align))
            return fn(x)

        state = None
        if has_context:
            with torch.no_grad():
                state = probe.tile_context(torch.zeros(2, channels, size, size, dtype=torch.float64), record)
        probe._tile_state = None if state is None else (state, (0, 0))
        reaches.append(_reach(probe, channels, size, 1, align))
        if all(r is not None for r in reaches):
            reach = max(reaches)
            break
    overlap = None if reach is None else math.ceil(reach / align) * align
    spec = _SPEC_CACHE[key] = TilingSpec(align, overlap, reach, has_context)
    return spec


# ---- tiling ------------------------------------------------------------------------------------------------------
def _windows(n: int, core: int, overlap: int, align: int):
    """(core start, window start, window end) along one axis. Windows have one size, core + 2 * overlap, except at
    the far edge (which the last window reaches): a window that would cross an image edge slides inward instead of
    shrinking, so a run sees at most two tile shapes (oneDNN/cuDNN plan once per shape) and no small tiles."""
    size = core + 2 * overlap
    last = max(0, -(-(n - size) // align) * align)  # the last window: [last, n), at most `size`
    for c in range(0, n, core):
        start = min(max(c - overlap, 0), last)
        yield c, start, (n if start == last else start + size)


def _padded(restorer, x: torch.Tensor) -> torch.Tensor:
    """x as the network sees it in RestorerModule.forward: its channels, reflection-padded to size_multiple."""
    if hasattr(restorer, "as_net_channels"):
        x = restorer.as_net_channels(x)
    m = int(getattr(restorer, "size_multiple", 1) or 1)
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    return x


def _even(n: int, core: int, align: int) -> int:
    """The core size (<= core, a multiple of align) that splits n into as few, equal parts as `core` allows."""
    parts = -(-n // core)
    return min(core, -(-(-(-n // parts)) // align) * align)


def _run_tiles(fn, x: torch.Tensor, core: int, overlap: int, align: int, stride: int = 1) -> torch.Tensor:
    """fn(tile, (y, x)) over overlapping tiles of x (cores of at most `core` px, split evenly per axis, at least
    `overlap` px of context on every side that is not an image edge), assembled; fn's output is at 1/stride of its
    input (stride divides align)."""
    h, w = x.shape[-2:]
    out = None
    core_h, core_w = _even(h, core, align), _even(w, core, align)
    for y0, ys, ye in _windows(h, core_h, overlap, align):
        for x0, xs, xe in _windows(w, core_w, overlap, align):
            r = fn(x[..., ys:ye, xs:xe], (ys, xs))
            if out is None:
                out = r.new_empty(*r.shape[:-2], -(-h // stride), -(-w // stride))
            cy, cx = min(core_h, h - y0), min(core_w, w - x0)
            oy, ox = (y0 - ys) // stride, (x0 - xs) // stride
            out[..., y0 // stride:(y0 + cy) // stride, x0 // stride:(x0 + cx) // stride] = \
                r[..., oy:oy + cy // stride, ox:ox + cx // stride]
    return out


@torch.no_grad()
def restore_tiled(restorer, x: torch.Tensor, tile: int, overlap: int | None = None,
                  spec: TilingSpec | None = None) -> torch.Tensor:
    """`restorer.restore(x)` in tiles of at most `tile` x `tile` pixels (overlap included): exact for a network
    `tiling_spec` finds local (or that splits off its global part). `overlap` overrides the measured one."""
    spec = spec or tiling_spec(restorer)
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return restorer.restore(x)
    ov = overlap if overlap is not None else (spec.overlap if spec.overlap is not None else 32)
    ov = math.ceil(ov / spec.align) * spec.align
    core = (tile - 2 * ov) // spec.align * spec.align
    if core < spec.align:
        raise ValueError(f"tile {tile} too small for {getattr(restorer, 'method_name', 'this method')}: it needs "
                         f"more than twice the overlap ({ov} px) plus {spec.align} px; use --tile "
                         f"{2 * ov + spec.align} or more")
    net = _net(restorer)
    state = None
    if spec.context:
        xp = _padded(restorer, x)
        state = net.tile_context(xp, lambda fn, t, stride: _run_tiles(lambda tt, _o: fn(tt), t, core, ov,
                                                                      spec.align, stride))
    try:
        def restore_tile(t, offset):
            net._tile_state = None if state is None else (state, offset)
            return restorer.restore(t)

        return _run_tiles(restore_tile, x, core, ov, spec.align)
    finally:
        net._tile_state = None


def plan_tile(spec: TilingSpec, bytes_per_pixel: float, n: int, budget: int) -> int:
    """Largest tile side (overlap included, a multiple of the alignment) whose estimated memory fits the budget."""
    side = int(math.sqrt(budget / max(bytes_per_pixel * n, 1e-9)))
    return max(side // spec.align * spec.align, 2 * (spec.overlap or 0) + spec.align)


def restore(restorer, x: torch.Tensor, tile: int | None = None, budget_gb: float | None = None,
            name: str | None = None) -> torch.Tensor:
    """Restore `x` (N x C x H x W in [0, 1]): whole when its estimated activation memory fits the budget, else in
    exact tiles sized to it; `tile` forces tiles of at most that side. Out of memory -> RestorationOutOfMemory naming
    `name` (the image) and the options to use."""
    h, w = x.shape[-2:]
    what = f"image {name!r}" if name else f"a {h}x{w} image"
    method = getattr(restorer, "method_name", type(restorer).__name__)
    budget = memory_budget(budget_gb)
    used_tile = None
    try:
        if tile:
            used_tile = tile
            spec = tiling_spec(restorer)
            if not spec.exact and (h > tile or w > tile):
                warnings.warn(f"{method} has a global operation and no exact tiling: --tile {tile} restores "
                              f"{what} approximately", stacklevel=2)
            return restore_tiled(restorer, x, tile, spec=spec)
        bpp = activation_bytes_per_pixel(restorer, x.shape[1], x.device, x.dtype)
        if bpp * x.shape[0] * h * w <= budget:
            return restorer.restore(x)
        spec = tiling_spec(restorer)
        if not spec.exact:
            warnings.warn(f"{method} has a global operation and cannot be tiled exactly: restoring {what} whole "
                          f"(estimated {bpp * x.shape[0] * h * w / 2 ** 30:.1f} GB over the "
                          f"{budget / 2 ** 30:g} GB budget); --tile N tiles it approximately", stacklevel=2)
            return restorer.restore(x)
        used_tile = plan_tile(spec, bpp, x.shape[0], budget)
        return restore_tiled(restorer, x, used_tile, spec=spec)
    except Exception as e:
        if not is_oom(e):
            raise
        how = f"in tiles of {used_tile} px" if used_tile else "whole"
        hint = (f"pass a smaller --tile (e.g. --tile {max((used_tile or 1024) // 2, 64)}) or a lower --memory-budget "
                f"(now {budget / 2 ** 30:g} GB; also ${BUDGET_ENV})")
        raise RestorationOutOfMemory(f"out of memory restoring {what} ({h}x{w}) with {method} {how}: {hint}") from e
