"""The TF.js graph reader/evaluator (issue 18's reference for the native detector ports), on a graph the test
writes: a SAME-padded stride-2 fused conv + bias + ReLU6, then a depthwise conv, against torch computed by hand."""
import base64
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.task_models.tfjs import GraphError, read_weights
from tests.tfjs_reference import evaluate


def _b64(s):
    return base64.b64encode(s.encode()).decode()


def _write(tmp_path, truncate=0):
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(3, 3, 2, 4)).astype(np.float16)  # HWIO
    b1 = rng.normal(size=(4,)).astype(np.float16)
    w2 = rng.normal(size=(3, 3, 4, 1)).astype(np.float16)  # HW C M
    conv = {"strides": {"list": {"i": ["1", "2", "2", "1"]}}, "padding": {"s": _b64("SAME")},
            "data_format": {"s": _b64("NHWC")}}
    nodes = [
        {"name": "x", "op": "Placeholder"},
        {"name": "w1", "op": "Const"}, {"name": "b1", "op": "Const"}, {"name": "w2", "op": "Const"},
        {"name": "c1", "op": "_FusedConv2D", "input": ["x", "w1", "b1"],
         "attr": {**conv, "fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu6")]}}}},
        {"name": "c2", "op": "DepthwiseConv2dNative", "input": ["c1", "w2"],
         "attr": {**conv, "strides": {"list": {"i": ["1", "1", "1", "1"]}}}},
    ]
    manifest = [{"paths": ["g.bin"], "weights": [
        {"name": n, "shape": list(a.shape), "dtype": "float32", "quantization": {"dtype": "float16"}}
        for n, a in (("w1", w1), ("b1", b1), ("w2", w2))]}]
    (tmp_path / "g.json").write_text(json.dumps({"modelTopology": {"node": nodes}, "weightsManifest": manifest}))
    data = w1.tobytes() + b1.tobytes() + w2.tobytes()
    (tmp_path / "g.bin").write_bytes(data[:len(data) - truncate])
    return w1, b1, w2


def test_graph_equals_hand_written_torch(tmp_path):
    w1, b1, w2 = _write(tmp_path)
    g, weights = read_weights(tmp_path / "g.json")
    assert weights["w1"].dtype == torch.float32 and torch.equal(weights["w1"], torch.from_numpy(w1.astype(np.float32)))
    x = torch.randn(1, 9, 11, 2, generator=torch.Generator().manual_seed(1))
    out = evaluate(g, weights, {"x": x}, ["c2"])["c2"]
    # TF SAME at stride 2 on 9x11 with k=3: total pad 2 (H) and 2 (W) -> 1 before, 1 after
    ref = F.conv2d(F.pad(x.permute(0, 3, 1, 2), [1, 1, 1, 1]), torch.from_numpy(w1.astype(np.float32)).permute(3, 2, 0, 1),
                   stride=2) + torch.from_numpy(b1.astype(np.float32)).view(1, 4, 1, 1)
    ref = F.relu6(ref)
    ref = F.conv2d(F.pad(ref, [1, 1, 1, 1]), torch.from_numpy(w2.astype(np.float32)).permute(2, 3, 0, 1).reshape(4, 1, 3, 3),
                   groups=4)
    torch.testing.assert_close(out, ref.permute(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


def test_truncated_bin_and_renamed_node_are_named(tmp_path):
    _write(tmp_path, truncate=3)
    with pytest.raises(GraphError, match="'w2'.*truncated"):
        read_weights(tmp_path / "g.json")
    _write(tmp_path)
    g, weights = read_weights(tmp_path / "g.json")
    with pytest.raises(GraphError, match="'c9' is not in the graph"):
        evaluate(g, weights, {"x": torch.zeros(1, 4, 4, 2)}, ["c9"])
