"""FBCNN: Flexible Blind CNN (Jiang, Zhang, Timofte, "Towards Flexible Blind JPEG Artifacts Removal", ICCV 2021).

A U-Net whose bottleneck predicts the JPEG quality factor (QF) of its input; the QF, predicted or set by hand, is
embedded by an MLP into channel-wise (gamma, beta) that modulate every residual block of the decoder. Setting the QF
by hand (`FBCNN.qf_override`, the CLI's `--qf-override`) trades artifact removal against detail preservation: the
paper's "flexible control".

Presets: `paper` / `paper_gray` -- the released `fbcnn_color.pth` / `fbcnn_gray.pth` (jiaxi-jiang/FBCNN v1.0
release assets), loaded strictly as plain state dicts; `compact` (default) -- a small colour FBCNN trained by carbench
(`fbcnn_compact.pt`, `benchmark train --method fbcnn`).

Every choice below is taken from the authors' release, jiaxi-jiang/FBCNN (KAIR code base):
- `models/network_fbcnn.py` (class `FBCNN`) -- the architecture and its state-dict key names, which we keep
  verbatim so that the released `fbcnn_color.pth` / `fbcnn_gray.pth` load strictly:
  - `m_head`: 3x3 conv in_nc -> nc[0] (bias);
  - `m_down1..3`: nb residual blocks at nc[i], then a 2x2 stride-2 conv nc[i] -> nc[i+1] (`downsample_strideconv`,
    the default `downsample_mode`); residual block = x + conv3x3(ReLU(conv3x3(x))) (`ResBlock`, mode 'C'+act+'C',
    keys `res.0` / `res.2`; with act_mode 'BR' a BatchNorm (momentum 0.9, eps 1e-4) sits before the ReLU and the
    second conv becomes `res.3`);
  - `m_body_encoder`, `m_body_decoder`: nb residual blocks at nc[3] each (the release's `sequential()` unwraps a
    single module, so with nb=1 the keys lose their index: we mirror that);
  - `qf_pred`: nb residual blocks at nc[3], global average pool, flatten, Linear(nc[3], 512)-ReLU-Linear(512, 512)-
    ReLU-Linear(512, 1)-Sigmoid (indices nb+2, nb+4, nb+6 hold the Linear layers; the release hard-codes 512 for
    both nc[3] and the MLP width -- our `qf_dim` is the MLP width, the input width is nc[3]);
  - `qf_embed`: Linear(1, 512)-ReLU-Linear(512, 512)-ReLU-Linear(512, 512)-ReLU (keys 0, 2, 4);
  - `to_gamma_k` = Linear(512, nc[k-1])-Sigmoid, `to_beta_k` = Linear(512, nc[k-1])-Tanh, k = 3, 2, 1;
  - `m_up3..1`: ModuleList [2x2 stride-2 transposed conv nc[i+1] -> nc[i] (`upsample_convtranspose`, the default
    `upsample_mode`), nb QF-attention blocks]; QF attention (`QFAttention`) = x + gamma * res(x) + beta, with res the
    residual block's conv-ReLU-conv;
  - `m_tail`: 3x3 conv nc[0] -> out_nc; the network outputs the image itself (no global residual);
  - forward: skips x1..x4 (head, down1..3); body_encoder -> qf_pred reads it; body_decoder; (+x4, up3, +x3, up2,
    +x2, up1, +x1, tail); the input is replicate-padded to a multiple of 8 and the output cropped back.
  Only the release's default down/upsampling (strideconv / convtranspose) is implemented; the avgpool / maxpool /
  pixelshuffle / upconv alternatives of the release's constructor are unused by its options and checkpoints.
- QF convention (`main_test_fbcnn_color.py`, `main_test_fbcnn_color_real.py`; `data/dataset_jpeg.py`): the network
  works with q = 1 - QF/100 (the dataset's `noise_level = (100 - quality_factor) / 100`); `qf_pred` estimates q
  (the test scripts print QF = round(100 * (1 - q))), and flexible control passes `qf_input = [[1 - QF/100]]`.
- released checkpoints: the test scripts build `FBCNN(in_nc, out_nc, nc=[64,128,256,512], nb=4, act_mode='R')` and
  `load_state_dict(torch.load(path), strict=True)` -> plain state dicts, ReLU-only residual blocks (presets `paper`,
  `paper_gray`). The training options (`options/train_fbcnn_*.json`) say act_mode 'BR' (BatchNorm); we support it
  (`act_mode="BR"`) but no released file uses it.
- training (`models/model_fbcnn.py::optimize_parameters`, `options/train_fbcnn_color.json`): the image goes through
  the network with its *predicted* q (no QF given), loss = 1.0 * L1(image) + 0.001 * L1(q_pred, 1 - QF/100)
  (`G_lossfn_weight` 1.0, `QF_lossfn_type` l1, `QF_lossfn_weight` 0.001); Adam, lr 2e-5, MultiStepLR x0.5 at
  [200k, 400k, 1.2M, 1.6M, 1.8M]; 96x96 patches, batch 128; QF drawn from {10..60 step 10} (p 0.75) or 8..96
  (p 0.25); init (`models/select_network.py::init_weights`): orthogonal, gain 0.2, zero biases, BN weight U(0.1, 1).

Parameters (nc 64/128/256/512, nb 4, act_mode 'R'): colour 71,921,796 -- the paper's 71.92 M; gray 71,919,490.

carbench departures:
- `compact` preset only (the paper presets are the release's network unchanged): a narrow, shallow FBCNN (nc
  16/32/64/96, nb 1, qf_dim 64: 796,484 parameters) with `global_residual=True` (output = input + tail(...)), which
  a CPU-sized schedule (2500 steps of 16 64x64 crops) needs (in a 300-step probe the net without it was about half
  as far above JPEG as the net with it); the release predicts the image directly (`global_residual=False` in the
  paper presets).
- PyTorch's default initialisation instead of orthogonal(0.2) unless `official_init=True` is passed to the builder.
- through carbench's RestorerModule the input is reflection-padded to `size_multiple` (8) before the network (the
  release replicate-pads), so the network's own replicate padding is a no-op there; called directly, the network
  pads like the release. Only image borders of sizes that are not multiples of 8 can differ.
- the QF loss skips samples with an unknown QF one by one (the release drops it for the whole batch when the first
  QF is NaN).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.registry import Preset, register
from lightning_modules.restorers.base import RestorerModule

QF_LOSS_WEIGHT = 1e-3  # options/train_fbcnn_{color,gray}.json: "QF_lossfn_weight": 0.001


def qf_to_input(qf) -> float:
    """JPEG quality 1..100 -> the network's q = 1 - QF/100 (main_test_fbcnn_color_real.py)."""
    return 1.0 - float(qf) / 100.0


