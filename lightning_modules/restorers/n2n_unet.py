"""N2N U-Net CAR (the "CAR for classification" paper, Sec. III-A): Ronneberger's U-Net as an image-to-image restorer.

23 convolutions: four contraction levels of (3x3 conv + ReLU) x 2 then 2x2 max-pool stride 2, a bottleneck pair,
four expansion levels of a 2x2 up-convolution (transposed conv, stride 2), concatenation with the contraction
features of that level, (3x3 conv + ReLU) x 2, and a final 1x1 conv to the image channels (3 in -> 3 out for RGB).
Departure from the 2015 U-Net: 'same' padding instead of valid convolutions + cropping, so the output has the
input's size, as the paper requires ("the output has the same dimension of the input image"); inputs are padded
to a multiple of 2^depth by `RestorerModule`.

Presets:
- `paper`: width 64 at the first level (64..1024 channels), the paper's network (31,031,875 parameters for RGB).
- `compact`: width 12, same 23-layer structure (1.09 M parameters, 4.4 MB: under the 5 MB shipping limit), trained
  by carbench as one blind model for QF 5..50 (`benchmark train --method n2n_unet`, shipped
  `checkpoints/n2n_unet_compact.pt`).
- `compact_qf10`: the paper's per-QF protocol (one model per QF) at QF 10: the blind compact model fine-tuned on
  QF 10 only (shipped `checkpoints/n2n_unet_compact_qf10.pt`); other QFs: `--qf-range Q,Q`.
"""
from __future__ import annotations

import torch
from torch import nn

from lightning_modules.registry import Preset, register


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """U-Net with `depth` pooling steps; `2 * (depth + 1) + 3 * depth + 1` convolutions (23 at depth 4)."""

    def __init__(self, in_channels: int = 3, width: int = 64, depth: int = 4):
        super().__init__()
        self.in_channels, self.size_multiple = in_channels, 2 ** depth
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])] +
                                  [_double_conv(widths[i - 1], widths[i]) for i in range(1, depth + 1)])
        self.pool = nn.MaxPool2d(2, 2)
        self.upconv = nn.ModuleList(nn.ConvTranspose2d(widths[i], widths[i - 1], 2, stride=2)
                                    for i in range(depth, 0, -1))
        self.up = nn.ModuleList(_double_conv(2 * widths[i - 1], widths[i - 1]) for i in range(depth, 0, -1))
        self.head = nn.Conv2d(widths[0], in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        skips.pop()  # the bottleneck output is `h` itself
        for upconv, block in zip(self.upconv, self.up):
            h = block(torch.cat([skips.pop(), upconv(h)], dim=1))
        return self.head(h)  # the restored image itself (not a residual), as in the paper


def count_convs(net: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in net.modules())


@register(
    "n2n_unet",
    presets={
        "compact": Preset(kwargs=dict(in_channels=3, width=12, depth=4), weights="n2n_unet_compact.pt",
                          description="shipped; retrain with `benchmark train --method n2n_unet`"),
        # the paper trains one model per QF: this is that protocol at QF 10 (fine-tuned from the blind compact)
        "compact_qf10": Preset(kwargs=dict(in_channels=3, width=12, depth=4), weights="n2n_unet_compact_qf10.pt",
                               description="per-QF model for QF 10 (the paper's protocol); shipped; retrain with "
                                           "`benchmark train --method n2n_unet.compact_qf10 --qf-range 10,10 "
                                           "--init lightning_modules/checkpoints/n2n_unet_compact.pt`"),
        "paper": Preset(kwargs=dict(in_channels=3, width=64, depth=4), weights=None,
                        description="the paper's 23-layer U-Net (64..1024 ch); no released weights, train it"),
    },
    description="N2N U-Net CAR: 23-layer U-Net, L2, Adam(1e-3, 0.9/0.99)",
)
def build_n2n_unet(in_channels: int = 3, width: int = 64, depth: int = 4) -> UNet:
    return UNet(in_channels, width, depth)
