"""PSPNet (Zhao et al., CVPR 2017) in plain PyTorch, laid out so mmsegmentation's released checkpoints load unchanged.

The module tree reproduces mmseg's `EncoderDecoder(ResNetV1c, PSPHead, FCNHead)` exactly as the state-dict keys of
`configs/pspnet/pspnet_r50-d8_*` checkpoints spell them (e.g. `pspnet_r50-d8_512x512_20k_voc12aug_*.pth`):

- `backbone`: mmseg `ResNetV1c` (deep stem, no avg-down). `backbone.stem` is one Sequential
  conv-bn-relu x 3, so its parameters sit at `stem.{0,1,3,4,6,7}` (3x3 convs in -> stem/2 (stride 2) -> stem/2 ->
  stem, all bias-free); then a 3x3/2 max pool. Stages `layer1..4` of Bottleneck blocks (`conv1/bn1/conv2/bn2/conv3/
  bn3`, `downsample.{0 conv, 1 bn}` on the first block when the shape changes), style 'pytorch' (the stride sits on
  the 3x3 conv). "D8": strides (1, 2, 1, 1), dilations (1, 1, 2, 4) with `contract_dilation=True` (the first block
  of a dilated stage uses dilation // 2), so the output stride is 8. Depth 18/34 use mmseg's BasicBlock (`conv1/bn1/
  conv2/bn2`; like mmseg, its second conv is never dilated).
- `decode_head`: mmseg `PSPHead`: `psp_modules.{i}` = Sequential(AdaptiveAvgPool2d(s), ConvModule 1x1) for pool
  scales (1, 2, 3, 6), so the conv sits at `psp_modules.{i}.1.conv` and its BN at `.1.bn`; pooled maps are
  upsampled bilinearly (align_corners=False) and concatenated after the input; `bottleneck` = ConvModule 3x3; then
  Dropout2d(0.1) (no parameters) and `conv_seg`, a 1x1 conv with bias.
- `auxiliary_head` (only with `aux=True`): mmseg `FCNHead(num_convs=1, concat_input=False)` on stage 3 (1024 ch for
  ResNet-50): `convs.0` = ConvModule 3x3 -> 256, Dropout2d(0.1), `conv_seg`. Only used for training; when a model
  is built with `aux=False`, the `auxiliary_head.*` keys of a checkpoint are dropped on load (nothing else is).

mmcv's ConvModule with a norm layer has a bias-free conv (`bias='auto'`); its parts are named `conv`, `bn` and
`activate` (ReLU, no parameters). SyncBN (the configs' norm) has the same state-dict entries as BatchNorm2d.

Input convention (mmseg's data preprocessor for these configs): RGB, 0..255 scale, normalised by
mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375). `normalize(x01)` maps [0, 1] RGB to that.
`PSPNet.forward` returns logits at the input resolution (bilinear, align_corners=False), as mmseg's
`encode_decode` does. mmseg's VOC PSPNet configs test in 'whole' mode after resizing the image with keep-ratio to
fit (2048, 512) (see `mmseg_test_size`; `task_models.MMSegInference` runs that pipeline); `slide_inference` is mmseg's sliding-window mode.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

MMSEG_MEAN = (123.675, 116.28, 103.53)
MMSEG_STD = (58.395, 57.12, 57.375)
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def normalize(x01: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (N, 3, H, W) (or uint8 0..255) -> mmseg's normalised input ((255 x - mean) / std)."""
    x = x01.float() if x01.dtype == torch.uint8 else x01 * 255.0
    mean = torch.tensor(MMSEG_MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(MMSEG_STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


# ----------------------------------------------------------------------------------------------------------------
# building blocks


class ConvModule(nn.Module):
    """mmcv ConvModule with BN + ReLU: `conv` (bias-free), `bn`, `activate`."""

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)  # mmseg: never dilated
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """Style 'pytorch': the stride is on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetV1c(nn.Module):
    """mmseg ResNetV1c: deep 3x3 stem, configurable depth/widths/strides/dilations; returns the 4 stage outputs."""

    ARCH: ClassVar[dict] = {
        18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)), 152: (Bottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth: int = 50, in_channels: int = 3, stem_channels: int = 64, base_channels: int = 64,
                 strides: Sequence[int] = (1, 2, 1, 1), dilations: Sequence[int] = (1, 1, 2, 4),
                 contract_dilation: bool = True):
        super().__init__()
        if depth not in self.ARCH:
            raise ValueError(f"ResNet depth {depth}: use one of {sorted(self.ARCH)}")
        if len(strides) != 4 or len(dilations) != 4:
            raise ValueError("strides and dilations need 4 entries (one per stage)")
        block, blocks = self.ARCH[depth]
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(True),
            nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(True),
            nn.Conv2d(half, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels), nn.ReLU(True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem_channels
        self.out_channels: list[int] = []
        for i, (n, stride, dilation) in enumerate(zip(blocks, strides, dilations)):
            planes = base_channels * 2**i
            layer = self._make_layer(block, inplanes, planes, n, stride, dilation, contract_dilation)
            self.add_module(f"layer{i + 1}", layer)
            inplanes = planes * block.expansion
            self.out_channels.append(inplanes)

    @staticmethod
    def _make_layer(block, inplanes, planes, n, stride, dilation, contract_dilation) -> nn.Sequential:
        downsample = None
        if stride != 1 or inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        first = dilation // 2 if (dilation > 1 and contract_dilation) else dilation
        layers = [block(inplanes, planes, stride, first, downsample)]
        layers += [block(planes * block.expansion, planes, 1, dilation) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.maxpool(self.stem(x))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return tuple(outs)


class PSPHead(nn.Module):
    """mmseg PSPHead on one feature map; returns logits at the feature resolution."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, pool_scales: Sequence[int] = (1, 2, 3, 6),
                 dropout: float = 0.1, align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels, channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvModule(in_channels + len(pool_scales) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        outs = [x] + [F.interpolate(m(x), size=size, mode="bilinear", align_corners=self.align_corners)
                      for m in self.psp_modules]
        return self.conv_seg(self.dropout(self.bottleneck(torch.cat(outs, dim=1))))


class FCNHead(nn.Module):
    """mmseg FCNHead(num_convs, concat_input=False): the PSPNet auxiliary head."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 1,
                 dropout: float = 0.1):
        super().__init__()
        self.convs = nn.Sequential(
            *[ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1) for i in range(num_convs)]
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(x)))


# ----------------------------------------------------------------------------------------------------------------
# the segmentor


class PSPNet(nn.Module):
    """PSPNet ResNetV1c-D8. Defaults = mmseg `pspnet_r50-d8` with VOC's 21 classes.

    `forward(x)` takes mmseg-normalised RGB (see `normalize`) and returns decode-head logits (N, num_classes, H, W)
    at the input resolution. `forward_with_aux(x)` also returns the auxiliary head's logits (training).
    Small variants: e.g. `PSPNet(depth=18, stem_channels=16, base_channels=8, channels=32, aux_channels=16)`.
    """

    def __init__(self, num_classes: int = 21, depth: int = 50, stem_channels: int = 64, base_channels: int = 64,
                 channels: int = 512, pool_scales: Sequence[int] = (1, 2, 3, 6), aux: bool = False,
                 aux_channels: int = 256, dropout: float = 0.1, strides: Sequence[int] = (1, 2, 1, 1),
                 dilations: Sequence[int] = (1, 1, 2, 4), contract_dilation: bool = True,
                 align_corners: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.backbone = ResNetV1c(depth, 3, stem_channels, base_channels, strides, dilations, contract_dilation)
        c3, c4 = self.backbone.out_channels[2], self.backbone.out_channels[3]
        self.decode_head = PSPHead(c4, channels, num_classes, pool_scales, dropout, align_corners)
        self.auxiliary_head = FCNHead(c3, aux_channels, num_classes, 1, dropout) if aux else None

    def _resize(self, logits: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=self.align_corners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        return self._resize(self.decode_head(feats[3]), x.shape[2:])

    def forward_with_aux(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.backbone(x)
        main = self._resize(self.decode_head(feats[3]), x.shape[2:])
        aux = None if self.auxiliary_head is None else self._resize(self.auxiliary_head(feats[2]), x.shape[2:])
        return main, aux

    def load_mmseg_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load mmseg keys unchanged (strict). `auxiliary_head.*` keys are dropped when this model has no aux head.

        Raises ValueError listing missing keys, unexpected keys and shape mismatches.
        """
        sd = dict(state_dict)
        if self.auxiliary_head is None:
            sd = {k: v for k, v in sd.items() if not k.startswith("auxiliary_head.")}
        own = self.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape))
        if missing or unexpected or shapes:
            raise ValueError(_mismatch_message(missing, unexpected, shapes))
        self.load_state_dict(sd, strict=True)