def input_to_qf(q: torch.Tensor) -> torch.Tensor:
    """The network's q -> JPEG quality (the release prints round(100 * (1 - q)))."""
    return 100.0 * (1.0 - q)


def _seq(*mods: nn.Module) -> nn.Module:
    """The release's `sequential()`: a single module is returned as is (its keys carry no index)."""
    return mods[0] if len(mods) == 1 else nn.Sequential(*mods)


def _res_body(c: int, act_mode: str) -> nn.Sequential:
    """conv3x3 - [BN] - ReLU - conv3x3, laid out as the release's conv(mode='C'+act_mode+'C')."""
    layers: list[nn.Module] = [nn.Conv2d(c, c, 3, padding=1)]
    if act_mode == "BR":
        layers.append(nn.BatchNorm2d(c, momentum=0.9, eps=1e-4))
    layers += [nn.ReLU(), nn.Conv2d(c, c, 3, padding=1)]
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """x + res(x)."""

    def __init__(self, c: int, act_mode: str = "R"):
        super().__init__()
        self.res = _res_body(c, act_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res(x)


class QFAttention(ResBlock):
    """x + gamma * res(x) + beta, gamma/beta per channel from the QF embedding."""

    def forward(self, x: torch.Tensor, gamma: torch.Tensor,  # type: ignore[override]
                beta: torch.Tensor) -> torch.Tensor:
        return x + (gamma[..., None, None] * self.res(x) + beta[..., None, None])


class FBCNN(nn.Module):
    """FBCNN with the release's module names. `forward(x)` -> image; `forward_with_qf(x, qf_input)` -> (image, q)."""

    size_multiple = 8  # three 2x2 stride-2 downsamplings

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nc=(64, 128, 256, 512), nb: int = 4, act_mode: str = "R",
                 qf_dim: int = 512, global_residual: bool = False, qf_override: int | None = None):
        super().__init__()
        nc = tuple(int(c) for c in nc)
        if len(nc) != 4:
            raise ValueError(f"FBCNN needs 4 widths nc, got {nc}")
        if nb < 1:
            raise ValueError(f"FBCNN needs nb >= 1, got {nb}")
        if act_mode not in ("R", "BR"):
            raise ValueError(f"FBCNN act_mode must be 'R' (released weights) or 'BR' (BatchNorm), got {act_mode!r}")
        if global_residual and in_nc != out_nc:
            raise ValueError("global_residual needs in_nc == out_nc")
        self.in_channels, self.out_channels = in_nc, out_nc
        self.nb, self.nc, self.global_residual = nb, nc, global_residual

        def blocks(c, cls=ResBlock):
            return [cls(c, act_mode) for _ in range(nb)]

        self.m_head = nn.Conv2d(in_nc, nc[0], 3, padding=1)
        self.m_down1 = nn.Sequential(*blocks(nc[0]), nn.Conv2d(nc[0], nc[1], 2, stride=2))
        self.m_down2 = nn.Sequential(*blocks(nc[1]), nn.Conv2d(nc[1], nc[2], 2, stride=2))
        self.m_down3 = nn.Sequential(*blocks(nc[2]), nn.Conv2d(nc[2], nc[3], 2, stride=2))
        self.m_body_encoder = _seq(*blocks(nc[3]))
        self.m_body_decoder = _seq(*blocks(nc[3]))
        self.m_up3 = nn.ModuleList([nn.ConvTranspose2d(nc[3], nc[2], 2, stride=2), *blocks(nc[2], QFAttention)])
        self.m_up2 = nn.ModuleList([nn.ConvTranspose2d(nc[2], nc[1], 2, stride=2), *blocks(nc[1], QFAttention)])
        self.m_up1 = nn.ModuleList([nn.ConvTranspose2d(nc[1], nc[0], 2, stride=2), *blocks(nc[0], QFAttention)])
        self.m_tail = nn.Conv2d(nc[0], out_nc, 3, padding=1)

        # decoupler: QF predictor on the encoder's bottleneck, q = 1 - QF/100 in (0, 1)
        self.qf_pred = nn.Sequential(*blocks(nc[3]), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(nc[3], qf_dim), nn.ReLU(), nn.Linear(qf_dim, qf_dim), nn.ReLU(),
                                     nn.Linear(qf_dim, 1), nn.Sigmoid())
        self.qf_embed = nn.Sequential(nn.Linear(1, qf_dim), nn.ReLU(), nn.Linear(qf_dim, qf_dim), nn.ReLU(),
                                      nn.Linear(qf_dim, qf_dim), nn.ReLU())
        for k, c in ((3, nc[2]), (2, nc[1]), (1, nc[0])):
            setattr(self, f"to_gamma_{k}", nn.Sequential(nn.Linear(qf_dim, c), nn.Sigmoid()))
            setattr(self, f"to_beta_{k}", nn.Sequential(nn.Linear(qf_dim, c), nn.Tanh()))
        self.qf_override = qf_override

    # ---- flexible control --------------------------------------------------------------------------------------
    @property
    def qf_override(self) -> int | None:
        """JPEG quality 1..100 used instead of the predicted one by `forward`; None: blind (predicted)."""
        return self._qf_override

    @qf_override.setter
    def qf_override(self, value) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                                  or not 1 <= int(value) <= 100):
            raise ValueError(f"FBCNN qf_override must be an integer JPEG quality 1..100 or None, got {value!r}")
        self._qf_override = None if value is None else int(value)

    def _qf_tensor(self, qf_input, like: torch.Tensor) -> torch.Tensor:
        q = torch.as_tensor(qf_input, dtype=like.dtype, device=like.device).reshape(-1, 1)
        if q.shape[0] not in (1, like.shape[0]):
            raise ValueError(f"qf_input holds {q.shape[0]} values for a batch of {like.shape[0]}")
        return q

    # ---- forward -------------------------------------------------------------------------------------------------
    def forward_with_qf(self, x: torch.Tensor, qf_input=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The release's forward: (image, predicted q = 1 - QF/100, shape N x 1). `qf_input` (q, not QF: a float
        or a tensor of 1 or N values) replaces the prediction in the decoder's modulation."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        inp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        x1 = self.m_head(inp)
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        x4 = self.m_down3(x3)
        f = self.m_body_encoder(x4)
        qf = self.qf_pred(f)
        f = self.m_body_decoder(f)
        emb = self.qf_embed(qf if qf_input is None else self._qf_tensor(qf_input, qf))
        f = f + x4
        for k, up, skip in ((3, self.m_up3, x3), (2, self.m_up2, x2), (1, self.m_up1, x1)):
            gamma, beta = getattr(self, f"to_gamma_{k}")(emb), getattr(self, f"to_beta_{k}")(emb)
            f = up[0](f)
            for block in up[1:]:
                f = block(f, gamma, beta)
            f = f + skip
        out = self.m_tail(f)
        if self.global_residual:
            out = out + inp
        return out[..., :h, :w], qf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = None if self._qf_override is None else qf_to_input(self._qf_override)
        state = getattr(self, "_tile_state", None)
        if q is None and state is not None:  # a tile: the QF predicted on the whole image (tile_context)
            q = state[0]
        return self.forward_with_qf(x, q)[0]

    # ---- tiling (lightning_modules/restorers/tiling.py) ------------------------------------------------------------
    def qf_features(self, x: torch.Tensor) -> torch.Tensor:
        """The QF predictor's features before its global average pool: local, at 1/8 (x a multiple of 8)."""
        f = self.m_body_encoder(self.m_down3(self.m_down2(self.m_down1(self.m_head(x)))))
        return self.qf_pred[:self.nb](f)

    def tile_context(self, x: torch.Tensor, tiled):
        """The global part of a tiled forward: q predicted from the whole image's bottleneck features, which are
        local and computed tile by tile (`tiled(fn, x, stride)`); the average and the MLP then see what the
        whole-image forward sees. None with a QF override (the forward is local then)."""
        if self._qf_override is not None:
            return None
        return self.qf_pred[self.nb:](tiled(self.qf_features, x, 8))


