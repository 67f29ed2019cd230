"""Perceptual metrics from local weights: LPIPS (Zhang et al. 2018) through the `lpips` package.

LPIPS needs two sets of weights: its linear heads (`lin0..lin4`), which the `lpips` wheel ships, and an ImageNet
backbone (AlexNet for `net="alex"`, the field's default and the one papers report; VGG-16 for `net="vgg"`). Nothing is
downloaded: the backbone is torchvision's own file, read from where torchvision caches it
(`torch.hub.get_dir()/checkpoints/`, i.e. `$TORCH_HOME/hub/checkpoints/`, default `~/.cache/torch/hub/checkpoints/`).
A missing file is a `PerceptualWeightsMissing` naming the file, that folder and the URL to fetch it from on a
connected machine; a file that does not fit is a `PerceptualWeightsError` naming the keys.

Conventions (as the fidelity metrics, see fidelity.py): inputs are uint8 (N, C, H, W) images (float model outputs in
[0, 1] are rounded to uint8 first); one value per image, then the mean over images, exact under DDP (image ids).
Images are mapped to [-1, 1] as LPIPS expects. LPIPS is an RGB metric: one-channel images (gray sets, and the
rounded MATLAB-Y plane with `channels="y"`) are repeated to three channels, the usual way gray images are scored
with LPIPS, so `channels` selects what is scored exactly as it does for PSNR/SSIM.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from benchmark.metrics.fidelity import _PerImageMean, _prepare

# net -> torchvision's file name for its ImageNet weights: the name torchvision itself caches it under
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
BACKBONE_URL = "https://download.pytorch.org/models/{}"
NETS = tuple(BACKBONE_FILES)


class PerceptualWeightsMissing(FileNotFoundError):
    """A perceptual metric's backbone file is not where torchvision keeps it; the message says where and how."""


class PerceptualWeightsError(ValueError):
    """A backbone file that does not fit the network (missing, unexpected or mis-shaped keys, or not a state dict)."""


def backbone_path(net: str = "alex") -> Path:
    """The torchvision backbone file LPIPS(`net`) reads; PerceptualWeightsMissing when it is absent."""
    if net not in BACKBONE_FILES:
        raise ValueError(f"LPIPS net {net!r}: use one of {NETS}")
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / BACKBONE_FILES[net]
    if not path.is_file():
        url = BACKBONE_URL.format(BACKBONE_FILES[net])
        raise PerceptualWeightsMissing(
            f"LPIPS({net}) needs the torchvision ImageNet backbone {BACKBONE_FILES[net]}, not found at {path}. "
            f"Nothing is downloaded at run time: on a connected machine fetch {url} and put it in {folder} "
            f"(torchvision's cache: $TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints)")
    return path


def network(net: str = "alex") -> nn.Module:
    """lpips.LPIPS(`net`) with the wheel's heads and the local torchvision backbone, in eval mode, no gradients.
    Built once per file (path, mtime, size): every metric of a run shares it."""
    path = backbone_path(net)
    st = path.stat()
    return _network(net, str(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _network(net: str, path: str, mtime_ns: int, size: int) -> nn.Module:
    import lpips  # imported here: it pulls in torchvision, and only LPIPS runs need it

    # pretrained=True: the heads from the wheel; pnet_rand=True: torchvision builds the backbone without fetching
    # its weights (it would download them), they are loaded from the local file below
    with warnings.catch_warnings():  # lpips 0.1.4 calls torchvision with its deprecated `pretrained=` argument
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    load_backbone(model.net, path)
    return model.eval().requires_grad_(False)


def load_backbone(slices: nn.Module, path: str | os.PathLike) -> None:
    """Load torchvision's `features.N.*` tensors into lpips' `sliceK.N.*` (the same layer N, split in slices),
    strictly: every slice tensor must be in the file with its shape, and the file's `features.*` tensors must all
    be used (`classifier.*` is the part LPIPS drops)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unreadable file: name it
        raise PerceptualWeightsError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict):
        raise PerceptualWeightsError(f"{path}: expected a torchvision state dict, got {type(state).__name__}")
    wanted = {name: f"features.{name.split('.', 1)[1]}" for name in slices.state_dict()}  # sliceK.N.p -> features.N.p
    own = slices.state_dict()
    missing = [src for src in wanted.values() if src not in state]
    shapes = [f"{src} {tuple(state[src].shape)} (expected {tuple(own[dst].shape)})" for dst, src in wanted.items()
              if src in state and tuple(state[src].shape) != tuple(own[dst].shape)]
    unexpected = sorted(k for k in state if k.startswith("features.") and k not in set(wanted.values()))
    if missing or shapes or unexpected:
        parts = [f"missing keys {missing}" if missing else "", f"mis-shaped keys {shapes}" if shapes else "",
                 f"unexpected keys {unexpected}" if unexpected else ""]
        raise PerceptualWeightsError(f"{path} does not fit the LPIPS backbone: {'; '.join(p for p in parts if p)}")
    slices.load_state_dict({dst: state[src] for dst, src in wanted.items()}, strict=True)


def lpips_values(model: nn.Module, preds: torch.Tensor, target: torch.Tensor, channels: str = "rgb") -> torch.Tensor:
    """Per-image LPIPS of uint8 (or [0, 1] float) images with a built network -> (N,) float64."""
    p, t = _prepare(preds, target, channels)
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for a, b in zip(p, t):  # one image at a time: the sets mix sizes, and a whole batch of big images is memory
            a, b = (_to_lpips_input(x, device) for x in (a, b))
            out.append(float(model(a, b).reshape(())))
    return torch.tensor(out, dtype=torch.float64)


def _to_lpips_input(img: torch.Tensor, device) -> torch.Tensor:
    """uint8 (C, H, W) -> float32 (1, 3, H, W) in [-1, 1]; one channel repeated to three."""
    x = img.to(device=device, dtype=torch.float32)[None] / 127.5 - 1.0
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def lpips(preds: torch.Tensor, target: torch.Tensor, channels: str = "rgb", net: str = "alex") -> torch.Tensor:
    """Per-image LPIPS (lower is better), shape (N,) float64."""
    return lpips_values(network(net), preds, target, channels)


class LPIPS(_PerImageMean):
    """Mean per-image LPIPS (AlexNet by default), exact under DDP like PSNR/SSIM. The network is built (and its file
    checked) when the metric is made, so a missing file fails before any image is restored."""

    higher_is_better = False
    net_name = "alex"

    def __init__(self, channels: str = "rgb", net: str | None = None, **kwargs):
        super().__init__(channels, **kwargs)
        # a submodule, so the metric's .to(device) moves it; shared by every metric of the run (see `network`)
        self.net = network(net or self.net_name)

    def update(self, preds: torch.Tensor, target: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        self.add_values(lpips_values(self.net, preds, target, self.channels), ids)


class LPIPSVGG(LPIPS):
    net_name = "vgg"


METRICS = {"lpips": LPIPS}  # the fidelity board's perceptual columns (LPIPSVGG: Python API only, no column)
