"""An op-by-op PyTorch evaluator of TF.js graph models: the straightforward reference the native detector ports
(`lightning_modules/task_models/centernet.py`, `nanodet.py`) must equal. Test code only: the product runs the ports."""
from __future__ import annotations

import base64

import torch
import torch.nn.functional as F

from lightning_modules.task_models.tfjs import GraphError


def _s(attr, key, default=None):
    v = attr.get(key)
    return base64.b64decode(v["s"]).decode() if v and "s" in v else default


def _ints(attr, key):
    return [int(i) for i in attr.get(key, {}).get("list", {}).get("i", [])]


def _same_pad(x: torch.Tensor, k: tuple[int, int], stride: tuple[int, int], dil=(1, 1)) -> torch.Tensor:
    """TF 'SAME' padding of an NCHW tensor (extra pixel at the bottom/right)."""
    pads = []
    for size, kk, s, d in zip(x.shape[-2:][::-1], k[::-1], stride[::-1], dil[::-1]):
        total = max((-(-size // s) - 1) * s + (kk - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _conv(x, w, attr, depthwise: bool):
    """NHWC conv with TF weights (HWIO, or HW C M depthwise) -> NHWC."""
    stride, dil = _ints(attr, "strides")[1:3], (_ints(attr, "dilations") or [1, 1, 1, 1])[1:3]
    x = x.permute(0, 3, 1, 2)
    kh, kw = w.shape[:2]
    if depthwise:
        c, m = w.shape[2], w.shape[3]
        weight, groups = w.permute(2, 3, 0, 1).reshape(c * m, 1, kh, kw), c
    else:
        weight, groups = w.permute(3, 2, 0, 1), 1
    if _s(attr, "padding") == "SAME":
        x = _same_pad(x, (kh, kw), stride, dil)
    return F.conv2d(x, weight, stride=stride, dilation=dil, groups=groups).permute(0, 2, 3, 1)


def _avg_pool(x, attr):
    """NHWC average pool; SAME pads with nothing counted (TF divides by the pixels inside the image)."""
    k, s = _ints(attr, "ksize")[1:3], _ints(attr, "strides")[1:3]
    x = x.permute(0, 3, 1, 2)
    if _s(attr, "padding") == "SAME":
        ones = _same_pad(torch.ones_like(x[:1, :1]), k, s)
        y = F.avg_pool2d(_same_pad(x, k, s), k, s) / F.avg_pool2d(ones, k, s)
    else:
        y = F.avg_pool2d(x, k, s)
    return y.permute(0, 2, 3, 1)


def _conv_transpose(x, w, out_sizes, attr):
    """TF Conv2DBackpropInput (a transposed conv): filter H W out in, output NHWC of `out_sizes`. The full
    transposed output ((n - 1) * s + k) is cropped like the forward SAME conv pads: pad_total // 2 at the start."""
    stride = _ints(attr, "strides")[1:3]
    y = F.conv_transpose2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), stride=stride)
    crops = []
    for full, out, n, kk, st in zip(y.shape[-2:], out_sizes[1:3], x.shape[1:3], w.shape[:2], stride):
        if _s(attr, "padding") == "SAME":
            total = max((n - 1) * st + kk - out, 0)
        else:  # VALID: out = (n - 1) * s + k, nothing cropped
            total = 0
        crops.append(slice(total // 2, total // 2 + out))
    return y[..., crops[0], crops[1]].permute(0, 2, 3, 1)


def _fused(y, ins, attr):
    ops = [base64.b64decode(s).decode() for s in attr.get("fused_ops", {}).get("list", {}).get("s", [])]
    for i, op in enumerate(ops):
        if op == "BiasAdd":
            y = y + ins[2]
        elif op == "Relu":
            y = F.relu(y)
        elif op == "Relu6":
            y = F.relu6(y)
        elif op == "LeakyRelu":
            y = F.leaky_relu(y, attr.get("leakyrelu_alpha", {}).get("f", 0.2))
        elif op == "Prelu":
            y = torch.where(y > 0, y, y * ins[3])
        else:
            raise GraphError(f"fused op {op!r} not supported")
    return y


def _resize_bilinear(x, size, attr):
    """NHWC bilinear resize with TF's align_corners / half_pixel_centers conventions."""
    h, w = int(size[0]), int(size[1])
    x = x.permute(0, 3, 1, 2)
    if attr.get("align_corners", {}).get("b"):
        y = F.interpolate(x, (h, w), mode="bilinear", align_corners=True)
    elif attr.get("half_pixel_centers", {}).get("b"):
        y = F.interpolate(x, (h, w), mode="bilinear", align_corners=False)
    else:  # legacy TF: src = dst * in / out, no half-pixel offset
        ih, iw = x.shape[-2:]
        ys = torch.arange(h, dtype=torch.float32) * (ih / h)
        xs = torch.arange(w, dtype=torch.float32) * (iw / w)
        y0, x0 = ys.floor().long().clamp(max=ih - 1), xs.floor().long().clamp(max=iw - 1)
        y1, x1 = (y0 + 1).clamp(max=ih - 1), (x0 + 1).clamp(max=iw - 1)
        wy, wx = (ys - y0).view(1, 1, h, 1), (xs - x0).view(1, 1, 1, w)
        top = x[..., y0, :][..., x0] * (1 - wx) + x[..., y0, :][..., x1] * wx
        bot = x[..., y1, :][..., x0] * (1 - wx) + x[..., y1, :][..., x1] * wx
        y = top * (1 - wy) + bot * wy
    return y.permute(0, 2, 3, 1)


def _strided_slice(x, begin, end, strides, attr):
    bm, em = int(attr.get("begin_mask", {}).get("i", 0)), int(attr.get("end_mask", {}).get("i", 0))
    sm = int(attr.get("shrink_axis_mask", {}).get("i", 0))
    if int(attr.get("ellipsis_mask", {}).get("i", 0)) or int(attr.get("new_axis_mask", {}).get("i", 0)):
        raise GraphError("StridedSlice with ellipsis/new-axis masks not supported")
    idx = []
    for i, (b, e, s) in enumerate(zip(begin.tolist(), end.tolist(), strides.tolist())):
        if sm >> i & 1:
            idx.append(int(b))
        else:
            idx.append(slice(None if bm >> i & 1 else int(b), None if em >> i & 1 else int(e), int(s)))
    return x[tuple(idx)]


def evaluate(graph: dict, weights: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor],
             outputs: list[str]) -> dict[str, torch.Tensor]:
    """Run the graph on `inputs` (placeholder name -> tensor) and return the named `outputs` (node or node:k)."""
    nodes = {n["name"]: n for n in graph["modelTopology"]["node"]}
    values: dict[str, object] = {}

    def get(ref: str):
        name, _, k = ref.lstrip("^").partition(":")
        v = value(name)
        return v[int(k) if k else 0] if isinstance(v, tuple) else v

    def value(name: str):
        if name in values:
            return values[name]
        if name not in nodes:
            raise GraphError(f"node {name!r} is not in the graph (a newer package version renamed it?)")
        n = nodes[name]
        op, attr = n["op"], n.get("attr", {})
        ins = [get(i) for i in n.get("input", []) if not i.startswith("^")]
        if op == "Const":
            if name not in weights:
                raise GraphError(f"constant {name!r} has no tensor in the weights manifest")
            v = weights[name]
        elif op == "Placeholder":
            v = inputs[name]
        elif op in ("Identity",):
            v = ins[0]
        elif op in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
            v = _fused(_conv(ins[0], ins[1], attr, op != "_FusedConv2D"), ins, attr)
        elif op in ("Conv2D", "DepthwiseConv2dNative"):
            v = _conv(ins[0], ins[1], attr, op != "Conv2D")
        elif op in ("Add", "AddV2"):
            v = ins[0] + ins[1]
        elif op == "Sub":
            v = ins[0] - ins[1]
        elif op == "Mul":
            v = ins[0] * ins[1]
        elif op == "FloorDiv":
            v = torch.div(ins[0], ins[1], rounding_mode="floor")
        elif op == "FloorMod":
            v = torch.remainder(ins[0], ins[1])
        elif op == "Relu":
            v = F.relu(ins[0])
        elif op == "Relu6":
            v = F.relu6(ins[0])
        elif op == "LeakyRelu":
            v = F.leaky_relu(ins[0], attr["alpha"]["f"])
        elif op == "Sigmoid":
            v = torch.sigmoid(ins[0])
        elif op == "Mean":
            v = ins[0].mean(dim=[int(a) for a in ins[1].reshape(-1).tolist()],
                            keepdim=bool(attr.get("keep_dims", {}).get("b")))
        elif op == "ResizeBilinear":
            v = _resize_bilinear(ins[0], ins[1].tolist(), attr)
        elif op == "ConcatV2":
            v = torch.cat(ins[:-1], dim=int(ins[-1]))
        elif op == "MaxPool":
            k, s = _ints(attr, "ksize")[1:3], _ints(attr, "strides")[1:3]
            x = ins[0].permute(0, 3, 1, 2)
            if _s(attr, "padding") == "SAME":
                x = _same_pad(x, k, s).masked_fill(_same_pad(torch.ones_like(x[:1, :1]), k, s) == 0, float("-inf"))
            v = F.max_pool2d(x, k, s).permute(0, 2, 3, 1)
        elif op == "AvgPool":
            v = _avg_pool(ins[0], attr)
        elif op == "AddN":
            v = ins[0]
            for t in ins[1:]:
                v = v + t
        elif op == "BiasAdd":  # NHWC: the bias runs along the last axis
            v = ins[0] + ins[1]
        elif op == "MatMul":
            a = ins[0].T if attr.get("transpose_a", {}).get("b") else ins[0]
            b = ins[1].T if attr.get("transpose_b", {}).get("b") else ins[1]
            v = a @ b
        elif op == "Conv2DBackpropInput":
            v = _conv_transpose(ins[2], ins[1], [int(d) for d in ins[0].tolist()], attr)
        elif op == "Reshape":
            v = ins[0].reshape([int(d) for d in ins[1].tolist()])
        elif op == "Transpose":
            v = ins[0].permute([int(d) for d in ins[1].tolist()])
        elif op == "ExpandDims":
            v = ins[0].unsqueeze(int(ins[1]))
        elif op == "Equal":
            v = ins[0] == ins[1]
        elif op == "Cast":
            v = ins[0].to({"DT_FLOAT": torch.float32, "DT_INT32": torch.int32}[attr["DstT"]["type"]])
        elif op == "TopKV2":
            vals, idx = ins[0].topk(int(ins[1]), dim=-1, sorted=True)
            v = (vals, idx.to(torch.int32))
        elif op == "GatherV2":
            v = torch.index_select(ins[0], int(ins[2]), ins[1].reshape(-1).long()).reshape(
                *ins[0].shape[:int(ins[2])], *ins[1].shape, *ins[0].shape[int(ins[2]) + 1:])
        elif op == "StridedSlice":
            v = _strided_slice(ins[0], ins[1], ins[2], ins[3], attr)
        elif op in ("Pad", "PadV2"):
            pads = ins[1].tolist()
            flat = [p for pair in reversed(pads) for p in pair]
            v = F.pad(ins[0], flat, value=float(ins[2]) if op == "PadV2" else 0.0)
        elif op == "SplitV":
            sizes, axis = [int(s) for s in ins[1].tolist()], int(ins[2])
            v = tuple(torch.split(ins[0], sizes, dim=axis))
        elif op == "SparseToDense":
            idx, shape, vals, default = ins
            dense = torch.full([int(s) for s in shape.tolist()], float(default), dtype=vals.dtype)
            idx = idx.reshape(-1, len(shape)).long() if idx.ndim else idx.reshape(1, 1).long()
            dense[tuple(idx.T)] = vals
            v = dense
        else:
            raise GraphError(f"op {op!r} (node {name!r}) not supported")
        values[name] = v
        return v

    return {o: get(o) for o in outputs}
