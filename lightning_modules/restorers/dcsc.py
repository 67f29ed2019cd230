"""DCSC (Fu et al., ICCV 2019, "JPEG artifacts reduction via deep convolutional sparse coding"): a learned
convolutional sparse coding (LISTA-style) unfolding, the dual-priors authors' previous network.

Architecture (the authors' TensorFlow test code, `code/model/`, verified by reproducing their number):
- multi-scale feature extraction: three 3x3 convs 1 -> 48 with dilations 1, 2, 4 (zero padding = dilation),
  concatenated (144 maps);
- G_X = 3x3 conv 144 -> 128 without bias; U = relu(G_X);
- 40 iterations U = relu(G_X + S_U(U)) with one shared 3x3 conv 128 -> 128 without bias (the unfolded ISTA);
- output = input + 3x3 conv 128 -> 1 (with bias). Y in [0, 1].

Presets:
- `paper`: the official model (one network for QF 10-40), read from `dcsc_pytorch_layout.npz` (the TF checkpoint's
  tensors in PyTorch layout). The authors' test script truncates the output to uint8 where carbench's evaluator
  rounds: `truncate=True` shifts the output down by half a grey level so that rounding gives the truncated value
  (the two differ only on exact ties). It reproduces Classic5 QF10 29.62 dB.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_modules.registry import MethodError, Preset, register

BRANCHES = (("X1", 1), ("X2", 2), ("X4", 4))


class DCSC(nn.Module):
    in_channels = 1

    def __init__(self, branch_width: int = 48, width: int = 128, iterations: int = 40, truncate: bool = False):
        super().__init__()
        for name, d in BRANCHES:
            setattr(self, name, nn.Conv2d(1, branch_width, 3, padding=d, dilation=d))
        self.G_X = nn.Conv2d(branch_width * len(BRANCHES), width, 3, padding=1, bias=False)
        self.S_U = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.residual = nn.Conv2d(width, 1, 3, padding=1)
        self.iterations, self.truncate = iterations, truncate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = self.G_X(torch.cat([getattr(self, name)(x) for name, _ in BRANCHES], 1))
        u = torch.relu(gx)
        for _ in range(self.iterations):
            u = torch.relu(gx + self.S_U(u))
        y = x + self.residual(u)
        # the authors' test truncates to uint8; the evaluator rounds: half a level down makes them agree
        return y - 0.5 / 255 if self.truncate else y


def load_dcsc_npz(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The official DCSC tensors in PyTorch layout (`dcsc_pytorch_layout.npz`) -> DCSC state dict."""
    path = Path(path)
    if not path.is_file():
        raise MethodError(f"DCSC weights: {path} does not exist (expected dcsc_pytorch_layout.npz, the official TF "
                          f"checkpoint's tensors in PyTorch layout)")
    try:
        with np.load(path) as z:
            return {k: torch.from_numpy(np.ascontiguousarray(z[k], dtype=np.float32)) for k in z.files}
    except (OSError, ValueError) as e:
        raise MethodError(f"DCSC weights: {path} cannot be read as an .npz archive: {e}") from e


@register(
    "dcsc",
    presets={
        "paper": Preset(kwargs=dict(truncate=True), weights="dcsc_pytorch_layout.npz", loader=load_dcsc_npz,
                        description="the authors' official model (xueyangfu.github.io iccv/2019 code.zip, "
                                    "TF checkpoint; read through dcsc_pytorch_layout.npz)"),
    },
    description="DCSC, deep convolutional sparse coding unfolding (Fu et al. 2019), gray, one model for QF 10-40",
)
def build_dcsc(**kwargs) -> DCSC:
    return DCSC(**kwargs)
