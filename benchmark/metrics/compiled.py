"""Opt-in fused kernels for the fidelity metrics: `torch.compile` (inductor's generated C++) walks both images once.

The numpy kernels of `fidelity` convert, subtract and square in L2-sized chunks: ~10 passes over cached chunks.
A fused loop reads each input once and runs at memory speed (measured on LIVE1, one thread: float [0, 1] PSNR
1.3 ms -> 0.6 ms, uint8 0.55 ms -> 0.06 ms). The compile costs 2-16 s of CPU once per process (16 s with a cold
inductor cache, ~2 s with a warm one), so it pays only for processes that score thousands of images: the default
stays numpy, and a caller opts in with `compile_kernels()` or `CARBENCH_METRIC_KERNELS=compiled`.

Values are identical to the numpy path, not merely close: the squared differences are integers summed in float64
(< 2^53, exact in any order), and the [0, 1] -> uint8 rounding is the same IEEE multiply, clamp and round half to
even. The kernels take flat, dense 1-D tensors only (one dynamic-size graph per input signature, compiled up front):
anything else, or a signature not compiled, takes the numpy path, and a recompile is refused rather than run.
"""
from __future__ import annotations

import math
import os
import threading
import time

import numpy as np
import torch

ENV = "CARBENCH_METRIC_KERNELS"  # "compiled": compile on the first metric call; anything else: numpy
# (dtype of preds, dtype of target, preds in [0, 1]?, target in [0, 1]?): what `fidelity` asks for -- both images as
# given (uint8 or float [0, 1]), a rounded float32 preds against a float target (PSNR-B), two rounded images (luma)
SIGNATURES = (
    (torch.uint8, torch.uint8, False, False),
    (torch.float32, torch.float32, True, True),
    (torch.float64, torch.float64, True, True),
    (torch.float32, torch.float32, False, True),
    (torch.float32, torch.float32, False, False),
)
_lock = threading.Lock()
_state: dict = {"sse": None, "compile_s": None, "error": None, "env_checked": False, "calls": 0}  # calls: served


def _values(x: torch.Tensor, unit: bool) -> torch.Tensor:
    """uint8 values as float32: [0, 1] floats scaled, clamped and rounded half to even in their own precision (as
    numpy's `_scale_round`), then float32 (exact: integers <= 255)."""
    if unit:
        x = (x * 255).clamp(0, 255).round()
    return x.to(torch.float32)


ROW = 256  # 256 * 255^2 < 2^24: a row's sum of squared uint8 differences is exact in float32 in any order


def _sse(p: torch.Tensor, t: torch.Tensor, p_unit: bool, t_unit: bool) -> torch.Tensor:
    """Sum of squared uint8 differences of two (rows, ROW) images as float64, NaN where a [0, 1] input holds NaN or
    inf: float32 row sums (exact, vectorised: 15% faster than a float64 or int64 accumulation), summed in float64.
    One loop over both inputs (a separate `isfinite` reduction cost two more passes)."""
    d = _values(p, p_unit) - _values(t, t_unit)
    sq = d * d
    for x, unit in ((p, p_unit), (t, t_unit)):
        if unit:  # x - x: 0, or NaN for NaN/inf (which clamp would hide), in the same pass: a NaN sum flags them
            sq = sq + (x - x).to(torch.float32)
    return sq.sum(1, dtype=torch.float32).to(torch.float64).sum()


def compile_kernels() -> float:
    """Compile the fused kernels for every signature now (idempotent); -> seconds spent in this call. Raises
    RuntimeError when inductor cannot build them here (no C++ compiler): the numpy path stays in use."""
    with _lock:
        if _state["sse"] is not None:
            return 0.0
        start, threads = time.perf_counter(), torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            fn = torch.compile(_sse, dynamic=True, fullgraph=True)
            for p_dtype, t_dtype, p_unit, t_unit in SIGNATURES:
                for rows in (2, 3):  # two sizes: the graph is the dynamic-size one every image then hits
                    with torch.no_grad():  # as it is called
                        fn(torch.zeros(rows, ROW, dtype=p_dtype), torch.zeros(rows, ROW, dtype=t_dtype), p_unit, t_unit)
        except Exception as e:  # inductor raises many types (missing compiler, codegen errors)
            _state["error"] = f"{type(e).__name__}: {e}"
            raise RuntimeError(f"the fused metric kernels could not be compiled here ({_state['error'][:300]}); "
                               f"the numpy kernels stay in use") from e
        _state["sse"], _state["compile_s"] = fn, time.perf_counter() - start
        return _state["compile_s"]


def enabled() -> bool:
    """Whether the fused kernels serve calls (compiling them now if `CARBENCH_METRIC_KERNELS=compiled` asks)."""
    if _state["sse"] is None and not _state["env_checked"]:
        _state["env_checked"] = True
        if os.environ.get(ENV, "").strip().lower() == "compiled":
            try:
                compile_kernels()
            except RuntimeError as e:
                import warnings
                warnings.warn(str(e), stacklevel=2)
    return _state["sse"] is not None


def disable() -> None:
    """Back to the numpy kernels (the compiled graphs are dropped)."""
    with _lock:
        _state["sse"] = None


def compile_seconds() -> float | None:
    return _state["compile_s"]


def squared_error_sum(p: np.ndarray, t: np.ndarray, unit: tuple[bool, bool]) -> tuple[int, int] | None:
    """(exact sum of squared uint8 differences of the first `m` values of two flat dense images, m) with m a multiple
    of ROW -- the caller adds the < ROW values left -- or None where the numpy path must serve it all (kernels off, a
    signature not compiled, a recompile). NaN/inf in a [0, 1] image is a ValueError."""
    fn = _state["sse"]
    if fn is None or p.ndim != 1 or p.size < 2 * ROW or not (p.flags.c_contiguous and t.flags.c_contiguous):
        return None
    m = p.size - p.size % ROW
    threads = torch.get_num_threads()
    # the graphs' guards: one thread (the metrics' policy anyway, see `fidelity._single_threaded`), no grad, and
    # normal tensors (an inference tensor is another dispatch key set): made here from numpy, outside inference mode
    try:
        if threads != 1:
            torch.set_num_threads(1)
        with torch.inference_mode(False), torch.no_grad(), torch.compiler.set_stance("fail_on_recompile"):
            p_rows, t_rows = (torch.from_numpy(x[:m]).view(-1, ROW) for x in (p, t))
            if (p_rows.dtype, t_rows.dtype, *unit) not in SIGNATURES:
                return None
            total = float(fn(p_rows, t_rows, *unit))
    except RuntimeError:
        return None
    finally:
        if threads != 1:
            torch.set_num_threads(threads)
    _state["calls"] += 1
    if math.isnan(total):
        raise ValueError("image contains NaN or inf values")
    return int(total), m
