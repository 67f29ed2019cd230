"""JARCAL: JPEG Artifacts Removal via Contrastive representation learning (Wang, Fu, Zhu, Zha, ECCV 2022), with its
two-stage training and the Table 5 ablation switches.

Networks (`JARCAL` is what restores an image; `MoCoAuxiliaries` only exists for stage-1 training):
- compression quality encoder (CQE, Sec. 3.1; `JARCAL.encoder`, returns [E0, E1, E2, E3]): a ResNet-18 trunk cut
  after its third stage -- a 3x3 stride-1 stem (E0 = the stem's output, full resolution, before its BN), BN, ReLU,
  3x3/2 max-pool, then three stages of `encoder_blocks` torchvision BasicBlocks (E1 at 1/2, E2 at 1/4, E3 at 1/8;
  64/64/128/256 channels at paper size). Its compression-quality representation is the global average of E3.
- multi-scale fusion (Sec. 3.2): every E_i is brought to `width` channels (a 1x1 conv where it has another width)
  and resized to the trunk's resolution (the input's size; nearest upsampling); EFFM (Eq. 3-4) = concat -> 1x1 conv -> LeakyReLU -> 3x3 conv:
  E1' = EFFM[E0, E1, E2], E2' = EFFM[E1, E2, E3]; E3' is the projected E3.
- restoration decoder: a 3x3 head conv, concat with E3', `n_mid` residual blocks at 2*width (4 at paper size), a
  1x1 conv to width (D); then three (invertible fusion module -> local recovery module) steps that take E3', E2', E1' in turn;
  a pyramid pooling block, a 1x1 output conv, global residual.
- invertible fusion module (INM, Eq. 5-7): F1 = E + phi1(D); F2 = D * exp(s(F1)) + phi3(F1); F = [F1, F2] with
  s = clamp * (2 sigmoid(phi2(F1)) - 1); phi1..3 are residual blocks (3x3 conv, LeakyReLU(0.1), 3x3 conv, + x).
  It is an affine coupling, hence invertible: `InvertibleFusion.inverse`.
- local recovery module: a 3x3 conv (2*width -> width) and `n_recovery[i]` RNAN groups; a group is RNAN's local
  residual attention block (trunk: 2 residual blocks; mask: residual block, 3x3/2 conv, 2 residual blocks, 6x6/2
  transposed conv, + skip, residual block, 1x1 conv, sigmoid; out = trunk * mask + input, then 2 residual blocks)
  followed by a 3x3 conv (RNAN's `_ResGroup`).
- stage-1 auxiliaries (`MoCoAuxiliaries`, not part of `JARCALModule.net`): the momentum key encoder, an optional
  projection head (and its momentum copy) and the MoCo queue of keys.

Layer counts come from the authors' release (GitHub wang-xi-1/JPEG, colour model in `Model_C/`), which we read
but did not copy:
- `network_E.py`: the CQE is torchvision's ResNet with BasicBlock, layers [2, 2, 2] used (layer4 never built),
  stem 3x3 stride 1 without bias, E0 = stem output before BN; the representation is avgpool(E3) flattened (256-d).
- `network_deblocker.py` (DeblockNet, nc=64, nb=2): E2, E3 projected by 1x1 convs (128->64, 256->64) after a
  nearest resize to the input size; EFFM ("AFF") = 1x1 conv + LeakyReLU(0.1) + 3x3 conv; head conv, concat with
  E3', mid1 = 2 residual blocks at 128 ch, mid2 = 2 residual blocks + 1x1 conv to 64; three InvBlocks (split
  64/64); m3/m2/m1 = 3x3 conv 128->64 + 2/4/4 RNAN groups; PyramidPooling (avg-pool 4/8/16/32, 1 channel each, 1x1
  bottleneck, LeakyReLU) before the output conv; input padded to a multiple of 8; `out + input`.
- `Invertible_block.py`: residual-block subnets (conv, LeakyReLU(0.1), conv, + x) and the soft clamp
  s = 0.8 * (2 sigmoid(H(y1)) - 1) on the log-scale.
- `common.py`: RNAN's ResAttModuleDownUpPlus with LeakyReLU(0.1) residual blocks, as described above.
- `builder.py` (MoCo): 256-d keys, queue K = 65540, momentum m = 0.999, temperature T = 0.07 (the paper gives no
  tau), no projection head (`mlp=False`; `proj_dim` adds a MoCo-v2 MLP head, training-only), InfoNCE as cross-entropy over [positive, queue] logits (the positive is
  in the denominator, as in MoCo; Eq. 2 as printed sums only the negatives there). No shuffle-BN (single device,
  as in the release where it is commented out).

Where the paper and the release disagree, or neither says, we decided (and say so):
- INM roles follow the paper's Eq. 5-6 (E gets the additive coupling E + phi1(D), D is scaled); the release calls
  InvBlock(D, E), i.e. the roles swapped. Same parameter count. The release's soft clamp (0.8) is kept: the paper's
  bare exp() is unbounded; `clamp=None` gives the bare Eq. 6.
- output conv: 1x1 (paper Sec. 3.2); the release uses a 3x3 conv (1,536 parameters more at paper size).
- pyramid pooling: kept from the release (the paper does not mention it); a pooling window larger than the feature
  map is shrunk to the map (the release would fail on inputs under 32 px).
- E0/E1 (64 ch) need no projection at paper size; at other widths every E_i with a width other than `width` gets
  a 1x1 conv. The projection is applied before the nearest resize (identical result: both are per-pixel).
- stage-1 patches: two sub-patches per crop at random offsets on the 8x8 JPEG grid of the crop (carbench's crops
  are compressed after cropping, so the crop origin is on the grid, and test images are compressed from their
  origin too); patch size `patch_size` or half the crop (a multiple of 8). Grid-aligned offsets also keep the grid
  phase from identifying an image.
- FFT loss (Eq. 9, after MIMO-UNet [45], which the paper cites): L1 (mean) between the real and imaginary parts of
  the unnormalised 2-D FFT (`torch.fft.fft2`, per channel) of prediction and target -- not the amplitude.
  Eq. 10: L = L1 + 0.1 * L_FFT. The pixel term honours `loss_name` (default "l1" = the paper's MAE).
- stage 2: Adam(1e-4, betas 0.9/0.999) with cosine annealing over the stage's steps (paper: T = 600 = all epochs),
  eta_min 0; stage 1: Adam(1e-3) (paper), constant unless `lr_milestones` are set.
- Table 5 "CQE not pre-trained" (model-2): the text says the network is trained "directly without removing the
  compression quality encoder, but without pre-training" ("two-stage joint training"), so the encoder starts from
  random initialisation and is trained jointly with the restorer on the restoration loss (BN in train mode); it
  has no stage 1 (`set_stage("encoder")` refuses: train it with stages ["restorer"]).
- Table 5 model-1 (no CQE): the encoder, EFFMs and INMs are removed (they only exist to consume its features); the
  head conv writes 2*width channels for the residual blocks and each recovery module's first conv reads D
  (width channels). Also trained with stages ["restorer"] only.
- Table 5 model-3(a) (`fusion="concat"`): each INM becomes concat(E, D) -> 3x3 conv (2w -> w) -> LeakyReLU ->
  3x3 conv (w -> w) -> LeakyReLU -> 3x3 conv (w -> 2w) (5 w x w conv-equivalents vs the INM's 6, "not much
  difference in parameters"); model-3(b) (`effm=False` too): no EFFM either, E1' and E2' are the projected,
  resized E1 and E2.
- Table 5 model-4: `fft_weight=0`.
- Training hints: the registry builds the LightningModule from the network alone, so the stage-1 settings (tau,
  momentum, queue size, projection head), the FFT weight and whether the encoder is pre-trained travel as plain
  attributes of `JARCAL` (no parameters, not in the state dict); `JARCALModule` reads them.

Presets:
- `paper`: the release's layout (colour, width 64, encoder 64/64/128/256 with 2 blocks per stage, 4 residual blocks
  at 128 ch, RNAN groups 2/4/4), the paper's 1x1 output conv, default initialisation.
- `compact` (CPU-sized; carbench's own decisions, not the paper's): the trunk runs at 1/4 resolution on the
  pixel-unshuffled image (`scale=4`: head conv on 48 channels, output conv to 48 channels + pixel shuffle, the
  global residual at full resolution; the encoder still sees the full-resolution image and its maps are pooled or
  upsampled to 1/4), width 32, no mid residual blocks, one RNAN group (in the last recovery module only; the first
  two are their 3x3 conv), the encoder at 1/4 width (16/16/32/64, one block per stage), an output conv initialised
  to zero (`zero_tail`: training starts at the identity -- with the default init the first ~100 of a short run's
  steps only unlearn a random residual), MoCo with m = 0.99 and a 1024-key queue (a few hundred stage-1 steps: at
  m = 0.999 the key encoder would still be ~75 % its initialisation).
- `paper_<ablation>`: Table 5 rows at paper size (no weights; train them).

Parameters: the deployed model is the restorer plus the CQE (both run at test time). The momentum encoder,
projection head and queue are training-only: not counted, and not part of `JARCALModule.net` (so not saved with the
network). `paper` has 13,882,435 parameters (encoder 2,775,104): 0.02 % over the 13.88 M that AFD's Table VII gives
for JARCAL; the release's DeblockNet, counted layer by layer, has 13,883,971 (its 3x3 output conv: 1,536 more).
`compact` has 568,864 (encoder 77,392). Table 5 presets: no_encoder 10,210,563; no_pretrain and no_fft 13,882,435;
concat 13,771,459; concat_no_effm 13,672,899.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from lightning_modules.registry import Preset, register
from lightning_modules.restorers.base import RestorerModule

SLOPE = 0.1  # LeakyReLU slope of the release's residual blocks


# ---- building blocks -------------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """x + conv3x3(LeakyReLU(conv3x3(x))): phi_1..3 of Eq. 5-6, the decoder's and RNAN's residual blocks."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(SLOPE, inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class QualityEncoder(nn.Module):
    """The compression quality encoder: ResNet-18 stem and three stages -> [E0 (1), E1 (1/2), E2 (1/4), E3 (1/8)]."""

    def __init__(self, in_channels: int = 3, widths=(64, 64, 128, 256), blocks=(2, 2, 2)):
        super().__init__()
        w = list(widths)
        self.stem = nn.Conv2d(in_channels, w[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = w[0]
        self.layer1 = self._layer(w[1], blocks[0], 1)
        self.layer2 = self._layer(w[2], blocks[1], 2)
        self.layer3 = self._layer(w[3], blocks[2], 2)
        self.out_channels, self.feature_dim = tuple(w), w[3]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(planes))
        mods = [BasicBlock(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        mods += [BasicBlock(planes, planes) for _ in range(1, n)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        e0 = self.stem(x)
        e1 = self.layer1(self.pool(self.relu(self.bn(e0))))
        e2 = self.layer2(e1)
        return [e0, e1, e2, self.layer3(e2)]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The compression-quality representation: global average of E3 (N x feature_dim), not normalised."""
        return self(x)[3].mean(dim=(2, 3))


class EFFM(nn.Module):
    """Encoder Feature Fusion Module (Eq. 3-4): [a, b, c] -> 1x1 conv -> LeakyReLU -> 3x3 conv."""

    def __init__(self, width: int, n_inputs: int = 3):
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(n_inputs * width, width, 1), nn.LeakyReLU(SLOPE, inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1))

    def forward(self, *feats: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat(feats, dim=1))


class InvertibleFusion(nn.Module):
    """Eq. 5-7: F1 = E + phi1(D); F2 = D * exp(s) + phi3(F1), s = clamp * (2 sigmoid(phi2(F1)) - 1); [F1, F2]."""

    def __init__(self, width: int, clamp: float | None = 0.8):
        super().__init__()
        self.phi1, self.phi2, self.phi3 = ResBlock(width), ResBlock(width), ResBlock(width)
        self.clamp = clamp

    def log_scale(self, f1: torch.Tensor) -> torch.Tensor:
        s = self.phi2(f1)
        return s if self.clamp is None else self.clamp * (2 * torch.sigmoid(s) - 1)

    def forward(self, e: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        f1 = e + self.phi1(d)
        f2 = d * torch.exp(self.log_scale(f1)) + self.phi3(f1)
        return torch.cat([f1, f2], dim=1)

    def inverse(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f1, f2 = f.chunk(2, dim=1)
        d = (f2 - self.phi3(f1)) * torch.exp(-self.log_scale(f1))
        return f1 - self.phi1(d), d


class ConcatFusion(nn.Module):
    """Table 5 model-3: concat(E, D) and convolutions instead of the INM (same 2*width output)."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.LeakyReLU(SLOPE, inplace=True),
                                  nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(SLOPE, inplace=True),
                                  nn.Conv2d(width, 2 * width, 3, padding=1))

    def forward(self, e: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([e, d], dim=1))


class LocalAttentionBlock(nn.Module):
    """RNAN's local residual attention block (ResAttModuleDownUpPlus): trunk * mask + x, then 2 residual blocks."""

    def __init__(self, c: int):
        super().__init__()
        self.head = ResBlock(c)
        self.trunk = nn.Sequential(ResBlock(c), ResBlock(c))
        self.mask_in = ResBlock(c)
        self.mask_down = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), ResBlock(c), ResBlock(c),
                                       nn.ConvTranspose2d(c, c, 6, stride=2, padding=2))
        self.mask_out = nn.Sequential(ResBlock(c), nn.Conv2d(c, c, 1), nn.Sigmoid())
        self.tail = nn.Sequential(ResBlock(c), ResBlock(c))

    def forward(self, x):
        x = self.head(x)
        m = self.mask_in(x)
        mask = self.mask_out(m + self.mask_down(m))
        return self.tail(self.trunk(x) * mask + x)


class RecoveryGroup(nn.Sequential):
    """RNAN's `_ResGroup`: a local attention block and a 3x3 conv (no outer skip, as in RNAN and the release)."""

    def __init__(self, c: int):
        super().__init__(LocalAttentionBlock(c), nn.Conv2d(c, c, 3, padding=1))


class PyramidPooling(nn.Module):
    """The release's pyramid pooling before the output conv: avg-pool at 4/8/16/32, 1x1 to one channel each,
    nearest upsampling, concat with the input, 1x1 bottleneck, LeakyReLU."""

    def __init__(self, c: int, scales=(4, 8, 16, 32), ct: int = 1):
        super().__init__()
        self.scales = tuple(scales)
        self.reduce = nn.ModuleList(nn.Conv2d(c, ct, 1, bias=False) for _ in self.scales)
        self.bottleneck = nn.Conv2d(c + len(self.scales) * ct, c, 1)
        self.act = nn.LeakyReLU(SLOPE, inplace=True)

    def forward(self, x, priors: torch.Tensor | None = None):
        """priors: the upsampled priors (N x scales x H x W) computed by `priors_of` on the whole image (a tile)."""
        h, w = x.shape[-2:]
        if priors is not None:
            return self.act(self.bottleneck(torch.cat([priors, x], dim=1)))
        priors = []
        for s, conv in zip(self.scales, self.reduce):
            k = min(s, h, w)
            p = F.leaky_relu(conv(F.avg_pool2d(x, k)), SLOPE)
            priors.append(F.interpolate(p, size=(h, w), mode="nearest"))
        return self.act(self.bottleneck(torch.cat(priors + [x], dim=1)))

    def reduced(self, x: torch.Tensor) -> torch.Tensor:
        """The 1-channel reductions at full size (N x scales x H x W): the reduce convs are 1x1 without bias, so
        pooling after them equals pooling before (up to float rounding) -- and they are local."""
        return torch.cat([conv(x) for conv in self.reduce], dim=1)

    def priors_of(self, reduced: torch.Tensor) -> torch.Tensor:
        """The upsampled priors of the whole image from its `reduced` maps (what `forward` concatenates)."""
        h, w = reduced.shape[-2:]
        return torch.cat([F.interpolate(F.leaky_relu(F.avg_pool2d(reduced[:, i:i + 1], min(s, h, w)), SLOPE),
                                        size=(h, w), mode="nearest") for i, s in enumerate(self.scales)], dim=1)


# ---- the network ----------------------------------------------------------------------------------------------------
class JARCAL(nn.Module):
    """The restoring network (encoder + compression-quality-guided restorer).

    use_encoder=False: Table 5 model-1; fusion="concat": model-3(a); fusion="concat", effm=False: model-3(b);
    encoder_pretrained=False: model-2; fft_weight=0: model-4. tau, momentum, queue_size, proj_dim, fft_weight and
    encoder_pretrained are training hints read by `JARCALModule` (no parameters)."""

    def __init__(self, in_channels: int = 3, width: int = 64, encoder_widths=(64, 64, 128, 256),
                 encoder_blocks=(2, 2, 2), n_mid: int = 4, n_recovery=(2, 4, 4), use_encoder: bool = True,
                 fusion: str = "inm", effm: bool = True, clamp: float | None = 0.8, pyramid: bool = True,
                 tail_kernel: int = 1, scale: int = 1, global_residual: bool = True, zero_tail: bool = False,
                 encoder_pretrained: bool = True, fft_weight: float = 0.1, tau: float = 0.07,
                 momentum: float = 0.999, queue_size: int = 65536, proj_dim: int | None = None):
        super().__init__()
        if fusion not in ("inm", "concat"):
            raise ValueError(f"JARCAL fusion must be 'inm' or 'concat', not {fusion!r}")
        if len(n_recovery) != 3:
            raise ValueError(f"JARCAL n_recovery gives the RNAN groups of the 3 recovery modules, not {n_recovery!r}")
        # the encoder reaches 1/8; RNAN's mask branch halves the trunk's resolution (1/scale) once
        self.in_channels, self.scale, self.size_multiple = in_channels, scale, max(8, 2 * scale)
        self.use_encoder, self.fusion_kind, self.effm_enabled = use_encoder, fusion, effm and use_encoder
        self.global_residual = global_residual
        # training hints (see the module docstring)
        self.encoder_pretrained = encoder_pretrained and use_encoder
        self.fft_weight, self.tau, self.momentum, self.queue_size, self.proj_dim = \
            fft_weight, tau, momentum, queue_size, proj_dim
        w = width
        self.encoder = None
        if use_encoder:
            self.encoder = QualityEncoder(in_channels, encoder_widths, encoder_blocks)
            self.proj = nn.ModuleList(nn.Identity() if c == w else nn.Conv2d(c, w, 1) for c in encoder_widths)
            self.effm = nn.ModuleList([EFFM(w), EFFM(w)]) if self.effm_enabled else None
            make = (lambda: InvertibleFusion(w, clamp)) if fusion == "inm" else (lambda: ConcatFusion(w))
            self.fusions = nn.ModuleList(make() for _ in range(3))
        c_img = in_channels * scale ** 2  # compact: the trunk runs on pixel-unshuffled input (1/scale)
        self.head = nn.Conv2d(c_img, w if use_encoder else 2 * w, 3, padding=1)
        self.mid = nn.Sequential(*[ResBlock(2 * w) for _ in range(n_mid)], nn.Conv2d(2 * w, w, 1))
        c_in = 2 * w if use_encoder else w
        self.recovery = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, w, 3, padding=1), *[RecoveryGroup(w) for _ in range(n)])
            for n in n_recovery)
        self.pyramid = PyramidPooling(w) if pyramid else nn.Identity()
        self.tail = nn.Conv2d(w, c_img, tail_kernel, padding=tail_kernel // 2)
        if zero_tail:  # start at the identity (the JPEG input): no random residual to unlearn first
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def guidance(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[E3', E2', E1'] at the trunk's size (x: a multiple of `size_multiple`): nearest upsampling (the
        release), average pooling where a map is larger than the trunk (scale > 1)."""
        size = (x.shape[-2] // self.scale, x.shape[-1] // self.scale)
        feats = [_resize(p(e), size) for p, e in zip(self.proj, self.encoder(x))]
        if self.effm_enabled:
            e1, e2 = self.effm[0](feats[0], feats[1], feats[2]), self.effm[1](feats[1], feats[2], feats[3])
        else:
            e1, e2 = feats[1], feats[2]
        return [feats[3], e2, e1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x  # RestorerModule pads already
        d = self.trunk(xp)
        state = getattr(self, "_tile_state", None)
        priors = None
        if state is not None and state[0] is not None:  # a tile: the whole image's pyramid priors, cut to it
            (y0, x0), s = state[1], self.scale
            priors = state[0][..., y0 // s:y0 // s + d.shape[-2], x0 // s:x0 // s + d.shape[-1]]
        out = self.tail(self.pyramid(d, priors) if priors is not None else self.pyramid(d))
        if self.scale > 1:
            out = F.pixel_shuffle(out, self.scale)
        if self.global_residual:
            out = out + xp
        return out[..., :h, :w]

    def trunk(self, xp: torch.Tensor) -> torch.Tensor:
        """Everything before the pyramid pooling (xp a multiple of size_multiple): local, at 1/scale."""
        d = self.head(F.pixel_unshuffle(xp, self.scale) if self.scale > 1 else xp)
        if self.use_encoder:
            guides = self.guidance(xp)
            d = torch.cat([d, guides[0]], dim=1)
        d = self.mid(d)
        for i, rec in enumerate(self.recovery):
            if self.use_encoder:
                d = self.fusions[i](guides[i], d)
            d = rec(d)
        return d

    # ---- tiling (lightning_modules/restorers/tiling.py) ------------------------------------------------------------
    def tile_context(self, x: torch.Tensor, tiled):
        """The pyramid pooling's windows (up to 32 trunk pixels, stretched by nearest upsampling to the whole
        image's size) make the output depend on the image size: its priors are computed on the whole image from
        the trunk's 1-channel reductions, run tile by tile (`tiled(fn, x, stride)`). None without the pyramid."""
        if not isinstance(self.pyramid, PyramidPooling):
            return None
        return self.pyramid.priors_of(tiled(lambda t: self.pyramid.reduced(self.trunk(t)), x, self.scale))


def _resize(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(f.shape[-2:]) == tuple(size):
        return f
    if f.shape[-2] > size[0]:  # sizes are multiples of each other (input padded to `size_multiple`)
        return F.avg_pool2d(f, (f.shape[-2] // size[0], f.shape[-1] // size[1]))  # deterministic backward
    return F.interpolate(f, size=size, mode="nearest")


# ---- stage 1: MoCo ----------------------------------------------------------------------------------------------------
class MoCoAuxiliaries(nn.Module):
    """Training-only parts of stage 1: momentum key encoder (+ projection head and its momentum copy) and the
    queue of keys (K x dim, a ring buffer written at `queue_ptr`)."""

    def __init__(self, encoder: QualityEncoder, queue_size: int = 65536, momentum: float = 0.999,
                 proj_dim: int | None = None):
        super().__init__()
        self.momentum = momentum
        fd = encoder.feature_dim
        self.projection = nn.Identity() if not proj_dim else nn.Sequential(
            nn.Linear(fd, fd), nn.ReLU(inplace=True), nn.Linear(fd, proj_dim))
        self.key_encoder = copy.deepcopy(encoder)
        self.key_projection = copy.deepcopy(self.projection)
        for p in [*self.key_encoder.parameters(), *self.key_projection.parameters()]:
            p.requires_grad_(False)
        dim = proj_dim or fd
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def query(self, encoder: QualityEncoder, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(encoder.embed(x)), dim=1)

    @torch.no_grad()
    def key(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projection(self.key_encoder.embed(x)), dim=1)

    @torch.no_grad()
    def momentum_update(self, encoder: QualityEncoder) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q (encoder and projection head; BN statistics are the key
        encoder's own, as in MoCo)."""
        pairs = [*zip(encoder.parameters(), self.key_encoder.parameters()),
                 *zip(self.projection.parameters(), self.key_projection.parameters())]
        for q, k in pairs:
            k.mul_(self.momentum).add_(q.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Dequeue the oldest keys and enqueue `keys` (wraps around; a batch larger than K keeps its last K)."""
        size = self.queue.shape[0]
        keys = keys.detach()[-size:].to(self.queue.dtype)
        n, ptr = keys.shape[0], int(self.queue_ptr)
        first = min(n, size - ptr)  # slices, not index_put: deterministic on every device
        self.queue[ptr:ptr + first] = keys[:first]
        self.queue[:n - first] = keys[first:]
        self.queue_ptr.fill_((ptr + n) % size)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 2 in MoCo's form: mean over queries of -log(exp(q.k+/tau) / (exp(q.k+/tau) + sum_j exp(q.k_j/tau)))
    with the negatives k_j the queue (K x dim). q, k: N x dim, L2-normalised."""
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.t()
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    return -logits.log_softmax(dim=1)[:, 0].mean()  # cross-entropy with label 0


def random_patches(x: torch.Tensor, size: int, align: int = 8) -> torch.Tensor:
    """One `size` x `size` patch per image at a random offset on the `align` grid (torch's RNG: seeded runs repeat)."""
    n, _, h, w = x.shape
    ys = torch.randint(0, (h - size) // align + 1, (n,)) * align
    xs = torch.randint(0, (w - size) // align + 1, (n,)) * align
    return torch.stack([x[i, :, y:y + size, xx:xx + size] for i, (y, xx) in enumerate(zip(ys.tolist(), xs.tolist()))])


# ---- stage 2: loss -------------------------------------------------------------------------------------------------
def fft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 9 (MIMO-UNet's form): mean |.| over the real and imaginary parts of FFT2(pred) - FFT2(target),
    unnormalised FFT over the last two axes of each channel."""
    diff = torch.fft.fft2(pred.float()) - torch.fft.fft2(target.float())
    return torch.view_as_real(diff).abs().mean()


# ---- LightningModule --------------------------------------------------------------------------------------------------
class JARCALModule(RestorerModule):
    """Stage `encoder` (Sec. 3.1): MoCo on two grid-aligned random sub-patches of each corrupted crop (query: the
    encoder, key: its momentum copy), InfoNCE with tau, Adam(ae_lr), manual optimisation. Stage `restorer`
    (Sec. 3.2-3.3): the encoder frozen (weights and BN statistics) unless the variant trains it jointly;
    L1 + fft_weight * L_FFT, Adam(lr) with cosine annealing over the stage's steps (`total_steps`, else the
    Trainer's max_steps; `lr_milestones` are ignored there).

    Logs: stage 1 `train_infonce`; `val_top1` (fraction of queries whose own positive is the most similar of the
    batch's keys), `val_qf_top1` (fraction whose most similar key from another image has the same QF: QF
    clustering) and `val_infonce`. Stage 2 `train_loss`, `train_pixel`, `train_fft`, `val_psnr`."""

    stages = ("encoder", "restorer")

    def __init__(self, net: JARCAL, lr: float = 1e-4, ae_lr: float = 1e-3, patch_size: int | None = None,
                 total_steps: int | None = None):
        super().__init__(net, lr=lr, loss="l1")
        self.ae_lr, self.patch_size, self.total_steps = ae_lr, patch_size, total_steps
        self.aux: MoCoAuxiliaries | None = None
        self.stage = "restorer"
        self.set_stage("restorer")

    # hints carried by the network (its preset)
    @property
    def tau(self) -> float:
        return self.net.tau

    @property
    def fft_weight(self) -> float:
        return self.net.fft_weight

    @property
    def encoder_frozen(self) -> bool:
        return self.net.encoder is not None and self.net.encoder_pretrained

    def build_auxiliaries(self) -> MoCoAuxiliaries:
        if self.aux is None:
            n = self.net
            self.aux = MoCoAuxiliaries(n.encoder, n.queue_size, n.momentum, n.proj_dim)
            self.aux.to(next(n.parameters()).device)
        return self.aux

    def set_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise ValueError(f"unknown JARCAL training stage {stage!r}; stages: {self.stages}")
        if stage == "encoder":
            if self.net.encoder is None:
                raise ValueError("this JARCAL variant has no compression quality encoder: stage 1 has nothing to "
                                 "train; train it with stages ['restorer']")
            if not self.net.encoder_pretrained:
                raise ValueError("this JARCAL variant trains its encoder jointly with the restorer from random "
                                 "initialisation (Table 5 model-2): train it with stages ['restorer']")
            self.build_auxiliaries()
        self.stage = stage
        self.automatic_optimization = stage == "restorer"
        if self.net.encoder is not None:
            self.net.encoder.requires_grad_(stage == "encoder" or not self.encoder_frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.stage == "restorer" and self.encoder_frozen:
            self.net.encoder.eval()  # frozen: BN statistics too, whatever Lightning switches
        return self

    # ---- stage 1 ----
    def _patch_size(self, x: torch.Tensor) -> int:
        """`patch_size`, else half the training crop (validation reuses the training patch size: its crops are
        larger)."""
        if self.patch_size:
            size = self.patch_size
        elif self.training or not getattr(self, "_train_patch", None):
            size = max(min(x.shape[-2:]) // 2 // 8 * 8, 8)
            if self.training:
                self._train_patch = size
        else:
            size = min(self._train_patch, min(x.shape[-2:]) // 8 * 8)
        return size

    def _contrast(self, x: torch.Tensor):
        size = self._patch_size(x)
        return random_patches(x, size), random_patches(x, size)

    def training_step(self, batch, batch_idx):
        if self.stage == "restorer":
            corrupted, clean = batch[0], batch[1]
            pred = self(corrupted)
            pixel = self._loss(pred, clean)
            freq = fft_loss(pred, clean) if self.fft_weight else pred.new_zeros(())
            loss = pixel + self.fft_weight * freq
            self.log_dict({"train_loss": loss, "train_pixel": pixel, "train_fft": freq}, prog_bar=True)
            return loss
        aux, enc = self.aux, self.net.encoder
        opt = self.optimizers()
        p_query, p_key = self._contrast(batch[0])
        aux.momentum_update(enc)  # MoCo: the key encoder follows the query encoder before the keys are computed
        q = aux.query(enc, p_query)
        k = aux.key(p_key)
        loss = info_nce(q, k, aux.queue.clone(), self.tau)
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        aux.enqueue(k)
        scheds = self.lr_schedulers()
        for sched in scheds if isinstance(scheds, list) else [scheds] if scheds is not None else []:
            sched.step()
        self.log("train_infonce", loss, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        if self.stage == "restorer":
            return super().validation_step(batch, batch_idx)
        aux, enc = self.aux, self.net.encoder
        p_query, p_key = self._contrast(batch[0])
        q, k = aux.query(enc, p_query), aux.key(p_key)
        sim = q @ k.t()
        idx = torch.arange(q.shape[0], device=q.device)
        self.log("val_top1", (sim.argmax(dim=1) == idx).float().mean(), prog_bar=True)
        self.log("val_infonce", info_nce(q, k, aux.queue, self.tau))
        if len(batch) > 2 and q.shape[0] > 1:  # nearest key of another image: same QF? (QF clustering)
            qf = batch[2].to(q.device)
            other = sim.masked_fill(torch.eye(q.shape[0], dtype=torch.bool, device=q.device), float("-inf"))
            self.log("val_qf_top1", (qf[other.argmax(dim=1)] == qf).float().mean())

    # ---- optimisers ----
    def _stage_steps(self) -> int:
        if self.total_steps:
            return int(self.total_steps)
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        return int(trainer.estimated_stepping_batches) if trainer is not None else 1

    def configure_optimizers(self):
        if self.stage == "encoder":
            params = [*self.net.encoder.parameters(), *self.aux.projection.parameters()]
            # milestones are optimizer steps (benchmark train sets them so): step the schedule per step, not per epoch
            return self._with_schedule(torch.optim.Adam(params, lr=self.ae_lr, betas=self.betas))
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.lr, betas=self.betas)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self._stage_steps(), 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ---- presets ----------------------------------------------------------------------------------------------------------
PAPER = dict(in_channels=3, width=64, encoder_widths=(64, 64, 128, 256), encoder_blocks=(2, 2, 2), n_mid=4,
             n_recovery=(2, 4, 4))
# CPU-sized: the trunk at 1/4 resolution (pixel-unshuffle), width 32, one RNAN group (last module), start at the
# identity; a 1/4-width encoder with one block per stage; MoCo with a 1024-key queue and m = 0.99 for a short stage 1
COMPACT = dict(in_channels=3, width=32, encoder_widths=(16, 16, 32, 64), encoder_blocks=(1, 1, 1), n_mid=0,
               n_recovery=(0, 0, 1), scale=4, zero_tail=True, momentum=0.99, queue_size=1024)
# Table 5 rows (the full model is the plain preset)
ABLATIONS = {
    "no_encoder": dict(use_encoder=False),  # model-1
    "no_pretrain": dict(encoder_pretrained=False),  # model-2
    "concat": dict(fusion="concat"),  # model-3(a)
    "concat_no_effm": dict(fusion="concat", effm=False),  # model-3(b)
    "no_fft": dict(fft_weight=0.0),  # model-4
}
ABLATION_ROWS = {"no_encoder": "model-1", "no_pretrain": "model-2", "concat": "model-3(a)",
                 "concat_no_effm": "model-3(b)", "no_fft": "model-4"}


@register(
    "jarcal",
    presets={
        "compact": Preset(kwargs=COMPACT, weights="jarcal_compact.pt",
                          description="CPU-sized; retrain with `benchmark train --method jarcal`"),
        "paper": Preset(kwargs=PAPER, weights="jarcal_paper.pth",
                        description="the paper's JARCAL (13.89 M params: restorer + quality encoder); the authors' "
                                    "weights are not available here: train it (`benchmark train --method jarcal "
                                    "--preset paper`) or pass --weights FILE"),
        **{f"paper_{k}": Preset(kwargs={**PAPER, **v}, weights=None,
                                description=f"Table 5 ablation {ABLATION_ROWS[k]} at paper size; train it")
           for k, v in ABLATIONS.items()},
    },
    default_preset="compact",
    description="JARCAL: contrastive (MoCo) compression-quality encoder + invertible fusion restorer, two stages",
    module_cls=JARCALModule,
)
def build_jarcal(**kwargs) -> JARCAL:
    return JARCAL(**kwargs)
