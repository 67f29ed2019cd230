"""URIE (Son et al., ECCV 2020): SKUNet, a small U-Net of selective-kernel units trained in front of a frozen
ImageNet classifier (classification loss only) to undo corruptions, JPEG among them; a task-driven baseline.

Preset `paper`: the authors' released weights `ECCV_SKUNET_OURS.ckpt.pt` (taeyoungson/urie, ECCV_MODELS/), a plain
DataParallel state dict (`module.` prefix, stripped by `load_state_dict_file`). Module names follow the authors'
`models/skunet_model.py` / `skunet_parts.py` so that file loads strictly; the code here is written from scratch.
The selector's 4x4 attention grid spans the whole input, so cells are larger on full test images than on the
224/227 crops the authors trained and evaluated on; the network itself takes any size, as theirs does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.registry import Preset, register

# torchvision's ImageNet statistics: the authors' loaders end with `Normalize(mean, std)` before the network
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Selector(nn.Module):
    """Spatial selective-kernel attention: from a `grid` x `grid` average-pooled summary of the summed branches,
    a per-channel, per-cell softmax over the two branches, spread back to full size by nearest upsampling."""

    def __init__(self, channels: int, reduction: int = 16, grid: int = 4):
        super().__init__()
        self.grid = grid
        n = channels * grid * grid
        self.avg_pool = nn.AdaptiveAvgPool2d(grid)
        self.fc = nn.Sequential(nn.Linear(n, n // reduction, bias=False), nn.ReLU(inplace=True))
        self.att_conv1 = nn.Linear(n // reduction, n)
        self.att_conv2 = nn.Linear(n // reduction, n)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        z = self.fc(self.avg_pool(x).flatten(1))
        att = torch.stack((self.att_conv1(z), self.att_conv2(z))).softmax(0)  # (2, b, c * grid * grid)
        # `size=` gives the same nearest indices as the authors' `scale_factor=(H / 4, W / 4)`, for any H, W
        att = F.interpolate(att.view(2 * b, c, self.grid, self.grid), size=(h, w), mode="nearest")
        return att[:b], att[b:]


class SelectiveConv(nn.Module):
    """Two 3x3 conv branches on BatchNorm'd and on InstanceNorm'd (LeakyReLU'd) input, mixed by `Selector`:
    instance norm removes global contrast/brightness shifts, batch norm keeps them; the mix is learned per region.
    The attribute names `BN`/`IN` are the checkpoint's."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.selector = Selector(out_channels, reduction)
        self.IN = nn.InstanceNorm2d(in_channels)  # no affine, no running stats: nothing in the state dict
        self.BN = nn.BatchNorm2d(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.leaky_relu(self.BN(x), 0.01))
        out2 = self.conv2(F.leaky_relu(self.IN(x), 0.01))
        att1, att2 = self.selector(out1 + out2)
        return out1 * att1 + out2 * att2


class SKDown(nn.Module):
    """2x2 max-pool, then a selective conv (`maxpool_conv.1` in the checkpoint)."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 16):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), SelectiveConv(in_channels, out_channels, reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class SKUp(nn.Module):
    """Bilinear x2 upsampling (align_corners=True, as the authors'), zero-pad to the skip's size, concatenate
    [skip, upsampled], selective conv."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int = 16):
        super().__init__()
        self.conv = SelectiveConv(in_channels, out_channels, reduction)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class SKUNet(nn.Module):
    """URIE's enhancer on [0, 1] RGB: returns the enhanced RGB image, clamped to [0, 1].

    The authors feed ImageNet-normalised tensors (their loaders end in `Normalize(mean, std)`) and add the predicted
    residual in that space (`SKUNet.forward` returns `x + up3(...)`), handing the result unclamped to the
    classifier. So this module normalises, adds the residual, denormalises (`x + std * residual` in [0, 1] units)
    and clamps, because everything downstream of a carbench restorer takes an image in [0, 1].
    """

    def __init__(self, reduction: int = 16):
        super().__init__()
        self.in_channels = 3
        # two 2x2 poolings; padding (reflection, by RestorerModule) avoids the zero rows/columns the decoder would
        # otherwise add to odd-sized maps at the bottom/right border
        self.size_multiple = 4
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.down1 = nn.Conv2d(3, 32, 9, padding=4)
        self.down2 = SKDown(32, 64, reduction)
        self.down3 = SKDown(64, 64, reduction)
        self.up1 = SKUp(128, 32, reduction)
        self.up2 = SKUp(64, 16, reduction)
        self.up3 = nn.Conv2d(16, 3, 3, padding=1)

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        """The authors' network output minus its input, on an ImageNet-normalised image `z`."""
        x1 = self.down1(z)
        x2 = self.down2(x1)
        x = self.up1(self.down3(x2), x2)
        return self.up3(self.up2(x, x1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        return (x + self.std * self.residual(z)).clamp(0, 1)


@register(
    "urie",
    presets={"paper": Preset(
        kwargs=dict(reduction=16), weights="ECCV_SKUNET_OURS.ckpt.pt",
        description="the authors' SKUNet (taeyoungson/urie, ECCV_MODELS/ECCV_SKUNET_OURS.ckpt.pt)")},
    description="URIE SKUNet, task-driven enhancer (Son et al., ECCV 2020)",
)
def build_urie(reduction: int = 16) -> SKUNet:
    return SKUNet(reduction)