def _mismatch_message(missing, unexpected, shapes, source: str = "checkpoint") -> str:
    def show(keys):
        return ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")

    parts = [f"{source} does not match the PSPNet"]
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {show(shapes)}")
    return "; ".join(parts)


def load_mmseg_checkpoint(path: str | os.PathLike, model: PSPNet | None = None) -> dict[str, torch.Tensor]:
    """Read an mmseg `.pth` (`{"meta": ..., "state_dict": ...}`; a bare state dict also works) -> its state dict.

    Keys are returned unchanged. `torch.load(weights_only=True)` is tried first; mmseg's `meta` can hold objects
    that the safe unpickler refuses (mmengine's message hub, numpy scalars), and then the file is read with
    `weights_only=False` -- only load checkpoints you trust. With `model`, the state dict is also loaded into it
    (`PSPNet.load_mmseg_state_dict`: strict, aux keys dropped for an aux-less model, ValueError naming the file and
    listing missing/unexpected keys on a mismatch).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mmseg checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_err:  # noqa: BLE001 -- retried with the full unpickler, both reported
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e}; weights_only: {safe_err})") from e
    if isinstance(ckpt, Mapping) and "state_dict" in ckpt:
        sd = ckpt["state_dict"]
    else:
        sd = ckpt
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: no state_dict of tensors (expected mmseg's {{'meta': ..., 'state_dict': ...}})")
    sd = dict(sd)
    if model is not None:
        try:
            model.load_mmseg_state_dict(sd)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    return sd


# ----------------------------------------------------------------------------------------------------------------
# inference as mmseg's EncoderDecoder does it


def mmseg_test_size(h: int, w: int, scale: tuple[int, int] = (2048, 512)) -> tuple[int, int]:
    """(new_h, new_w) of mmseg's keep-ratio test `Resize(scale=(2048, 512))` (mmcv `rescale_size`): the largest
    size whose long side <= max(scale) and short side <= min(scale), rounded with int(x + 0.5)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


