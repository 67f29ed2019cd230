"""AFD-Module (Peng et al., "Lightweight Adaptive Feature De-drifting for Compressed Image Classification") and the
feature-level baselines it is compared with: DDP (`degradation_prior`) and transfer learning (`jpeg_finetune`).

A feature de-drifter repairs the features a *frozen* classifier computes at one shallow layer (the "tap"): it takes
the degraded features and the compressed image and returns features close to those of the clean image. It is
trained without labels (MSE to the clean image's features at the tap) and inserted into the classifier with a
forward hook (`DeDrifted`), so the rest of the classifier is untouched.

AFD-Module (Sec. III-B/C):
- FDE-Net: RGB -> YCbCr, 8x8 block DCT (Eq. 3, orthonormal), the coefficients of one frequency of one colour
  channel regrouped into one channel (224x224 -> 192x28x28), three stages of 1x1 convolutions (no mixing across
  blocks), a sigmoid: the Feature Drifting Map, one value per block and feature channel, filled block-wise
  (nearest) into the feature grid. `guide` variants for Tables II/III: `pixels` (the 8x8x3 image blocks, no DCT),
  `shuffled_dct` (each block's 192 coefficients in a fixed random order, so a channel no longer holds one
  frequency), `none` (FE-Net alone); `pool_guide=True` is the authors' release: the map is pooled to one value
  per channel (no spatial variation).
- FE-Net: a light U-Net of RepConv blocks (1x1->3x3, 3x3->1x1 and 1x1 branches, summed, ReLU) at widths
  16/32/64 (the release's), additive skips; its output is a residual, weighted by the FDM and added to the
  degraded features (then ReLU where the tap's features are post-ReLU, as the release does).
- `reparameterize()` folds every RepConv block into one 3x3 convolution (Eq. 4-8). The 1x1 that opens the
  1x1->3x3 branch has no bias: a bias there would be zero-padded differently from the folded kernel's input, and
  the fold would be inexact at the borders.

Sizes: with 64 feature channels (ResNet-50 after the first ReLU) the deploy form has 0.114 M parameters (paper
Table VII: 0.11 M) and adds 0.35 GMACs at 224x224 (paper: 0.36 "GFLOPs" next to ResNet-50's 4.12); the release's
concatenating U-Net would cost 0.51 GMACs, over the paper's figure, hence the additive skips (our choice,
documented here and in the README).

DDP (Wang et al., CVPR 2020) as `degradation_prior`: a feature de-drifter without the frequency guide -- three
pairs of 3x3 convolutions (64/32/16 wide) over the features concatenated with the image, their outputs
concatenated and fused by a 1x1 convolution; the AFD authors' re-implementation's layout (0.117 M parameters with
64 channels; the AFD paper's Table VII prints 0.14 M), here as a residual.

`jpeg_finetune`: the "transfer learning" baseline of Table X, the classifier itself fine-tuned on JPEG images
(with labels); it replaces the classifier, so it also changes clean-image accuracy.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.registry import Preset, register

BLOCK = 8
RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                             [-0.168736, -0.331264, 0.5],
                             [0.5, -0.418688, -0.081312]])  # JPEG (JFIF) full-range BT.601


# ---- taps: where a de-drifter sits in a classifier -------------------------------------------------------------------
@dataclass(frozen=True)
class Tap:
    layers: tuple[str, ...]  # module names (inside `ImageClassifier.model`); the first that exists is used
    channels: int
    nonneg: bool  # the layer's output is post-ReLU
    description: str


# Table I's depths. ResNet-50: first conv, first ReLU, first bottleneck of layer1, layer1 (torchvision names, then
# timm's). RepVGG-A2 (timm): stage0 (= timm's stem), first block of stage1, stage1, stage2. shapes-cnn: the same
# pattern on the embedded classifier (conv, its conv-BN-ReLU, the second block, the first strided block).
TAPS: dict[str, dict[str, Tap]] = {
    "resnet50": {
        "D1": Tap(("conv1",), 64, False, "first conv"),
        "D2": Tap(("relu", "act1"), 64, True, "first ReLU"),
        "D3": Tap(("layer1.0",), 256, True, "first bottleneck of layer1"),
        "D4": Tap(("layer1",), 256, True, "layer1"),
    },
    "repvgg_a2": {
        "D1": Tap(("stem",), 64, True, "stage0"),
        "D2": Tap(("stages.0.0",), 96, True, "first block of stage1"),
        "D3": Tap(("stages.0",), 96, True, "stage1"),
        "D4": Tap(("stages.1",), 192, True, "stage2"),
    },
    # EfficientNet-Lite0/1/2 (timm names; the stem is fixed at 32 channels, block 0 at 16, stage 1 at 24 for all
    # three): the stem (conv_stem + BN + ReLU6, stride 2) is the D1/D2 analogue, block 0 and stage 1 D3/D4
    **{f"efficientnet_lite{k}": {
        "D1": Tap(("bn1",), 32, True, "stem (conv_stem + BN + ReLU6)"),
        "D2": Tap(("bn1",), 32, True, "stem (conv_stem + BN + ReLU6)"),
        "D3": Tap(("blocks.0",), 16, False, "block 0 (depthwise-separable, linear output)"),
        "D4": Tap(("blocks.1",), 24, False, "stage 1 (linear output)"),
    } for k in range(3)},
    "shapes-cnn": {
        "D1": Tap(("features.0.0",), 16, False, "first conv"),
        "D2": Tap(("features.0",), 16, True, "first conv-BN-ReLU"),
        "D3": Tap(("features.1",), 16, True, "second conv-BN-ReLU"),
        "D4": Tap(("features.2",), 32, True, "first strided block"),
    },
}


def backbone_family(name: str) -> str:
    """`timm:resnet50`, `resnet50.a1_in1k`, `resnet50` -> `resnet50` (the key of `TAPS`)."""
    return name.split(":")[-1].split(".")[0]


def resolve_tap(backbone: str, depth: str) -> Tap:
    taps = TAPS.get(backbone_family(backbone))
    if taps is None:
        raise ValueError(f"no tap table for backbone {backbone!r} (known: {', '.join(TAPS)}); give a layer name "
                         f"and its channels instead")
    if depth not in taps:
        raise ValueError(f"depth {depth!r} for {backbone}: use one of {', '.join(taps)}")
    return taps[depth]


def _inner(classifier: nn.Module) -> nn.Module:
    """The network whose module names the taps use (`ImageClassifier` wraps it in `.model`)."""
    from lightning_modules.task_models.classifier import ImageClassifier

    return classifier.model if isinstance(classifier, ImageClassifier) else classifier


def find_layer(classifier: nn.Module, layers: tuple[str, ...] | str) -> tuple[str, nn.Module]:
    names = (layers,) if isinstance(layers, str) else layers
    modules = dict(_inner(classifier).named_modules())
    for name in names:
        if name in modules:
            return name, modules[name]
    shallow = [n for n in modules if n and n.count(".") < 2][:12]
    raise ValueError(f"the classifier has no layer {' or '.join(map(repr, names))}; its layers include {shallow}")


class _TapReached(Exception):
    """Stops the classifier once the tap has run (training needs the features only)."""


class DeDrifted(nn.Module):
    """A frozen classifier with a feature de-drifter inserted after one named layer (a forward hook).

    `forward(x)` -> logits; `features(x, dedrift=True)` -> the (de-drifted) features at the tap, without running the
    rest of the classifier. The classifier's parameters are frozen and it stays in eval mode (BN statistics fixed)."""

    def __init__(self, classifier: nn.Module, dedrifter: nn.Module, layers: tuple[str, ...] | str):
        super().__init__()
        self.classifier, self.dedrifter = classifier.eval(), dedrifter
        for p in classifier.parameters():
            p.requires_grad_(False)
        self.layer, module = find_layer(classifier, layers)
        self._image: torch.Tensor | None = None
        self._dedrift_on, self._stop, self._calls, self._captured = True, False, 0, None
        self._handle = module.register_forward_hook(self._hook)

    def detach_hook(self) -> None:
        """Leave the classifier as it was (the hook removed)."""
        self._handle.remove()

    def train(self, mode: bool = True):
        super().train(mode)
        self.classifier.eval()  # frozen: its BN layers keep their statistics
        return self

    def _hook(self, module, inputs, output):
        if self._image is None:  # the classifier called on its own: leave it alone
            return None
        self._calls += 1
        if self._calls > 1:
            raise RuntimeError(f"layer {self.layer!r} runs more than once per forward pass; choose a layer that runs "
                               f"once (a module reused inside the network cannot hold a de-drifter)")
        if self._dedrift_on:
            output = self.dedrifter(output, self._image)
        if self._stop:
            self._captured = output
            raise _TapReached
        return output

    def _run(self, x: torch.Tensor, apply: bool, stop: bool):
        self._image, self._dedrift_on, self._stop, self._calls, self._captured = x, apply, stop, 0, None
        try:
            out = self.classifier(x)
        except _TapReached:
            out = self._captured
        finally:
            self._image, self._captured = None, None
        if self._calls == 0:
            raise RuntimeError(f"layer {self.layer!r} did not run in the classifier's forward pass")
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, apply=True, stop=False)

    def features(self, x: torch.Tensor, dedrift: bool = True) -> torch.Tensor:
        return self._run(x, apply=dedrift, stop=True)

    def logits(self, x: torch.Tensor, dedrift: bool = True) -> torch.Tensor:
        """The whole classifier's output, with the de-drifter applied or bypassed."""
        return self._run(x, apply=dedrift, stop=False)


