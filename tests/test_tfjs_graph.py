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


def _graph(tmp_path, nodes, tensors, stem="h"):
    """Write a graph of `nodes` with float32 `tensors` (name -> array) in its .bin; returns read_weights of it."""
    manifest = [{"paths": [f"{stem}.bin"], "weights": [
        {"name": n, "shape": list(a.shape), "dtype": "float32"} for n, a in tensors.items()]}]
    (tmp_path / f"{stem}.json").write_text(json.dumps({"modelTopology": {"node": nodes}, "weightsManifest": manifest}))
    (tmp_path / f"{stem}.bin").write_bytes(b"".join(a.astype(np.float32).tobytes() for a in tensors.values()))
    return read_weights(tmp_path / f"{stem}.json")


def _pool_attr(k, s, padding):
    return {"ksize": {"list": {"i": ["1", str(k[0]), str(k[1]), "1"]}},
            "strides": {"list": {"i": ["1", str(s[0]), str(s[1]), "1"]}}, "padding": {"s": _b64(padding)}}


def test_avgpool_addn_biasadd_matmul_against_numpy(tmp_path):
    """Issue 29's ops, each against a loop in numpy: VALID and SAME average pools (SAME divides by the pixels
    inside the image), AddN of three, a standalone BiasAdd on the last axis, MatMul with and without transposes."""
    rng = np.random.default_rng(2)
    bias, m = rng.normal(size=(3,)), rng.normal(size=(3, 4))
    nodes = [{"name": "x", "op": "Placeholder"}, {"name": "bias", "op": "Const"}, {"name": "m", "op": "Const"},
             {"name": "valid", "op": "AvgPool", "input": ["x"], "attr": _pool_attr((2, 3), (2, 3), "VALID")},
             {"name": "same", "op": "AvgPool", "input": ["x"], "attr": _pool_attr((3, 3), (2, 2), "SAME")},
             {"name": "sum3", "op": "AddN", "input": ["x", "x", "x"]},
             {"name": "biased", "op": "BiasAdd", "input": ["x", "bias"]},
             {"name": "flat", "op": "Placeholder"},
             {"name": "mm", "op": "MatMul", "input": ["flat", "m"]},
             {"name": "mmt", "op": "MatMul", "input": ["m", "flat"],
              "attr": {"transpose_a": {"b": True}, "transpose_b": {"b": True}}}]
    g, weights = _graph(tmp_path, nodes, {"bias": bias, "m": m})
    x = rng.normal(size=(1, 5, 7, 3)).astype(np.float32)
    flat = rng.normal(size=(2, 3)).astype(np.float32)
    out = evaluate(g, weights, {"x": torch.from_numpy(x), "flat": torch.from_numpy(flat)},
                   ["valid", "same", "sum3", "biased", "mm", "mmt"])
    valid = np.array([[[x[0, 2 * i:2 * i + 2, 3 * j:3 * j + 3, c].mean() for c in range(3)] for j in range(2)]
                      for i in range(2)])[None]
    # SAME, k 3 s 2 on 5 x 7: outputs 3 x 4, total padding (3-1)*2+3-5 = 2 -> 1 before (H), (4-1)*2+3-7 = 2 -> 1 (W)
    same = np.array([[[x[0, max(2 * i - 1, 0):2 * i + 2, max(2 * j - 1, 0):2 * j + 2, c].mean() for c in range(3)]
                      for j in range(4)] for i in range(3)])[None]
    np.testing.assert_allclose(out["valid"].numpy(), valid, atol=1e-6)
    np.testing.assert_allclose(out["same"].numpy(), same, atol=1e-6)
    np.testing.assert_allclose(out["sum3"].numpy(), 3 * x, atol=1e-6)
    np.testing.assert_allclose(out["biased"].numpy(), x + bias.astype(np.float32), atol=1e-6)
    np.testing.assert_allclose(out["mm"].numpy(), flat @ m.astype(np.float32), atol=1e-5)
    np.testing.assert_allclose(out["mmt"].numpy(), (m.astype(np.float32).T @ flat.T), atol=1e-5)


@pytest.mark.parametrize("size,k,stride,out_size", [(4, 2, 2, 8), (3, 3, 2, 6), (4, 3, 1, 4)])
def test_conv2d_backprop_input_against_a_scatter_loop(tmp_path, size, k, stride, out_size):
    """Conv2DBackpropInput (TF's transposed conv, filter H W out in, SAME): every input pixel scatters its filter
    into the full ((n-1)*s + k) output, which is cropped by the forward SAME conv's leading padding."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(k, k, 2, 3)).astype(np.float32)
    sizes = np.array([1, out_size, out_size, 2], np.float32)  # stored int32 upstream; values are what count
    attr = {"strides": {"list": {"i": ["1", str(stride), str(stride), "1"]}}, "padding": {"s": _b64("SAME")}}
    nodes = [{"name": "x", "op": "Placeholder"}, {"name": "sizes", "op": "Const"}, {"name": "w", "op": "Const"},
             {"name": "t", "op": "Conv2DBackpropInput", "input": ["sizes", "w", "x"], "attr": attr}]
    g, weights = _graph(tmp_path, nodes, {"sizes": sizes, "w": w})
    x = rng.normal(size=(1, size, size, 3)).astype(np.float32)
    got = evaluate(g, weights, {"x": torch.from_numpy(x)}, ["t"])["t"].numpy()
    full_n = (size - 1) * stride + k
    full = np.zeros((full_n, full_n, 2), np.float64)
    for i in range(size):
        for j in range(size):
            for a in range(k):
                for b in range(k):
                    full[i * stride + a, j * stride + b] += w[a, b] @ x[0, i, j]  # (out, in) @ (in,)
    lead = max((size - 1) * stride + k - out_size, 0) // 2
    np.testing.assert_allclose(got[0], full[lead:lead + out_size, lead:lead + out_size], atol=1e-5)


def test_scalar_quantised_weight_is_read_and_a_bad_quantisation_is_named(tmp_path):
    """A shape-[] uint8-quantised weight (as in the package's rvm.json) used to be a bare TypeError: it is read as a
    0-d tensor of value * scale + min; a quantisation that cannot be applied is a GraphError naming the weight."""
    def write(quant):
        manifest = [{"paths": ["q.bin"], "weights": [
            {"name": "clip/y", "shape": [], "dtype": "float32", "quantization": quant},
            {"name": "v", "shape": [2], "dtype": "float32", "quantization": {"dtype": "uint8", "min": -1.0,
                                                                            "scale": 0.5}}]}]
        (tmp_path / "q.json").write_text(json.dumps({"modelTopology": {"node": []}, "weightsManifest": manifest}))
        (tmp_path / "q.bin").write_bytes(bytes([6, 4, 10]))
        return read_weights(tmp_path / "q.json")[1]

    weights = write({"dtype": "uint8", "min": 1, "scale": 1, "original_dtype": "float32"})
    assert weights["clip/y"].shape == () and weights["clip/y"].dtype == torch.float32
    assert weights["clip/y"].item() == 7.0  # 6 * 1 + 1
    assert weights["v"].tolist() == [1.0, 4.0]  # [4, 10] * 0.5 - 1
    with pytest.raises(GraphError, match=r"q\.json: weight 'clip/y' \(shape \[\].*cannot be decoded"):
        write({"dtype": "uint8", "min": 1})  # no scale
    with pytest.raises(GraphError, match="'clip/y'.*cannot be decoded"):
        write({"dtype": "uint8", "min": 1, "scale": "half"})