def init_official(net: nn.Module, gain: float = 0.2) -> nn.Module:
    """models/select_network.py::init_weights(init_type='orthogonal', init_bn_type='uniform', gain=0.2)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.uniform_(m.weight, 0.1, 1.0)
            nn.init.zeros_(m.bias)
    return net


# ---- LightningModule -------------------------------------------------------------------------------------------------
class FBCNNModule(RestorerModule):
    """Training as in models/model_fbcnn.py: image loss (L1 by default; `loss_name`) on the output computed with the
    *predicted* QF, plus `qf_loss_weight` * L1(predicted q, 1 - QF/100) on samples with a known QF (1..100)."""

    def __init__(self, net: FBCNN, lr: float = 1e-3, loss: str = "l1", lr_milestones: tuple = (),
                 qf_loss_weight: float = QF_LOSS_WEIGHT):
        super().__init__(net, lr=lr, loss=loss, lr_milestones=lr_milestones)
        self.qf_loss_weight = qf_loss_weight

    @property
    def qf_override(self) -> int | None:
        return self.net.qf_override

    @qf_override.setter
    def qf_override(self, value) -> None:
        self.net.qf_override = value

    def restore_with_qf(self, x: torch.Tensor, qf_input=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, predicted q) with the same reflection padding as `forward` (channels must match the network)."""
        m, (h, w) = self.size_multiple, x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
        out, q = self.net.forward_with_qf(x, qf_input)
        return out[..., :h, :w], q

    def qf_loss(self, q_pred: torch.Tensor, qf: torch.Tensor) -> torch.Tensor:
        qf = torch.as_tensor(qf, device=q_pred.device).reshape(-1).to(q_pred.dtype)
        known = torch.isfinite(qf) & (qf >= 1) & (qf <= 100)
        if not bool(known.any()):
            return q_pred.sum() * 0
        return F.l1_loss(q_pred.reshape(-1)[known], 1 - qf[known] / 100)

    def training_step(self, batch, batch_idx):
        corrupted, clean = batch[0], batch[1]
        pred, q_pred = self.restore_with_qf(corrupted)
        image_loss = self._loss(pred, clean)
        loss = image_loss
        if len(batch) > 2 and self.qf_loss_weight:
            qf_loss = self.qf_loss(q_pred, batch[2])
            loss = image_loss + self.qf_loss_weight * qf_loss
            self.log("qf_loss", qf_loss)
        self.log("image_loss", image_loss)
        self.log("train_loss", loss, prog_bar=True)
        return loss


