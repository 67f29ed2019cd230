"""DAGN: Dual Awareness Guidance Network (Sensitivity Decouple Learning for Image Compression Artifacts Reduction,
Sec. III), with its two auto-encoders, its two-stage training (Algorithm 1) and the Table V ablation switches.

Networks (`DAGN` is what restores an image; `DAGNAuxiliaries` only exists for stage-1 training):
- compression-insensitive / -sensitive encoders E_ci, E_cs: ResNet-50 without average pooling and fc, the last
  stride-2 convolution (layer4) set to stride 1 -> 2048 channels at 1/16 (torchvision's key names, so ImageNet
  ResNet-50 weights or the release's encoders load into them);
- base encoder: a 3x3 head conv, four scales (64/128/256/512 ch) of 4 residual blocks (conv-BN-ReLU-conv), a 2x2
  stride-2 conv at the tail of the first three; 4 more residual blocks open the decoder;
- cross-feature fusion (CFM, Eq. 10): 1x1 convs C1, C2 on F_cif and C3 on F_bf, pyramid pooling {1,2,4,8} of
  C1/C2 (85 tokens), similarity C3(F_bf) x Pool(C1)  ->  x Pool(C2)^T  -> + F_bf;
- guiders: three-layer MLPs on the pooled encoder features; layers 1-2 shared, layer 3 one head per DAGB giving
  the channel-wise (scale, shift) -- (beta_i, gamma_i) from E_ci, (epsilon_i, eta_i) from E_cs;
- guided decoder: first scale = the 4 residual blocks above, then three DAGBs (Eq. 11): skip added, 2x2
  transposed conv, 4 compression-sensitive guidance blocks (Eq. 13) then 4 compression-insensitive ones (Eq. 12):
  F + scale * C(RNorm(C(F))) + shift; a 3x3 tail conv to the image.
- auxiliaries: per encoder a 15-layer fully-convolutional decoder (5 convs, then alternating transposed conv /
  conv), the discriminator J (MLP 2048x2048x1) and the QF predictor P (MLP 2048x2048x100).

Where the paper is vague we follow the authors' release (LiMaPKU/DAGN, `models/network_dfgn.py`) and say where we
depart from it:
- guider heads: sigmoid on the scale, tanh on the shift (release); guider input = global average pool of the 2048
  features (release).
- CFM: the release scales the similarity by 1/sqrt(C) and applies a softmax over the 85 pooled tokens (we do, the
  paper's "approximate similarity matrix" is otherwise unbounded) and then concatenates + 1x1 conv + BN +
  dropout; we keep Eq. 10's residual "+ F_bf" (the release's `nonlocal2` variant).
- disabled guidance (ablation): scale 1, shift 0 -- a plain residual block (the release instead drops the
  block's identity path).
- `global_residual` (compact preset only): the output is input + tail(...), which a CPU-sized schedule needs to
  converge; the paper/release predict the image directly (paper preset: False).
- the loss weights lambda_ci / lambda_cs are not given in the paper; we use the release's 1e-3.

Parameters: the paper's 109.9 M counts the network that runs at test time -- base encoder/decoder, CFM, guiders,
and both ResNet-50 encoders -- not the stage-1 auto-encoder decoders, discriminator or QF predictor (these are
another 23.5 M at the decoder width we chose). `create("dagn", preset="paper")` has 110.7 M (0.7 % over; test_dagn checks the 5 % band).
"""
from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from lightning_modules.registry import Preset, register
from lightning_modules.restorers.base import RestorerModule

PYRAMID = (1, 2, 4, 8)


