"""AR-CNN (Dong et al., ICCV 2015): four convs (feature extraction, enhancement, mapping, reconstruction), no residual.

Presets:
- `compact` (default): colour, the paper's widths and kernels plus a global residual, trained here (blind, QF 5-50).
- `paper`: the authors' official QF10 model (gray, Y in [0, 1]) as released in dmitry42nd/CNN `data/*.csv`, read by
  `load_arcnn_csv`. It reproduces Classic5 QF10 29.03 dB and LIVE1-gray QF10 28.96 dB.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_modules.registry import MethodError, Preset, register

# (name, in, out, kernel) in forward order at the paper's size; names are the CSV suffixes and the module names
LAYERS = (("conv1", 1, 64, 9), ("conv2", 64, 32, 7), ("conv22", 32, 16, 1), ("conv3", 16, 1, 5))


class ARCNN(nn.Module):
    """Replicate padding keeps the output the input's size, as the authors' MATLAB test code does.

    in_channels: 1 (the paper: Y) or 3 (colour). residual: add the input to the output (not in the paper; the
    `compact` preset uses it so that a short CPU schedule converges -- the plain 4-layer net must first learn the
    identity through a 9x9 bottleneck)."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, int, int] = (64, 32, 16), residual: bool = False):
        super().__init__()
        self.in_channels, self.residual = in_channels, residual
        chans = (in_channels, *widths, in_channels)
        for i, (name, _, _, k) in enumerate(LAYERS):
            setattr(self, name, nn.Conv2d(chans[i], chans[i + 1], k, padding=k // 2, padding_mode="replicate"))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.conv1(x))
        y = self.relu(self.conv2(y))
        y = self.relu(self.conv22(y))
        y = self.conv3(y)
        return x + y if self.residual else y


def _read_csv(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """One CSV as a (rows, cols) float32 array; anything else is the file's fault, so name it."""
    expected = f"expected {shape[0]} rows x {shape[1]} comma-separated values"
    if not path.is_file():
        raise MethodError(f"AR-CNN weights: {path} does not exist ({expected})")
    try:
        a = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise MethodError(f"AR-CNN weights: {path} cannot be parsed ({expected}): {e}") from e
    if a.shape != shape:
        raise MethodError(f"AR-CNN weights: {path} has shape {a.shape[0]}x{a.shape[1]}, {expected}")
    if not np.isfinite(a).all():
        raise MethodError(f"AR-CNN weights: {path} holds non-finite values")
    return a.astype(np.float32)


def load_arcnn_csv(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The authors' `weights_conv*.csv` / `biases_conv*.csv` (siblings of `path`) -> ARCNN state dict.

    Each weights CSV has one row per output channel; a row is the MATLAB array (H, W, In) flattened column-major
    (H fastest, then W, then In), i.e. C-order (In, W, H): reshape to (Out, In, W, H) and swap the last two axes.
    Biases are one value per line.
    """
    folder = Path(path).parent
    state: dict[str, torch.Tensor] = {}
    for name, c_in, c_out, k in LAYERS:
        w = _read_csv(folder / f"weights_{name}.csv", (c_out, c_in * k * k))
        w = w.reshape(c_out, c_in, k, k).transpose(0, 1, 3, 2)
        b = _read_csv(folder / f"biases_{name}.csv", (c_out, 1)).reshape(-1)
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
        state[f"{name}.bias"] = torch.from_numpy(b)
    return state


@register(
    "arcnn",
    presets={
        "compact": Preset(kwargs=dict(in_channels=3, residual=True), weights="arcnn_compact.pt",
                          description="colour AR-CNN at the paper's widths plus a global residual, trained blind on "
                                      "QF 5-50 (shipped; retrain with `benchmark train --method arcnn`)"),
        "paper": Preset(weights="weights_conv1.csv", loader=load_arcnn_csv,
                        description="the authors' official QF10 model "
                                    "(dmitry42nd/CNN data/*.csv, MATLAB column-major)"),
    },
    description="AR-CNN, 4-layer artifact-reduction CNN (Dong et al. 2015)",
)
def build_arcnn(**kwargs) -> ARCNN:
    return ARCNN(**kwargs)