# ---- registration ----------------------------------------------------------------------------------------------------
PAPER_COLOR = dict(in_nc=3, out_nc=3, nc=(64, 128, 256, 512), nb=4, act_mode="R", qf_dim=512)
PAPER_GRAY = dict(PAPER_COLOR, in_nc=1, out_nc=1)
COMPACT = dict(in_nc=3, out_nc=3, nc=(16, 32, 64, 96), nb=1, act_mode="R", qf_dim=64, global_residual=True)


@register(
    "fbcnn",
    presets={
        "compact": Preset(kwargs=COMPACT, weights="fbcnn_compact.pt",
                          description="small colour FBCNN (nc 16/32/64/96, nb 1, global residual) trained by "
                                      "carbench; retrain with `benchmark train --method fbcnn`"),
        "paper": Preset(kwargs=PAPER_COLOR, weights="fbcnn_color.pth",
                        description="official release (jiaxi-jiang/FBCNN v1.0): put fbcnn_color.pth from "
                                    "https://github.com/jiaxi-jiang/FBCNN/releases/download/v1.0/fbcnn_color.pth in "
                                    "a weights folder"),
        "paper_gray": Preset(kwargs=PAPER_GRAY, weights="fbcnn_gray.pth",
                             description="official release (jiaxi-jiang/FBCNN v1.0): put fbcnn_gray.pth from "
                                         "https://github.com/jiaxi-jiang/FBCNN/releases/download/v1.0/fbcnn_gray.pth "
                                         "in a weights folder"),
    },
    default_preset="compact",
    description="FBCNN, flexible blind JPEG artifact removal with a predicted, adjustable QF (Jiang et al. 2021)",
    module_cls=FBCNNModule,
)
def build_fbcnn(in_nc: int = 3, out_nc: int = 3, nc=(64, 128, 256, 512), nb: int = 4, act_mode: str = "R",
                qf_dim: int = 512, global_residual: bool = False, qf_override: int | None = None,
                official_init: bool = False) -> FBCNN:
    net = FBCNN(in_nc, out_nc, nc, nb, act_mode, qf_dim, global_residual, qf_override)
    return init_official(net) if official_init else net