class FoldDeDrifted(DeDrifted):
    """`DeDrifted` for cross-fitted de-drifters (`FoldDeDrifters`): `forward(x, labels)`; an image's fold is its
    class index mod the number of copies (one photo per class in the ImageNet sample: a split by image) and only
    picks the copy -- the loss never sees a label. Evaluation (eval mode) routes each image to the copy of its own
    fold, which never learnt from it; training routes it to the next fold's copy (the one that may learn from it)."""

    routes_by_label = True

    def _route(self, labels: torch.Tensor | None) -> None:
        if labels is None:
            raise ValueError("a cross-fitted de-drifter picks its copy by the image's fold: pass the labels")
        k = self.dedrifter.n_folds
        folds = labels.to(self.dedrifter.device_hint()).long() % k
        self.dedrifter.route = (folds + 1) % k if self.training else folds

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(x, True, labels)

    def features(self, x: torch.Tensor, dedrift: bool = True, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._routed(x, dedrift, labels, stop=True)

    def logits(self, x: torch.Tensor, dedrift: bool = True, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._routed(x, dedrift, labels, stop=False)

    def _routed(self, x: torch.Tensor, dedrift: bool, labels: torch.Tensor | None, stop: bool) -> torch.Tensor:
        """The network up to the tap (stop) or the logits, through the copy each image's fold picks."""
        if not dedrift:
            return self._run(x, apply=False, stop=stop)
        self._route(labels)
        try:
            return self._run(x, apply=True, stop=stop)
        finally:
            self.dedrifter.route = None


# ---- FDE-Net: frequency guide ----------------------------------------------------------------------------------------
def dct_matrix(n: int = BLOCK) -> torch.Tensor:
    """Orthonormal DCT-II basis D[u, x] = c(u) cos((2x + 1) u pi / 2n): Eq. 3's 1/sqrt(2N) C(i) C(j) for N = 8."""
    x = torch.arange(n, dtype=torch.float64)
    d = torch.cos((2 * x[None, :] + 1) * x[:, None] * math.pi / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def ycbcr(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> YCbCr, level-shifted to be centred on 0 (JPEG's -128 before its DCT)."""
    m = RGB_TO_YCBCR.to(x)
    return torch.einsum("ij,njhw->nihw", m, x) - torch.tensor([0.5, 0.0, 0.0], device=x.device,
                                                                dtype=x.dtype).view(1, 3, 1, 1)


def image_blocks(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3*64, ceil(H/8), ceil(W/8)): channel c*64 + 8*i + j holds pixel (i, j) of colour c of
    every block; a partial last block is completed by edge replication, as JPEG encoders do."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % BLOCK, (-w) % BLOCK
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return F.pixel_unshuffle(x, BLOCK)


def block_dct(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> the regrouped block DCT of its YCbCr: channel c*64 + 8*u + v is frequency (u, v) of colour c."""
    blocks = image_blocks(ycbcr(x))
    n, _, hb, wb = blocks.shape
    d = dct_matrix().to(blocks)
    basis = torch.kron(d, d)  # [(u, v), (i, j)] = D[u, i] D[v, j]
    coeffs = torch.einsum("fp,ncphw->ncfhw", basis, blocks.view(n, 3, BLOCK * BLOCK, hb, wb))
    return coeffs.reshape(n, 3 * BLOCK * BLOCK, hb, wb)


def shuffled_dct(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Table III's control: every block's 192 coefficients in its own fixed random order (seeded by the block's
    position), so one channel mixes frequencies."""
    coeffs = block_dct(x)
    n, c, hb, wb = coeffs.shape
    order = _block_orders(hb * wb, c, seed).to(coeffs.device)  # (blocks, 192)
    flat = coeffs.flatten(2).transpose(1, 2)  # (n, blocks, 192)
    return flat.gather(2, order.expand(n, -1, -1)).transpose(1, 2).reshape(n, c, hb, wb)


@functools.lru_cache(maxsize=8)
def _block_orders(blocks: int, coeffs: int, seed: int) -> torch.Tensor:
    """One fixed random order of the coefficients per block (drawn once per block grid, not per forward)."""
    g = torch.Generator().manual_seed(seed)
    return torch.argsort(torch.rand(blocks, coeffs, generator=g), dim=1)


GUIDES = {"dct": block_dct, "pixels": lambda x: image_blocks(ycbcr(x)), "shuffled_dct": shuffled_dct}


class FDENet(nn.Module):
    """Guide input (192 x H/8 x W/8) -> Feature Drifting Map in (0, 1), `channels` x H/8 x W/8 (or x 1 x 1 pooled)."""

    def __init__(self, channels: int, guide: str = "dct", widths: tuple[int, int] = (128, 128), pool: bool = False):
        super().__init__()
        if guide not in GUIDES:
            raise ValueError(f"guide {guide!r}: use one of {', '.join(GUIDES)} or none")
        self.guide, self.pool = guide, pool
        c = 3 * BLOCK * BLOCK
        # 1x1 convolutions only: each block's estimate depends on that block alone (K = 1 in the paper)
        self.stage1 = nn.Sequential(nn.Conv2d(c, widths[0], 1), nn.ReLU(inplace=True))
        self.stage2 = nn.Sequential(nn.Conv2d(widths[0], widths[1], 1), nn.ReLU(inplace=True))
        self.stage3 = nn.Conv2d(widths[1], channels, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = self.stage2(self.stage1(GUIDES[self.guide](image)))
        if self.pool:
            y = F.adaptive_avg_pool2d(y, 1)
        return torch.sigmoid(self.stage3(y))


def blockwise_fill(fdm: torch.Tensor, image_size: tuple[int, int], feature_size: tuple[int, int]) -> torch.Tensor:
    """Map a per-block map (N, C, ceil(H/8), ceil(W/8)) onto a feature grid of size (h, w): each feature position
    takes the value of the 8x8 image block it lies in (a block covers 8/stride x 8/stride features)."""
    if fdm.shape[-2:] == (1, 1):
        return fdm
    (big_h, big_w), (h, w) = image_size, feature_size
    rows = torch.clamp((torch.arange(h, device=fdm.device) * big_h) // (h * BLOCK), max=fdm.shape[-2] - 1)
    cols = torch.clamp((torch.arange(w, device=fdm.device) * big_w) // (w * BLOCK), max=fdm.shape[-1] - 1)
    return fdm.index_select(-2, rows).index_select(-1, cols)


# ---- FE-Net: RepConv U-Net ------------------------------------------------------------------------------------------
class RepConv(nn.Module):
    """Three branches (1x1->3x3, 3x3->1x1, 1x1), summed; `reparameterize()` folds them into one 3x3 convolution."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.branch_13 = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.Conv2d(cout, cout, 3, padding=1))
        self.branch_31 = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.Conv2d(cout, cout, 1))
        self.branch_1 = nn.Conv2d(cin, cout, 1)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.fused(x)
        return self.branch_13(x) + self.branch_31(x) + self.branch_1(x)

    @torch.no_grad()
    def fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.branch_13  # Eq. 4-5: W' = W3x3 (x) TRANS(W1x1)
        k13 = torch.einsum("edhw,dc->echw", b.weight, a.weight[:, :, 0, 0])
        c, d = self.branch_31
        k31 = torch.einsum("ed,dchw->echw", d.weight[:, :, 0, 0], c.weight)
        bias31 = d.weight[:, :, 0, 0] @ c.bias + d.bias
        k1 = F.pad(self.branch_1.weight, (1, 1, 1, 1))  # Eq. 6: the 1x1 kernel at the centre of a 3x3
        return k13 + k31 + k1, b.bias + bias31 + self.branch_1.bias  # Eq. 7-8

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        weight, bias = self.fused_kernel()
        self.fused = nn.Conv2d(self.cin, self.cout, 3, padding=1).to(weight)
        self.fused.weight.copy_(weight)
        self.fused.bias.copy_(bias)
        del self.branch_13, self.branch_31, self.branch_1
        self.branch_13 = self.branch_31 = self.branch_1 = None


class FENet(nn.Module):
    """U-Net of RepConv blocks over the features; returns the residual (the last block has no activation)."""

    def __init__(self, channels: int, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        w1, w2, w3 = widths
        self.inc, self.down1, self.down2 = RepConv(channels, w1), RepConv(w1, w2), RepConv(w2, w3)
        self.up2, self.up1, self.out = RepConv(w3, w2), RepConv(w2, w1), RepConv(w1, channels)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.inc(f))
        x2 = F.relu(self.down1(F.max_pool2d(x1, 2)))
        x3 = F.relu(self.down2(F.max_pool2d(x2, 2)))
        y = F.relu(self.up2(x3))
        y = F.relu(self.up1(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False) + x2))
        return self.out(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False) + x1)


def _pad_to(f: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = f.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(f, (0, pw, 0, ph), mode="replicate") if ph or pw else f


class FeatureDeDrifter(nn.Module):
    """What every feature de-drifter shares: where it plugs in (`backbone`, `layers`) and how its output ends."""

    def __init__(self, backbone: str, depth: str, channels: int | None, layer: str | None, nonneg: bool | None):
        super().__init__()
        tap = resolve_tap(backbone, depth) if layer is None else None
        self.backbone, self.depth = backbone, depth if layer is None else "custom"
        self.layers = tap.layers if tap else (layer,)
        self.channels = tap.channels if tap else channels
        self.nonneg = tap.nonneg if tap else bool(nonneg)
        if not self.channels:
            raise ValueError("a custom layer needs its number of channels")

    def _finish(self, f: torch.Tensor) -> torch.Tensor:
        return F.relu(f) if self.nonneg else f


class AFDNet(FeatureDeDrifter):
    """(degraded features at the tap, compressed [0, 1] RGB image) -> de-drifted features."""

    def __init__(self, backbone: str = "shapes-cnn", depth: str = "D2", guide: str = "dct", pool_guide: bool = False,
                 widths: tuple[int, int, int] = (16, 32, 64), fde_widths: tuple[int, int] = (128, 128),
                 channels: int | None = None, layer: str | None = None, nonneg: bool | None = None):
        super().__init__(backbone, depth, channels, layer, nonneg)
        self.fe = FENet(self.channels, tuple(widths))
        self.fde = None if guide == "none" else FDENet(self.channels, guide, tuple(fde_widths), pool_guide)
        out = self.fe.out  # start as the identity: never worse than the plain backbone
        last = (out.branch_1.weight, out.branch_1.bias, *out.branch_13[1].parameters(), *out.branch_31[1].parameters())
        for p in last:
            nn.init.zeros_(p)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h, w = features.shape[-2:]
        residual = self.fe(_pad_to(features, 4))[..., :h, :w]
        if self.fde is not None:
            residual = residual * blockwise_fill(self.fde(image), image.shape[-2:], (h, w))
        return self._finish(features + residual)

    def reparameterize(self) -> None:
        for m in self.modules():
            if isinstance(m, RepConv):
                m.reparameterize()


class DegradationPrior(FeatureDeDrifter):
    """DDP's feature de-drifting module (see the module docstring)."""

    def __init__(self, backbone: str = "shapes-cnn", depth: str = "D2", widths: tuple[int, int, int] = (64, 32, 16),
                 channels: int | None = None, layer: str | None = None, nonneg: bool | None = None):
        super().__init__(backbone, depth, channels, layer, nonneg)
        w1, w2, w3 = widths

        def pair(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))

        self.g1, self.g2, self.g3 = pair(self.channels + 3, w1), pair(w1, w2), pair(w2, w3)
        self.merge = nn.Conv2d(w1 + w2 + w3, self.channels, 1)  # not `fuse`: a timm reparam hook name
        nn.init.zeros_(self.merge.weight)  # start as the identity
        nn.init.zeros_(self.merge.bias)

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        img = F.interpolate(image, size=features.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        x1 = self.g1(torch.cat([features, img], 1))
        x2 = self.g2(x1)
        x3 = self.g3(x2)
        return self._finish(features + self.merge(torch.cat([x1, x2, x3], 1)))


class FoldDeDrifters(nn.Module):
    """Cross-fitted de-drifters (the in-domain protocol): `folds` copies of one de-drifter, copy k trained only on
    images whose fold (class index mod `folds`) is not k and used only on images whose fold is k, so no image is
    corrected by a copy that saw it. `route` (one fold per image of the batch) is set by `FoldDeDrifted`."""

    def __init__(self, copies: list[FeatureDeDrifter]):
        super().__init__()
        self.folds = nn.ModuleList(copies)
        first = copies[0]
        self.backbone, self.depth, self.layers = first.backbone, first.depth, first.layers
        self.channels, self.nonneg, self.n_folds = first.channels, first.nonneg, len(copies)
        self.route: torch.Tensor | None = None

    def device_hint(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        route = self.route
        if route is None or len(route) != features.shape[0]:
            raise RuntimeError("a cross-fitted de-drifter needs each image's fold (FoldDeDrifted routes them)")
        out = features
        for j, copy in enumerate(self.folds):
            sel = (route == j).nonzero().flatten()
            if sel.numel():
                out = out.index_copy(0, sel, copy(features[sel], image[sel]))
        return out

    def reparameterize(self) -> None:
        for copy in self.folds:
            if hasattr(copy, "reparameterize"):
                copy.reparameterize()


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) of the softmax outputs, averaged over the batch (temperature 1): the label-free
    logit distillation loss (the frozen network on the clean image teaches the corrected one on the JPEG)."""
    return F.kl_div(F.log_softmax(student_logits.float(), 1), F.log_softmax(teacher_logits.float(), 1),
                    log_target=True, reduction="batchmean")


def check_backbone(module: L.LightningModule, name: str) -> None:
    """A de-drifter (or fine-tuned classifier) serves the backbone it was trained for, and no other."""
    if backbone_family(name) != backbone_family(module.net.backbone):
        raise ValueError(f"{module.method_name}.{module.preset_name} was trained for {module.net.backbone}, not "
                         f"{name}: pick its preset for {name} or train one (`benchmark train --method "
                         f"{module.method_name} --task-model {name}`)")


# ---- the LightningModules --------------------------------------------------------------------------------------------
class DeDriftModule(L.LightningModule):
    """Trains a feature de-drifter label-free (MSE between de-drifted and clean features at the tap) inside a frozen
    classifier, and plugs it into one for evaluation. The network is an argument; the classifier is attached."""

    kind = "features"

    def __init__(self, net: FeatureDeDrifter, lr: float = 1e-4, lr_milestones: tuple = (), lr_gamma: float = 0.2):
        super().__init__()
        self.net = net
        self.lr, self.lr_milestones, self.lr_gamma = lr, tuple(lr_milestones), lr_gamma
        self.method_name, self.preset_name, self.weights_path = "dedrifter", "", ""
        self.plugged: DeDrifted | None = None
        self.loss_name = "feature-mse"  # or "logit-kl": KL(frozen net on the clean image || de-drifted net on JPEG)

    def attach(self, classifier: nn.Module, name: str, deploy: bool = True) -> DeDrifted:
        """The classifier with this de-drifter inserted; deploy=True re-parameterises it first (inference)."""
        check_backbone(self, name)
        if deploy and hasattr(self.net, "reparameterize"):
            self.net.reparameterize()
        wrap = FoldDeDrifted if isinstance(self.net, FoldDeDrifters) else DeDrifted
        self.plugged = wrap(classifier, self.net, self.net.layers)
        return self.plugged

    def _fold_kw(self, batch) -> dict:
        """The labels a cross-fitted de-drifter routes by (batch[2]); nothing for a single one."""
        return {"labels": batch[2]} if isinstance(self.net, FoldDeDrifters) else {}

    def loss(self, batch) -> torch.Tensor:
        """The training loss of one batch (corrupted or clean inputs, clean images) -- never a label."""
        corrupted, clean, kw = batch[0], batch[1], self._fold_kw(batch)
        if self.loss_name == "logit-kl":
            with torch.no_grad():
                teacher = self.plugged.logits(clean, dedrift=False)
            return distillation_kl(self.plugged.logits(corrupted, **kw), teacher)
        if self.loss_name not in ("feature-mse", "mse"):
            raise ValueError(f"loss {self.loss_name!r}: a de-drifter trains with feature-mse or logit-kl")
        with torch.no_grad():
            target = self.plugged.features(clean, dedrift=False)
        return F.mse_loss(self.plugged.features(corrupted, **kw), target)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        corrupted, clean, kw = batch[0], batch[1], self._fold_kw(batch)
        target = self.plugged.features(clean, dedrift=False)
        before = F.mse_loss(self.plugged.features(corrupted, dedrift=False), target)
        after = F.mse_loss(self.plugged.features(corrupted, **kw), target)
        # the feature error removed, in dB (> 0: closer to the clean features than the plain backbone)
        self.log("val_feature_gain_db", 10 * torch.log10(before / after.clamp_min(1e-12)), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        if not self.lr_milestones:
            return opt
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(self.lr_milestones), gamma=self.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class FineTunedClassifier(nn.Module):
    """A classifier of `backbone`'s architecture whose weights were fine-tuned on JPEG images."""

    def __init__(self, backbone: str = "shapes-cnn"):
        super().__init__()
        from lightning_modules.task_models import SHAPES_TASK_MODELS

        self.backbone = backbone
        if backbone in SHAPES_TASK_MODELS:
            self.classifier = SHAPES_TASK_MODELS[backbone].build()
        else:
            from lightning_modules.task_models.classifier import build_classifier

            self.classifier = build_classifier(backbone, "random")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class FineTuneModule(L.LightningModule):
    """Transfer learning: cross-entropy on labelled JPEG images, starting from the classifier's own weights."""

    kind = "classifier"

    def __init__(self, net: FineTunedClassifier, lr: float = 1e-4, lr_milestones: tuple = (), lr_gamma: float = 0.2):
        super().__init__()
        self.net = net
        self.lr, self.lr_milestones, self.lr_gamma = lr, tuple(lr_milestones), lr_gamma
        self.method_name, self.preset_name, self.weights_path = "jpeg_finetune", "", ""
        self.labels = True  # False: label-free distillation from the frozen classifier's clean predictions
        self.teacher: nn.Module | None = None

    def attach(self, classifier: nn.Module, name: str, deploy: bool = True) -> nn.Module:
        """The fine-tuned classifier replaces `classifier` (same architecture, its own weights); in training the
        frozen `classifier` is the distillation teacher."""
        check_backbone(self, name)
        if not deploy:
            self.__dict__["teacher"] = classifier.eval()  # not a submodule: never trained nor saved
        return self.net.eval() if deploy else self.net

    def training_step(self, batch, batch_idx):
        logits = self.net(batch[0])  # (float JPEG image, clean image, label)
        if self.labels:
            loss = F.cross_entropy(logits, batch[2])
        else:
            with torch.no_grad():
                teacher = self.teacher.to(batch[1].device)(batch[1])
            loss = distillation_kl(logits, teacher)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        pred = self.net(batch[0]).argmax(1)
        if self.labels:
            self.log("val_acc", (pred == batch[2]).float().mean(), prog_bar=True)
        else:  # label-free: agreement with the frozen classifier on the clean image
            agree = pred == self.teacher.to(batch[1].device)(batch[1]).argmax(1)
            self.log("val_agreement", agree.float().mean(), prog_bar=True)

    configure_optimizers = DeDriftModule.configure_optimizers

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.net.modules():  # BN statistics stay those of the clean pre-training (fine-tuning a few
            if isinstance(m, nn.BatchNorm2d):  # hundred steps would otherwise re-estimate them on JPEG alone)
                m.eval()
        return self


class FoldTunedLayers(nn.Module):
    """Table X's transfer learning where labelled images are also the evaluation set: `folds` copies of a packaged
    classifier's first layers (stem and the first `n_stages` stages), copy k fine-tuned on the JPEG images of the
    *other* folds. An image's fold is its class index mod `folds` (one photo per class in the ImageNet sample: a
    split by image), so no image is ever scored by a copy that saw it. Only these layers are stored; the rest is
    the frozen classifier it is attached to (its 1000-way head included: a head tuned on half the classes would
    learn that half's prior)."""

    def __init__(self, backbone: str = "efficientnet_lite0", n_stages: int = 3, folds: int = 2):
        super().__init__()
        from lightning_modules.task_models.efficientnet_lite import EFFICIENTNET_LITE, build_efficientnet_lite

        if backbone not in EFFICIENTNET_LITE:
            raise ValueError(f"fold-tuned layers are defined for {', '.join(EFFICIENTNET_LITE)}, not {backbone!r}")
        self.backbone, self.n_stages, self.n_folds = backbone, n_stages, folds
        self.folds = nn.ModuleList()
        for _ in range(folds):
            m = build_efficientnet_lite(backbone, "random")[0].model
            self.folds.append(nn.ModuleDict(dict(conv_stem=m.conv_stem, bn1=m.bn1,
                                                 blocks=nn.Sequential(*m.blocks[:n_stages]))))

    def init_from(self, classifier: nn.Module) -> None:
        """Every copy starts from the classifier's own weights (transfer learning)."""
        model = _inner(classifier)
        for fold in self.folds:
            fold.conv_stem.load_state_dict(model.conv_stem.state_dict())
            fold.bn1.load_state_dict(model.bn1.state_dict())
            fold.blocks.load_state_dict(nn.Sequential(*model.blocks[:self.n_stages]).state_dict())


class FoldRouted(nn.Module):
    """A frozen classifier whose first layers are fold k's tuned copy for images of fold k: `forward(x, labels)`
    (the label only picks the copy; every copy predicts over all classes). `training=True` routes each image to
    the copy that will *not* score it (the one that may learn from it)."""

    routes_by_label = True

    def __init__(self, classifier: nn.Module, tuned: FoldTunedLayers):
        super().__init__()
        self.classifier, self.tuned = classifier.eval(), tuned
        for p in classifier.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.classifier.eval()
        for m in self.tuned.modules():  # BN statistics stay the clean pre-training's (as FineTuneModule)
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        wrapper, model = self.classifier, _inner(self.classifier)
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        x = (x - wrapper.mean.to(x.dtype)) / wrapper.std.to(x.dtype)
        k = self.tuned.n_folds
        folds = labels.to(x.device).long() % k
        if self.training:
            folds = (folds + 1) % k  # learn from an image only in a copy that never scores it
        out = None
        for j, layers in enumerate(self.tuned.folds):
            sel = (folds == j).nonzero().flatten()
            if sel.numel() == 0:
                continue
            f = layers["blocks"](layers["bn1"](layers["conv_stem"](x[sel])))
            for block in model.blocks[self.tuned.n_stages:]:
                f = block(f)
            logits = model.forward_head(model.bn2(model.conv_head(f)))
            if out is None:
                out = logits.new_zeros(x.shape[0], logits.shape[1])
            out = out.index_copy(0, sel, logits)
        return out


class FoldFineTuneModule(L.LightningModule):
    """Trains `FoldTunedLayers` with cross-entropy on labelled JPEG images (every copy at once, each image feeding
    only copies that will not score it) and attaches them for evaluation."""

    kind = "classifier"

    def __init__(self, net: FoldTunedLayers, lr: float = 1e-4, lr_milestones: tuple = (), lr_gamma: float = 0.2):
        super().__init__()
        self.net = net
        self.lr, self.lr_milestones, self.lr_gamma = lr, tuple(lr_milestones), lr_gamma
        self.method_name, self.preset_name, self.weights_path = "jpeg_finetune", "", ""
        self.routed: FoldRouted | None = None
        self.labels = True  # False: label-free distillation (the label, if any, only picks the fold copy)

    def attach(self, classifier: nn.Module, name: str, deploy: bool = True) -> FoldRouted:
        check_backbone(self, name)
        self.routed = FoldRouted(classifier, self.net)
        return self.routed.eval() if deploy else self.routed

    def training_step(self, batch, batch_idx):
        logits = self.routed(batch[0], batch[2])
        if self.labels:
            loss = F.cross_entropy(logits, batch[2])
        else:
            with torch.no_grad():
                teacher = self.routed.classifier(batch[1])  # the frozen classifier on the clean crop
            loss = distillation_kl(logits, teacher)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):  # scored by the copies that did not learn from these images
        self.routed.eval()
        pred = self.routed(batch[0], batch[2]).argmax(1)
        if self.labels:
            self.log("val_acc", (pred == batch[2]).float().mean(), prog_bar=True)
        else:
            self.log("val_agreement", (pred == self.routed.classifier(batch[1]).argmax(1)).float().mean(),
                     prog_bar=True)
        self.routed.train(self.training)

    configure_optimizers = DeDriftModule.configure_optimizers


def _finetune_module(net: nn.Module, **kwargs) -> L.LightningModule:
    """The LightningModule of a `jpeg_finetune` network: cross-fitted fold copies or a whole fine-tuned classifier."""
    return (FoldFineTuneModule if isinstance(net, FoldTunedLayers) else FineTuneModule)(net, **kwargs)


_finetune_module.kind = "classifier"


# ---- registration ---------------------------------------------------------------------------------------------------
_AFD_RECIPE = "benchmark train --method afd"
_ABLATIONS = {  # Tables II-III on the embedded classifier, plus the release's pooled guide
    "compact_pixels": dict(guide="pixels"),
    "compact_shuffled": dict(guide="shuffled_dct"),
    "compact_pooled": dict(pool_guide=True),
    "compact_fenet": dict(guide="none"),
}


# The fair trial (benchmark/README.md, "A fair trial for the feature de-drifters"): every run on one protocol of
# benchmark/cli/train.py's PROTOCOLS (the same crops seen, crop size, QF set and schedule), after Lite0's stem.
# preset -> (kwargs beyond the method's lite0 ones, `benchmark train` flags, what differs)
_OOD = "out of domain (BSDS500 train + scikit-image photos)"
_IN = "in domain (the ImageNet sample, 2-fold by class parity)"
_TRIAL = {
    "afd": {
        "lite0_ood": ({}, "--protocol out-of-domain", f"{_OOD}, label-free feature MSE"),
        "lite0_in": ({"folds": 2}, "--protocol in-domain", f"{_IN}, label-free feature MSE"),
        "lite0_ood_clean20": ({}, "--protocol out-of-domain --clean-share 0.2",
                              f"{_OOD}, 20 % of the crops clean with the identity target"),
        "lite0_ood_kl": ({}, "--protocol out-of-domain --loss logit-kl",
                         f"{_OOD}, KL to the frozen classifier's clean predictions instead of feature MSE"),
        "lite0_ood_d3": ({"depth": "D3"}, "--protocol out-of-domain --depth D3", f"{_OOD}, the tap after block 0"),
        "lite0_ood_qf10": ({}, "--protocol out-of-domain --qf-set 10", f"{_OOD}, one model for QF 10 only"),
    },
    "degradation_prior": {
        "lite0_ood": ({}, "--protocol out-of-domain", f"{_OOD}, label-free feature MSE"),
        "lite0_in": ({"folds": 2}, "--protocol in-domain", f"{_IN}, label-free feature MSE"),
    },
    "jpeg_finetune": {
        "lite0_ood": ({"folds": 1}, "--protocol out-of-domain",
                      f"{_OOD}, distilled from the frozen classifier's clean predictions (no labels)"),
        "lite0_in_labels": ({"folds": 2}, "--protocol in-domain --labels labels", f"{_IN}, with labels"),
        "lite0_in_distil": ({"folds": 2}, "--protocol in-domain --labels none", f"{_IN}, distilled (no labels)"),
    },
}


def _trial_presets(method: str, lite0: dict) -> dict[str, Preset]:
    return {name: Preset(kwargs={**lite0, **kw}, weights=f"{method}_{name}.pt",
                         description=f"fair trial: {what}; `benchmark train --method {method} --preset lite0 {flags} "
                                     f"--save-at 0.25,0.5,1 --out {method}_{name}.pt`")
            for name, (kw, flags, what) in _TRIAL[method].items()}


@register(
    "afd",
    presets={
        "compact": Preset(kwargs=dict(backbone="shapes-cnn", depth="D2"), weights="afd_compact.pt",
                          description=f"shapes-cnn after its first ReLU; shipped; retrain with `{_AFD_RECIPE}`"),
        **{name: Preset(kwargs=dict(backbone="shapes-cnn", depth="D2", **kw), weights=f"afd_{name}.pt",
                        description=f"ablation ({', '.join(f'{k}={v}' for k, v in kw.items())}); "
                                    f"`{_AFD_RECIPE} --preset {name}`")
           for name, kw in _ABLATIONS.items()},
        "paper": Preset(kwargs=dict(backbone="resnet50", depth="D2"), weights="afd_paper.pt",
                        description="ResNet-50 after the first ReLU (D2); train with "
                                    "`benchmark train --config afd_paper.yaml` (needs the ResNet-50 ImageNet weights)"),
        "lite0": Preset(kwargs=dict(backbone="efficientnet_lite0", depth="D2"), weights="afd_lite0.pt",
                        description="the paper-size AFD (0.11 M at 64 ch) after EfficientNet-Lite0's stem, trained "
                                    "label-free on BSDS500 train + scikit-image photos; shipped; retrain with "
                                    "`benchmark train --method afd --preset lite0`"),
        **_trial_presets("afd", dict(backbone="efficientnet_lite0", depth="D2")),
        "paper_repvgg": Preset(kwargs=dict(backbone="repvgg_a2", depth="D1"), weights="afd_paper_repvgg.pt",
                               description="RepVGG-A2 after stage0 (D1); train with "
                                           "`benchmark train --config afd_paper.yaml --preset paper_repvgg`"),
    },
    description="AFD-Module: DCT-guided RepConv U-Net de-drifting a frozen classifier's shallow features (Peng et al.)",
    module_cls=DeDriftModule,
)
def build_afd(folds: int | None = None, **kwargs) -> AFDNet | FoldDeDrifters:
    return AFDNet(**kwargs) if folds is None else FoldDeDrifters([AFDNet(**kwargs) for _ in range(folds)])


@register(
    "degradation_prior",
    presets={
        "compact": Preset(kwargs=dict(backbone="shapes-cnn", depth="D2"), weights="degradation_prior_compact.pt",
                          description="shapes-cnn after its first ReLU; shipped; "
                                      "retrain with `benchmark train --method degradation_prior`"),
        "lite0": Preset(kwargs=dict(backbone="efficientnet_lite0", depth="D2"), weights="degradation_prior_lite0.pt",
                        description="after EfficientNet-Lite0's stem, trained label-free on BSDS500 train + "
                                    "scikit-image photos; shipped; `benchmark train --method degradation_prior "
                                    "--preset lite0`"),
        **_trial_presets("degradation_prior", dict(backbone="efficientnet_lite0", depth="D2")),
        "paper": Preset(kwargs=dict(backbone="resnet50", depth="D2"), weights="degradation_prior_paper.pt",
                        description="ResNet-50 after the first ReLU; train with "
                                    "`benchmark train --config afd_paper.yaml --method degradation_prior`"),
    },
    description="DDP feature de-drifting module (Wang et al., CVPR 2020), the AFD paper's feature baseline",
    module_cls=DeDriftModule,
)
def build_degradation_prior(folds: int | None = None, **kwargs) -> DegradationPrior | FoldDeDrifters:
    return DegradationPrior(**kwargs) if folds is None else \
        FoldDeDrifters([DegradationPrior(**kwargs) for _ in range(folds)])


@register(
    "jpeg_finetune",
    presets={
        "compact": Preset(kwargs=dict(backbone="shapes-cnn"), weights="jpeg_finetune_compact.pt",
                          description="shapes-cnn fine-tuned on JPEG scenes; shipped; "
                                      "retrain with `benchmark train --method jpeg_finetune`"),
        "lite0": Preset(kwargs=dict(backbone="efficientnet_lite0", n_stages=3, folds=2),
                        weights="jpeg_finetune_lite0.pt",
                        description="EfficientNet-Lite0's stem and first 3 stages fine-tuned on JPEG images of the "
                                    "ImageNet sample, 2-fold by class parity (no image scored by a copy that saw "
                                    "it); `benchmark train --method jpeg_finetune --preset lite0 --train-dir "
                                    "imagenet-flat:DIR`"),
        **_trial_presets("jpeg_finetune", dict(backbone="efficientnet_lite0", n_stages=3)),
        "paper": Preset(kwargs=dict(backbone="resnet50"), weights="jpeg_finetune_paper.pt",
                        description="ResNet-50 fine-tuned on JPEG ImageNet images (Table X); "
                                    "`benchmark train --method jpeg_finetune --preset paper --train-dir IMAGENET`"),
    },
    description="transfer-learning baseline: the classifier fine-tuned on JPEG images (AFD paper Table X)",
    module_cls=_finetune_module,
)
def build_jpeg_finetune(backbone: str = "shapes-cnn", folds: int | None = None,
                        n_stages: int = 3) -> FineTunedClassifier | FoldTunedLayers:
    return FineTunedClassifier(backbone) if folds is None else FoldTunedLayers(backbone, n_stages, folds)

