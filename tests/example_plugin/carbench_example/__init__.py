"""Example outside method for carbench: blends each pixel with a 3x3 Gaussian of its neighbourhood, which softens
8x8 block edges at low QF. No weights. Two ways in:
- entry point (this package's pyproject.toml): `pip install ./tests/example_plugin`, then `--method smooth_deblock`;
- no install: `--method tests/example_plugin/carbench_example/__init__.py:SmoothDeblock`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SmoothDeblock(nn.Module):
    def __init__(self, strength: float = 0.5):
        super().__init__()
        g = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (g[:, None] * g[None, :] / 16).expand(1, 1, 3, 3).clone())
        self.strength = strength

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.kernel.expand(c, 1, 3, 3), groups=c)
        return (1 - self.strength) * x + self.strength * blurred


def register() -> None:
    """Called once by carbench (entry point group `carbench.methods`)."""
    from lightning_modules import Preset, register as carbench_register

    carbench_register("smooth_deblock", presets={"none": Preset(self_contained=True, description="3x3 Gaussian blend")},
                      description="example plugin: parameter-free smoothing")(SmoothDeblock)
