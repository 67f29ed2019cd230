"""DnCNN (Zhang et al., TIP 2017): plain conv stack predicting the residual; DnCNN-3 is its blind JPEG model.

Presets:
- `paper`: DnCNN-3 as released (gray, 20 conv layers, 64 channels, BN merged into the convs). Weights: the authors'
  MatConvNet file `DnCNN3.mat` (cszn/DnCNN, model/DnCNN3.mat), read by `load_matconvnet`.
- `compact`: a small colour DnCNN trained by carbench on BSDS500-train (QF 5..50, 4:2:0) and shipped in
  `checkpoints/dncnn_compact.pt`; retrain with `benchmark train --method dncnn` (see checkpoints/README.md).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from lightning_modules.registry import MethodError, Preset, register


class DnCNN(nn.Module):
    """x -> x - body(x). Module layout (conv/ReLU alternating in `model`) follows KAIR's keys `model.{0..38}`."""

    def __init__(self, in_channels: int = 1, depth: int = 20, width: int = 64):
        super().__init__()
        if depth < 2:
            raise ValueError("DnCNN needs depth >= 2")
        self.in_channels = in_channels
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, in_channels, 3, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.model(x)


def load_matconvnet(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """MatConvNet simplenn `.mat` (MATLAB v7.3 / HDF5) with merged BN -> DnCNN state dict.

    HDF5 stores MATLAB arrays with reversed axes: a conv filter (H, W, In, Out) reads as (Out, In, W, H), so only
    the last two axes need swapping to get PyTorch's (Out, In, H, W).
    """
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise MethodError(f"{path}: not a MATLAB v7.3 (HDF5) file ({e}); save it with `save -v7.3`") from e
    state, conv_idx = {}, 0
    with f:
        if "net" not in f or "layers" not in f["net"]:
            raise MethodError(f"{path}: no net.layers: not a MatConvNet simplenn model")
        layer_refs = f["net"]["layers"][()].flatten()
        for i, ref in enumerate(layer_refs):
            layer = f[ref]
            kind = "".join(map(chr, layer["type"][()].flatten()))
            if kind == "conv":
                w_ref, b_ref = layer["weights"][()].flatten()[:2]
                w = np.asarray(f[w_ref], dtype=np.float32)
                w = w.reshape((1,) * (4 - w.ndim) + w.shape)  # MATLAB drops trailing singleton dims (Out=1)
                w = w.transpose(0, 1, 3, 2)
                b = np.asarray(f[b_ref], dtype=np.float32).reshape(-1)
                state[f"model.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(w))
                state[f"model.{i}.bias"] = torch.from_numpy(b)
                conv_idx += 1
            elif kind not in ("relu",):
                raise MethodError(f"{path}: layer {i} has type {kind!r}; only conv/relu (BN merged) is supported")
    if conv_idx == 0:
        raise MethodError(f"{path}: no conv layers found")
    return state


@register(
    "dncnn",
    presets={
        "compact": Preset(kwargs=dict(in_channels=3, depth=10, width=32), weights="dncnn_compact.pt",
                          description="shipped; retrain with `benchmark train --method dncnn`"),
        "paper": Preset(kwargs=dict(in_channels=1, depth=20, width=64), weights="DnCNN3.mat",
                        loader=load_matconvnet,
                        description="the authors' MatConvNet file, cszn/DnCNN model/DnCNN3.mat"),
    },
    description="DnCNN-3, blind residual CNN (Zhang et al. 2017)",
)
def build_dncnn(in_channels: int = 1, depth: int = 20, width: int = 64) -> DnCNN:
    return DnCNN(in_channels, depth, width)