# ---- compression-(in)sensitive encoder: ResNet-50 with layer4 at stride 1 ------------------------------------------
class ResNetEncoder(nn.Module):
    """torchvision's ResNet trunk (same key names) without avgpool/fc; layer4's stride-2 convs set to stride 1."""

    def __init__(self, in_channels: int = 3, width: int = 64, layers=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = width
        self.layer1 = self._layer(width, layers[0], 1)
        self.layer2 = self._layer(width * 2, layers[1], 2)
        self.layer3 = self._layer(width * 4, layers[2], 2)
        self.layer4 = self._layer(width * 8, layers[3], 1)  # the paper's "last stride-2 conv -> stride 1"
        self.out_channels = width * 8 * Bottleneck.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(planes * Bottleneck.expansion))
        mods = [Bottleneck(self.inplanes, planes, stride, down)]
        self.inplanes = planes * Bottleneck.expansion
        mods += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# ---- base network blocks ----------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """x + conv(ReLU(BN(conv(x)))): the paper's "two 3x3 convs with ReLU and BN in the middle"."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class GuidanceBlock(ResBlock):
    """Eq. 12/13: F + scale (.) C(RNorm(C(F))) + shift, scale/shift per channel; None -> (1, 0)."""

    def forward(self, x, scale=None, shift=None):
        r = self.body(x)
        if scale is not None:
            r = scale[..., None, None] * r + shift[..., None, None]
        return x + r