@torch.no_grad()
def whole_inference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mmseg 'whole' mode: logits of the full (normalised) image at its resolution."""
    return model(x)


@torch.no_grad()
def slide_inference(model: nn.Module, x: torch.Tensor, crop: tuple[int, int] = (512, 512),
                    stride: tuple[int, int] = (341, 341), num_classes: int | None = None) -> torch.Tensor:
    """mmseg 'slide' mode: overlapping (h, w) crops, logits summed and divided by the per-pixel crop count.

    As in mmseg's `EncoderDecoder.slide_inference`, windows start every `stride` pixels, the last window is shifted
    back to end at the image border, and a side shorter than the crop is decoded at its own size (the crop is
    clipped to the image, no padding), so one window covering the image is exactly `whole_inference`.
    """
    h_crop, w_crop = crop
    h_stride, w_stride = stride
    n, _, h_img, w_img = x.shape
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds: torch.Tensor | None = None
    if num_classes is not None:
        preds = x.new_zeros((n, num_classes, h_img, w_img))
    count = x.new_zeros((n, 1, h_img, w_img))
    for hi in range(h_grids):
        for wi in range(w_grids):
            y2, x2 = min(hi * h_stride + h_crop, h_img), min(wi * w_stride + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            logits = model(x[:, :, y1:y2, x1:x2])
            if preds is None:
                preds = x.new_zeros((n, logits.shape[1], h_img, w_img))
            elif logits.shape[1] != preds.shape[1]:
                raise ValueError(f"model gives {logits.shape[1]} classes, expected {preds.shape[1]}")
            preds[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    assert preds is not None and bool((count > 0).all())
    return preds / count


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, mode: str = "whole", out_size: tuple[int, int] | None = None,
            crop: tuple[int, int] = (512, 512), stride: tuple[int, int] = (341, 341),
            align_corners: bool = False) -> torch.Tensor:
    """Label map (N, H, W) int64: logits by `mode`, resized bilinearly to `out_size` (the original image size when
    the input was rescaled, as mmseg's `postprocess_result` does), then argmax over classes."""
    if mode == "whole":
        logits = whole_inference(model, x)
    elif mode == "slide":
        logits = slide_inference(model, x, crop, stride)
    else:
        raise ValueError(f"mode={mode!r}: use 'whole' or 'slide'")
    if out_size is not None and tuple(out_size) != tuple(logits.shape[2:]):
        logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=align_corners)
    return logits.argmax(1)


__all__ = [
    "MMSEG_MEAN", "MMSEG_STD", "VOC_CLASSES", "BasicBlock", "Bottleneck", "ConvModule", "FCNHead", "PSPHead",
    "PSPNet", "ResNetV1c", "load_mmseg_checkpoint", "mmseg_test_size", "normalize", "predict", "slide_inference",
    "whole_inference",
]