class Guider(nn.Module):
    """Three-layer MLP: two shared layers, then one (scale, shift) head per DAGB."""

    def __init__(self, in_features: int, embed: int, channels: list[int]):
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(in_features, embed), nn.ReLU(inplace=True),
                                    nn.Linear(embed, embed), nn.ReLU(inplace=True))
        self.heads = nn.ModuleList(nn.Linear(embed, 2 * c) for c in channels)

    def forward(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        h = self.shared(features.mean(dim=(2, 3)))
        out = []
        for head in self.heads:
            scale, shift = head(h).chunk(2, dim=1)
            out.append((torch.sigmoid(scale), torch.tanh(shift)))
        return out


def pyramid_pool(x: torch.Tensor, sizes=PYRAMID) -> torch.Tensor:
    """N x C x H x W -> N x C x sum(k^2): adaptive average pools at k x k, flattened and concatenated."""
    return torch.cat([F.adaptive_avg_pool2d(x, k).flatten(2) for k in sizes], dim=2)


class CrossFeatureFusion(nn.Module):
    """Eq. 10: C3(F_bf) x Pool(C1(F_cif)) x Pool(C2(F_cif))^T + F_bf (similarity scaled and soft-maxed)."""

    def __init__(self, cif_channels: int, base_channels: int, sizes=PYRAMID):
        super().__init__()
        self.c1 = nn.Conv2d(cif_channels, base_channels, 1)
        self.c2 = nn.Conv2d(cif_channels, base_channels, 1)
        self.c3 = nn.Conv2d(base_channels, base_channels, 1)
        self.sizes = sizes

    def forward(self, f_cif: torch.Tensor, f_bf: torch.Tensor) -> torch.Tensor:
        return self.attend(f_bf, *self.key_value(f_cif))

    def key_value(self, f_cif: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pooled keys and values (N x C x S): the image-wide part of Eq. 10."""
        return pyramid_pool(self.c1(f_cif), self.sizes), pyramid_pool(self.c2(f_cif), self.sizes)

    def attend(self, f_bf: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        n, c, h, w = f_bf.shape
        query = self.c3(f_bf).flatten(2).transpose(1, 2)  # N x HW x C
        similarity = torch.softmax(query @ key / math.sqrt(c), dim=-1)  # N x HW x S
        fused = (similarity @ value.transpose(1, 2)).transpose(1, 2).reshape(n, c, h, w)
        return fused + f_bf


class DAGB(nn.Module):
    """Eq. 11: B_cig^4(B_csg^4(T2(F_in + F_sc)))."""

    def __init__(self, cin: int, cout: int, blocks: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.sensitive = nn.ModuleList(GuidanceBlock(cout) for _ in range(blocks))
        self.insensitive = nn.ModuleList(GuidanceBlock(cout) for _ in range(blocks))

    def forward(self, x, skip, sensitive=(None, None), insensitive=(None, None)):
        x = self.up(x + skip)
        for block in self.sensitive:
            x = block(x, *sensitive)
        for block in self.insensitive:
            x = block(x, *insensitive)
        return x


class DAGN(nn.Module):
    """The restoring network. `cigm`, `csgm`, `cfm` switch the three modules (Table V); an encoder that no enabled
    module uses is not built."""

    def __init__(self, in_channels: int = 3, widths=(64, 128, 256, 512), blocks: int = 4, encoder_width: int = 64,
                 encoder_layers=(3, 4, 6, 3), embed: int = 512, cigm: bool = True, csgm: bool = True,
                 cfm: bool = True, global_residual: bool = False):
        super().__init__()
        self.in_channels, self.size_multiple = in_channels, 16  # encoders reach 1/16, the base network 1/8
        self.cigm, self.csgm, self.cfm, self.global_residual = cigm, csgm, cfm, global_residual
        w = list(widths)
        self.head = nn.Conv2d(in_channels, w[0], 3, padding=1)
        self.down = nn.ModuleList(
            nn.Sequential(*[ResBlock(w[i]) for _ in range(blocks)], nn.Conv2d(w[i], w[i + 1], 2, stride=2))
            for i in range(3))
        self.body_encoder = nn.Sequential(*[ResBlock(w[3]) for _ in range(blocks)])
        self.body_decoder = nn.Sequential(*[ResBlock(w[3]) for _ in range(blocks)])
        self.up = nn.ModuleList(DAGB(w[i + 1], w[i], blocks) for i in (2, 1, 0))
        self.tail = nn.Conv2d(w[0], in_channels, 3, padding=1)
        guided = [w[2], w[1], w[0]]
        self.insensitive_encoder = self.sensitive_encoder = None
        if cigm or cfm:
            self.insensitive_encoder = ResNetEncoder(in_channels, encoder_width, encoder_layers)
        if csgm:
            self.sensitive_encoder = ResNetEncoder(in_channels, encoder_width, encoder_layers)
        feat = encoder_width * 8 * Bottleneck.expansion
        self.insensitive_guider = Guider(feat, embed, guided) if cigm else None
        self.sensitive_guider = Guider(feat, embed, guided) if csgm else None
        self.fusion = CrossFeatureFusion(feat, w[3]) if cfm else None

    def encoders(self) -> list[nn.Module]:
        return [e for e in (self.insensitive_encoder, self.sensitive_encoder) if e is not None]

    def guidance(self, f_cif: torch.Tensor | None, f_csf: torch.Tensor | None):
        """The image-wide part: the guiders' (scale, shift) per DAGB and the CFM's pooled keys/values."""
        none = [(None, None)] * 3
        ins = self.insensitive_guider(f_cif) if self.cigm else none
        sen = self.sensitive_guider(f_csf) if self.csgm else none
        return ins, sen, self.fusion.key_value(f_cif) if self.cfm else None

    # ---- tiling (lightning_modules/restorers/tiling.py) ------------------------------------------------------------
    def encoded(self, x: torch.Tensor) -> torch.Tensor:
        """Both encoders' maps (insensitive first), concatenated: local, at 1/16."""
        return torch.cat([e(x) for e in self.encoders()], dim=1)

    def tile_context(self, x: torch.Tensor, tiled):
        """The encoders run tile by tile (`tiled(fn, x, stride)`); the guiders' global average and the CFM's
        pyramid pooling then see the whole image's maps. None without encoders (the baseline is local)."""
        if not self.encoders():
            return None
        f = tiled(self.encoded, x, 16)
        c = self.insensitive_encoder.out_channels if self.insensitive_encoder is not None else 0
        return self.guidance(f[:, :c] if c else None, f[:, c:] if self.sensitive_encoder is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = getattr(self, "_tile_state", None)
        if state is not None and state[0] is not None:  # a tile: the image-wide part comes from tile_context
            ins, sen, kv = state[0]
        else:
            f_cif = self.insensitive_encoder(x) if self.insensitive_encoder is not None else None
            f_csf = self.sensitive_encoder(x) if self.sensitive_encoder is not None else None
            ins, sen, kv = self.guidance(f_cif, f_csf)
        skips = [self.head(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        h = self.body_encoder(skips[-1])
        if self.cfm:
            h = self.fusion.attend(h, *kv)
        h = self.body_decoder(h)
        for i, dagb in enumerate(self.up):
            h = dagb(h, skips[3 - i], sen[i], ins[i])
        out = self.tail(h + skips[0])
        return x + out if self.global_residual else out


# ---- stage-1 auxiliaries ---------------------------------------------------------------------------------------------
class AEDecoder(nn.Module):
    """15 layers, fully convolutional: 5 convs, then 5 x (transposed conv, conv); the first four transposed convs
    upsample x2 (1/16 -> 1), the last conv writes the image."""

    def __init__(self, in_channels: int, width: int, out_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(5):
            layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(inplace=True)]
            c = width
        for i in range(5):
            upsample = i < 4
            cout = max(width // 2 ** (i + 1), 16)
            layers += [nn.ConvTranspose2d(c, cout, 2 if upsample else 3, stride=2 if upsample else 1,
                                          padding=0 if upsample else 1), nn.ReLU(inplace=True)]
            layers += [nn.Conv2d(cout, cout if i < 4 else out_channels, 3, padding=1)]
            if i < 4:
                layers.append(nn.ReLU(inplace=True))
            c = cout
        self.layers = nn.Sequential(*layers)

    def forward(self, f):
        return self.layers(f)


def mlp(features: int, hidden: int, out: int) -> nn.Sequential:
    """An `features x hidden x out` MLP on globally pooled features."""
    return nn.Sequential(nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class DAGNAuxiliaries(nn.Module):
    """Stage-1 parts that do not run at test time: the two auto-encoder decoders, J and P."""

    def __init__(self, features: int, decoder_width: int, in_channels: int = 3):
        super().__init__()
        self.insensitive_decoder = AEDecoder(features, decoder_width, in_channels)
        self.sensitive_decoder = AEDecoder(features, decoder_width, in_channels)
        self.discriminator = mlp(features, features, 1)  # J: logit of "features of an original image"
        self.qf_predictor = mlp(features, features, 100)  # P: QF classes 1..100


# ---- losses (Eq. 5, 6, 8, 9, 14) ---------------------------------------------------------------------------------------
def content_loss(recon_c, c, recon_o, o) -> torch.Tensor:
    """Eq. 5/8: mean of the two reconstructions' L1 (per-pixel mean instead of the per-image sum: a constant)."""
    return 0.5 * (F.l1_loss(recon_c, c) + F.l1_loss(recon_o, o))


def insensitive_loss(logit_c, logit_o) -> torch.Tensor:
    """Eq. 6, L_cic = mean(-log J(E(c)) + log J(E(o))) / 2 with J = sigmoid(logit); the encoder minimises it, the
    discriminator maximises it (Eq. 4)."""
    return 0.5 * (F.softplus(-logit_c) - F.softplus(-logit_o)).mean()


def sensitive_loss(qf_logits_c, qf_c, qf_logits_o) -> torch.Tensor:
    """Eq. 9: L1 between the predicted QF distribution and the one-hot QF (100 classes: QF 1..100; an original
    image is QF 100), summed over classes, averaged over the batch and the two inputs."""
    onehot_c = F.one_hot(qf_c.long() - 1, 100).to(qf_logits_c.dtype)
    onehot_o = F.one_hot(torch.full_like(qf_c, 99).long(), 100).to(qf_logits_o.dtype)
    l_c = (qf_logits_c.softmax(1) - onehot_c).abs().sum(1).mean()
    l_o = (qf_logits_o.softmax(1) - onehot_o).abs().sum(1).mean()
    return 0.5 * (l_c + l_o)


def pooled(f: torch.Tensor) -> torch.Tensor:
    return f.mean(dim=(2, 3))


# ---- LightningModule: Algorithm 1 ------------------------------------------------------------------------------------
class DAGNModule(RestorerModule):
    """Stage `autoencoders` (Alg. 1 lines 3-12): per batch, update E_ci, D_ci on L_cc^ci + lambda_ci L_cic (Eq. 3),
    then J on -L_cic (Eq. 4), then E_cs, D_cs, P on L_cc^cs + lambda_cs L_csc (Eq. 7). Stage `restorer` (lines
    13-19): freeze both encoders (weights and BN statistics), L1 on the rest (Eq. 14-15)."""

    stages = ("autoencoders", "restorer")

    def __init__(self, net: DAGN, lr: float = 1e-4, lambda_ci: float = 1e-3, lambda_cs: float = 1e-3,
                 ae_lr: float = 1e-4, decoder_width: int | None = None):
        super().__init__(net, lr=lr, loss="l1")
        self.lambda_ci, self.lambda_cs, self.ae_lr = lambda_ci, lambda_cs, ae_lr
        self.stage = "restorer"
        self._decoder_width = decoder_width
        self.aux: DAGNAuxiliaries | None = None

    def build_auxiliaries(self) -> DAGNAuxiliaries:
        enc = self.net.insensitive_encoder or self.net.sensitive_encoder
        if enc is None:
            raise ValueError("this DAGN variant has no encoder: stage 1 has nothing to train")
        if self.aux is None:
            width = self._decoder_width or max(enc.out_channels // 8, 32)
            self.aux = DAGNAuxiliaries(enc.out_channels, width, self.net.in_channels)
        return self.aux

    def set_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise ValueError(f"unknown DAGN training stage {stage!r}; stages: {self.stages}")
        self.stage = stage
        self.automatic_optimization = stage == "restorer"
        if stage == "autoencoders":
            self.build_auxiliaries()
        for enc in self.net.encoders():
            enc.requires_grad_(stage == "autoencoders")

    def on_train_epoch_start(self) -> None:
        if self.stage == "restorer":
            for enc in self.net.encoders():
                enc.eval()  # frozen: BN statistics too

    def training_step(self, batch, batch_idx):
        if self.stage == "restorer":
            return super().training_step(batch, batch_idx)
        corrupted, clean, qf = batch[0], batch[1], batch[2]
        opts = self.optimizers()
        aux, net = self.aux, self.net
        logs = {}
        if net.insensitive_encoder is not None:
            opt_ae, opt_j = opts[0], opts[1]
            f_c, f_o = net.insensitive_encoder(corrupted), net.insensitive_encoder(clean)
            l_cc = content_loss(aux.insensitive_decoder(f_c), corrupted, aux.insensitive_decoder(f_o), clean)
            l_cic = insensitive_loss(aux.discriminator(pooled(f_c)), aux.discriminator(pooled(f_o)))
            opt_ae.zero_grad()
            self.manual_backward(l_cc + self.lambda_ci * l_cic)
            opt_ae.step()
            # Eq. 4: the discriminator ascends L_cic on detached features
            l_j = -insensitive_loss(aux.discriminator(pooled(f_c.detach())), aux.discriminator(pooled(f_o.detach())))
            opt_j.zero_grad()
            self.manual_backward(l_j)
            opt_j.step()
            logs.update(l_cc_ci=l_cc, l_cic=l_cic)
        if net.sensitive_encoder is not None:
            opt_cs = opts[-1]
            f_c, f_o = net.sensitive_encoder(corrupted), net.sensitive_encoder(clean)
            l_cc = content_loss(aux.sensitive_decoder(f_c), corrupted, aux.sensitive_decoder(f_o), clean)
            l_csc = sensitive_loss(aux.qf_predictor(pooled(f_c)), qf, aux.qf_predictor(pooled(f_o)))
            opt_cs.zero_grad()
            self.manual_backward(l_cc + self.lambda_cs * l_csc)
            opt_cs.step()
            logs.update(l_cc_cs=l_cc, l_csc=l_csc)
        self.log_dict(logs, prog_bar=True)
        for sched in self.lr_schedulers() or []:
            sched.step()

    def validation_step(self, batch, batch_idx):
        if self.stage == "restorer":
            return super().validation_step(batch, batch_idx)
        corrupted, clean = batch[0], batch[1]
        enc = self.net.insensitive_encoder or self.net.sensitive_encoder
        dec = self.aux.insensitive_decoder if self.net.insensitive_encoder is not None else self.aux.sensitive_decoder
        self.log("val_ae_l1", content_loss(dec(enc(corrupted)), corrupted, dec(enc(clean)), clean), prog_bar=True)

    def configure_optimizers(self):
        if self.stage == "restorer":
            rest = [p for n, p in self.net.named_parameters() if p.requires_grad]
            opt = torch.optim.Adam(rest, lr=self.lr, betas=self.betas)
            return self._with_schedule(opt)
        aux, net, opts = self.aux, self.net, []
        if net.insensitive_encoder is not None:
            opts.append(torch.optim.Adam([*net.insensitive_encoder.parameters(),
                                          *aux.insensitive_decoder.parameters()], lr=self.ae_lr))
            opts.append(torch.optim.Adam(aux.discriminator.parameters(), lr=self.ae_lr))
        if net.sensitive_encoder is not None:
            opts.append(torch.optim.Adam([*net.sensitive_encoder.parameters(), *aux.sensitive_decoder.parameters(),
                                          *aux.qf_predictor.parameters()], lr=self.ae_lr))
        if not self.lr_milestones:
            return opts
        # stage 1 drops by 0.1 (paper: at epochs 5 and 10 of 15); stepped by hand in training_step
        return opts, [torch.optim.lr_scheduler.MultiStepLR(o, list(self.lr_milestones), 0.1) for o in opts]


PAPER = dict(in_channels=3, widths=(64, 128, 256, 512), blocks=4, encoder_width=64, encoder_layers=(3, 4, 6, 3),
             embed=512)
COMPACT = dict(in_channels=3, widths=(16, 32, 64, 96), blocks=1, encoder_width=8, encoder_layers=(1, 1, 1, 1),
               embed=96, global_residual=True)
# Table V rows (baseline, baseline w/ one module; the full model is the plain preset)
ABLATIONS = {"baseline": dict(cigm=False, csgm=False, cfm=False), "w_cigm": dict(cigm=True, csgm=False, cfm=False),
             "w_csgm": dict(cigm=False, csgm=True, cfm=False), "w_cfm": dict(cigm=False, csgm=False, cfm=True)}


@register(
    "dagn",
    presets={
        "compact": Preset(kwargs=COMPACT, weights="dagn_compact.pt",
                          description="shipped; retrain with `benchmark train --method dagn`"),
        "paper": Preset(kwargs=PAPER, weights="dagn_paper.pth",
                        description="the paper's DAGN (110.7 M params); the authors release no weights -- train it "
                                    "(`benchmark train --config dagn_paper.yaml`) or pass --weights FILE"),
        **{f"paper_{k}": Preset(kwargs={**PAPER, **v}, weights=None,
                                description=f"Table V ablation row '{k}' at paper size; train it")
           for k, v in ABLATIONS.items()},
    },
    description="DAGN: sensitivity-decoupled guidance (CIGM, CSGM, CFM), two-stage training",
    module_cls=DAGNModule,
)
def build_dagn(**kwargs) -> DAGN:
    return DAGN(**kwargs)
