"""Dual priors: the deep unfolding network of Fu et al., "Learning Dual Priors for JPEG Compression Artifacts
Removal" (ICCV 2021), with its two-stage training.

Model (Sec. 3.1-3.2): min_x ||y - x||^2 + lambda1 f_p(x) + lambda2 f_s(grad x) (Eq. 3), split with u ~ x and
g ~ grad x (Eq. 4) and solved by alternating minimisation, unfolded into K stages (Sec. 3.3, Fig. 2). Stage k:
- u-update (Eq. 5/8): u_k = deblocker(x_{k-1}), the pixel-level regressive prior f_p;
- g-update (Eq. 6/9): J gradient steps g <- g - eta [beta (g - grad_d x_{k-1}) + lambda2 d f_s(g)/d g], started at
  g^(0) = grad x_{k-1} (Sec. 3.4), d f_s / d g by back-propagation through the classifier f_s (Li et al. [26]);
- x-update (Eq. 7/10): the least-squares problem in closed form, the difference operators diagonalised by the FFT:
  x_k = F^-1[(F(y) + alpha F(u_k) + beta sum_d conj(F(grad_d)) F(g_d)) / (1 + alpha + beta sum_d |F(grad_d)|^2)].
x_0 = y (Sec. 3.4); the network returns x_K, in the input's range ([0, 1]).

Design choices and where they come from:
- K = 5 stages, J = 3 inner g-steps, 112 de-blocker and 32 classifier feature maps, 3x3 kernels, ReLU (Sec. 3.4,
  paper preset). One de-blocker and one classifier, shared by all K stages (Sec. 3.4: "share their own parameters").
- de-blocker basic unit (Sec. 3.3): the non-local operation of Eq. 11, M_out = M_in + theta(M) nu(M)^T xi(M) W,
  with theta, nu, xi 1x1 convs reducing the channels and W a 1x1 conv back, computed in the re-ordered form
  theta (nu^T xi) (an r x r matrix instead of HW x HW, Sec. 3.3); then three cascaded dilated 3x3 convs.
- dense structure + skip connections in the de-blocker (Sec. 3.3, "dense structures [22] and skip-connections").
- classifier f_s (Sec. 3.3): six 3x3 convs with ReLU, global average pooling, two fully-connected layers, sigmoid;
  its input is the image gradient ("gradient domain", Sec. 3.1/Fig. 1): the horizontal and vertical differences
  grad_h x, grad_v x stacked as channels (d in {h, v}, Eq. 9); labels clean = 0, compressed = 1 (Sec. 3.2, Eq. 12).
- x-update in closed form with FFTs (Eq. 10); alpha, beta, eta (and lambda2 of Eq. 9) learned, initialised 0.01
  (Sec. 3.4: "all weights in Equations (8) to (10) are initialized as 0.01").
- two-stage training (Sec. 3.4): BCE on the classifier alone (Eq. 12), then the classifier frozen and the rest
  trained with MAE. Gray (Y) input by default as the paper trains on Y; in_channels=3 is the colour option.
- d f_s/d g needs autograd at inference too: the g-update runs under `torch.enable_grad()` (and outside inference
  mode) with `create_graph` only when training, so `restore()` under `torch.no_grad()`/`torch.inference_mode()` works.

Gaps in the paper and how we filled them:
- third dilation factor: the text is cut off after "1, 3 and"; we use 5 (`dilations=(1, 3, 5)`).
- number of basic units in the de-blocker and the exact dense wiring: not given. We use 3 units (paper preset),
  RDN-style: head 3x3 conv -> unit_1; the input of unit_i (i > 1) is a 1x1 conv of the concatenation of the head
  and all earlier unit outputs; a 1x1 conv fuses [head, unit_1..unit_n]; skips: a local one around each unit, a
  global feature one (head + fused) and an image one (u = x + tail(...)), so the de-blocker predicts a residual.
- channel reduction of theta/nu/xi: not given; half the channels (as RNAN [62] / non-local nets). Without a softmax
  (the re-ordering of Eq. 11 only holds for a plain product) the product is divided by the number of positions HW
  (the "dot-product" non-local normalisation) so the block's output does not grow with the image size. W starts at
  zero (each non-local block starts as the identity, as non-local nets zero-initialise their last layer).
- difference operators: circular forward differences grad_h x = x[:, j+1] - x[:, j] (and vertical), wrapping at
  the border, which is exactly what the FFT diagonalises in Eq. 10 (so Eq. 10 is the exact minimiser of Eq. 7).
- classifier strides and FC width: not given; strides (1, 2, 1, 2, 1, 2) (cheaper, a receptive field that covers
  several 8x8 JPEG blocks), hidden FC width = classifier width.
- scale of d f_s/d g: f_s ends in a global average pool, so d f_s/d g shrinks as 1/(number of pixels) and a lambda2
  learned on 64x64 crops would act ~60x weaker on a 500x400 test image; we multiply the derivative by H*W (i.e. use
  the per-pixel form of the prior), which makes the g-step independent of the image size.
- alpha, beta, eta, lambda2: one value per stage (the shared de-blocker/classifier cannot adapt to the stage, these
  step sizes can). They are kept positive (Eq. 10 is the minimiser of Eq. 7 only for alpha, beta >= 0; eta is a
  step size) by learning their logarithm, scaled by `hyper_scale` (= 40): value = exp(40 * a). Learned raw from
  0.01 with Adam (lr 1e-4 in the paper) they would need ~10^4-10^5 steps to reach useful values (x_k is pulled to y
  with weight 1 / (1 + alpha)); the scaled log moves them by up to ~4 % per step at lr 1e-3 (0.4 % at 1e-4), so a
  CPU-sized schedule can use them (short compact runs: 40 beat 10 by ~0.05 dB at 250 and 600 steps; starting
  alpha at 1 instead of 0.01 was worse at 250 steps).
- f_s in Eq. 9 is the classifier's sigmoid output, as the paper says (not the logit): where the classifier is
  saturated its derivative is small; the learned lambda2 can compensate.
- paper's Eq. 2-7 say arg max; they mean arg min (energy minimisation).
- optimiser: the paper gives Adam at a fixed 1e-4 for the network (we keep lr 1e-4 as the module default); the
  classifier stage's lr is not given: 1e-3 (`ae_lr`).

Parameters: Table 1 gives a "# Params" row only for ARCNN (1.06e5), TNRD (0.21e5) and DnCNN (6.69e5); the row
has no value for the proposed network, so there is no published figure to match. `dualpriors.paper` has 1,256,494
parameters (de-blocker 1,208,537, classifier 47,937, 20 stage scalars); `dualpriors.compact` 20,550.
Test-time cost (FlopCounterMode, the classifier's input-gradient passes included): paper 51.8 GFLOPs, compact
0.29 GFLOPs per 64x64 gray image.

Compact preset (CPU-sized, same structure): K = 3, one basic unit of 16 maps, J = 1 (with one g-step from
g^(0) = grad x_{k-1} only the product eta * lambda2 matters), classifier width 16. One restorer step (batch 16,
64x64 gray, one thread) took 0.6-0.8 s on a busy 2-core machine (dncnn.compact: 0.6 s there). A 300 + 500-step
check (Y crops, QF 5..50, lr 1e-3, no decay) gave LIVE1-gray QF10 28.33 dB vs JPEG 27.77 (+0.56 dB).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.registry import Preset, register
from lightning_modules.restorers.base import RestorerModule


# ---- gradient domain and the closed-form x-update -------------------------------------------------------------------
def image_gradients(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 2C, H, W): [grad_h x, grad_v x], circular forward differences per channel."""
    return torch.cat([torch.roll(x, -1, dims=-1) - x, torch.roll(x, -1, dims=-2) - x], dim=1)


def difference_otfs(h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """rfft2 transfer functions of grad_h and grad_v on an h x w torus: F(grad_d x) = F(x) * otf_d."""
    kh = torch.zeros(h, w, device=device)
    kv = torch.zeros(h, w, device=device)
    kh[0, 0] = kv[0, 0] = -1.0
    kh[0, -1] = 1.0  # (x * k)[j] = -x[j] + x[j + 1]
    kv[-1, 0] = 1.0
    return torch.fft.rfft2(kh), torch.fft.rfft2(kv)


def fft_x_update(y: torch.Tensor, u: torch.Tensor, g: torch.Tensor, alpha, beta) -> torch.Tensor:
    """Eq. 10: argmin_x ||y - x||^2 + alpha ||u - x||^2 + beta sum_d ||g_d - grad_d x||^2 (circular differences)."""
    h, w = y.shape[-2:]
    c = y.shape[1]
    dtype = y.dtype
    y, u, g = y.float(), u.float(), g.float()
    oh, ov = difference_otfs(h, w, y.device)
    gf = torch.fft.rfft2(g)
    num = torch.fft.rfft2(y) + alpha * torch.fft.rfft2(u) + beta * (oh.conj() * gf[:, :c] + ov.conj() * gf[:, c:])
    den = 1 + alpha + beta * (oh.abs() ** 2 + ov.abs() ** 2)
    return torch.fft.irfft2(num / den, s=(h, w)).to(dtype)


# ---- de-blocker f_p -------------------------------------------------------------------------------------------------
class NonLocalBlock(nn.Module):
    """Eq. 11: M + theta(M) (nu(M)^T xi(M)) W / HW -- the re-ordered product, an r x r matrix per image."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.theta = nn.Conv2d(channels, reduced, 1)
        self.nu = nn.Conv2d(channels, reduced, 1)
        self.xi = nn.Conv2d(channels, reduced, 1)
        self.w = nn.Conv2d(reduced, channels, 1)
        nn.init.zeros_(self.w.weight)  # starts as the identity
        nn.init.zeros_(self.w.bias)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        n, _, h, w = m.shape
        t, v, s = self.theta(m).flatten(2), self.nu(m).flatten(2), self.xi(m).flatten(2)  # N x r x HW
        a = torch.bmm(v, s.transpose(1, 2)) / (h * w)  # nu^T xi: N x r x r
        out = torch.bmm(a.transpose(1, 2), t)  # (theta a)^T: N x r x HW
        return m + self.w(out.reshape(n, -1, h, w))


class BasicUnit(nn.Module):
    """Sec. 3.3: non-local block, then three cascaded dilated 3x3 convs (ReLU); a local skip around the unit."""

    def __init__(self, channels: int, dilations=(1, 3, 5), reduction: int = 2):
        super().__init__()
        self.nonlocal_block = NonLocalBlock(channels, max(channels // reduction, 1))
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=d, dilation=d) for d in dilations)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        h = self.nonlocal_block(m)
        for conv in self.convs:
            h = F.relu(conv(h))
        return m + h


class DeBlocker(nn.Module):
    """u = x + tail(head + fuse[head, unit_1, ..., unit_n]), units densely connected through 1x1 convs."""

    def __init__(self, in_channels: int, features: int, units: int, dilations=(1, 3, 5), reduction: int = 2):
        super().__init__()
        self.head = nn.Conv2d(in_channels, features, 3, padding=1)
        self.units = nn.ModuleList(BasicUnit(features, dilations, reduction) for _ in range(units))
        self.dense = nn.ModuleList(nn.Conv2d((i + 1) * features, features, 1) for i in range(1, units))
        self.fuse = nn.Conv2d((units + 1) * features, features, 1)
        self.tail = nn.Conv2d(features, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.head(x)]
        for i, unit in enumerate(self.units):
            feats.append(unit(feats[0] if i == 0 else self.dense[i - 1](torch.cat(feats, 1))))
        return x + self.tail(feats[0] + self.fuse(torch.cat(feats, 1)))


# ---- classifier f_s ----------------------------------------------------------------------------------------------
class GradientClassifier(nn.Module):
    """Sec. 3.3: six 3x3 convs (ReLU), global average pooling, two FC layers, sigmoid -> P(compressed).
    Input: image gradients (N, 2C, H, W) as `image_gradients` gives them; any size (the pooling is global)."""

    def __init__(self, in_channels: int = 2, width: int = 32, strides=(1, 2, 1, 2, 1, 2)):
        super().__init__()
        layers, c = [], in_channels
        for s in strides:
            layers += [nn.Conv2d(c, width, 3, stride=s, padding=1), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*layers)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, 1)

    def logits(self, g: torch.Tensor) -> torch.Tensor:
        pooled = self.features(g).mean(dim=(2, 3))  # not adaptive_avg_pool2d: mean is deterministic on CUDA
        return self.fc2(F.relu(self.fc1(pooled))).squeeze(1)

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(g))


# ---- the unfolded network ---------------------------------------------------------------------------------------
HYPER = ("alpha", "beta", "eta", "lambda2")


class DualPriorsNet(nn.Module):
    """K stages of (u, g, x) updates (Fig. 2) with one shared de-blocker and one shared gradient classifier."""

    def __init__(self, in_channels: int = 1, stages: int = 5, features: int = 112, grad_steps: int = 3,
                 classifier_width: int = 32, dilations=(1, 3, 5), units: int = 3, reduction: int = 2,
                 classifier_strides=(1, 2, 1, 2, 1, 2), init: float = 0.01, hyper_scale: float = 40.0):
        super().__init__()
        self.in_channels, self.size_multiple = in_channels, 1  # FFT and non-local block take any size
        self.stages, self.grad_steps, self.hyper_scale = stages, grad_steps, hyper_scale
        self.deblocker = DeBlocker(in_channels, features, units, tuple(dilations), reduction)
        self.classifier = GradientClassifier(2 * in_channels, classifier_width, tuple(classifier_strides))
        for name in HYPER:  # per stage, positive: value = exp(hyper_scale * log_name)
            self.register_parameter(f"log_{name}",
                                    nn.Parameter(torch.full((stages,), math.log(init) / hyper_scale)))

    def hyper(self, name: str) -> torch.Tensor:
        """alpha / beta / eta / lambda2 for all stages (a K-vector)."""
        return torch.exp(self.hyper_scale * getattr(self, f"log_{name}"))

    def prior_gradient(self, g: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """H*W * d f_s(g) / d g (per image), by autograd even under no_grad / inference_mode."""
        n_pixels = g.shape[-2] * g.shape[-1]
        with torch.inference_mode(False), torch.enable_grad():
            if create_graph and g.requires_grad:
                leaf = g_in = g
            else:  # a fresh leaf (a clone: inference tensors cannot enter autograd) ...
                leaf = (g.clone() if g.is_inference() else g.detach()).requires_grad_(True)
                g_in = leaf.view_as(leaf)  # ... seen through a view: module backward hooks (FlopCounterMode's
                # module tracker) fail on a leaf module input inside autograd.grad
            p = self.classifier(g_in)
            (d,) = torch.autograd.grad(p.sum(), leaf, create_graph=create_graph)
        return d * n_pixels

    def forward(self, y: torch.Tensor, return_stages: bool = False):
        create_graph = self.training and torch.is_grad_enabled()
        alpha, beta, eta, lam = (self.hyper(n) for n in HYPER)
        x, outs = y, []
        for k in range(self.stages):
            u = self.deblocker(x)  # Eq. 8
            grad_x = image_gradients(x)
            g = grad_x  # g^(0) = grad x_{k-1}
            for _ in range(self.grad_steps):  # Eq. 9
                g = g - eta[k] * (beta[k] * (g - grad_x) + lam[k] * self.prior_gradient(g, create_graph))
            x = fft_x_update(y, u, g, alpha[k], beta[k])  # Eq. 10
            outs.append(x)
        return outs if return_stages else x


# ---- LightningModule: the two-stage training (Sec. 3.4) ---------------------------------------------------------
class DualPriorsModule(RestorerModule):
    """Stage `classifier`: BCE (Eq. 12) on classifier(grad clean) -> 0 and classifier(grad corrupted) -> 1, only the
    classifier's parameters (Adam, `ae_lr`). Stage `restorer`: the classifier frozen (no grads, eval), MAE on x_K,
    Adam over the rest (lr, betas, MultiStepLR at lr_milestones by lr_gamma)."""

    stages = ("classifier", "restorer")

    def __init__(self, net: DualPriorsNet, lr: float = 1e-4, ae_lr: float = 1e-3):
        super().__init__(net, lr=lr, loss="l1")
        self.ae_lr = ae_lr
        self.set_stage("restorer")

    def set_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise ValueError(f"unknown dualpriors training stage {stage!r}; stages: {self.stages}")
        self.stage = stage
        self.net.classifier.requires_grad_(stage == "classifier")
        for name, p in self.net.named_parameters():
            if not name.startswith("classifier."):
                p.requires_grad_(stage == "restorer")
        self.net.classifier.train(stage == "classifier")  # no BN/dropout in it, but keep the modes honest

    def on_train_epoch_start(self) -> None:
        if self.stage == "restorer":
            self.net.classifier.eval()  # frozen

    def _classifier_batch(self, batch):
        corrupted, clean = self.as_net_channels(batch[0]), self.as_net_channels(batch[1])
        g = torch.cat([image_gradients(clean), image_gradients(corrupted)])
        labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(corrupted))]).to(g)
        return self.net.classifier.logits(g), labels

    def training_step(self, batch, batch_idx):
        if self.stage == "restorer":
            return super().training_step(batch, batch_idx)
        logits, labels = self._classifier_batch(batch)
        loss = F.binary_cross_entropy_with_logits(logits, labels)  # Eq. 12
        self.log("train_bce", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        if self.stage == "restorer":
            return super().validation_step(batch, batch_idx)
        logits, labels = self._classifier_batch(batch)
        self.log("val_bce", F.binary_cross_entropy_with_logits(logits, labels))
        self.log("val_acc", ((logits > 0).float() == labels).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        if self.stage == "classifier":
            opt = torch.optim.Adam(self.net.classifier.parameters(), lr=self.ae_lr)
        else:
            rest = [p for n, p in self.net.named_parameters() if p.requires_grad and not n.startswith("classifier.")]
            opt = torch.optim.Adam(rest, lr=self.lr, betas=self.betas)
        return self._with_schedule(opt)


PAPER = dict(in_channels=1, stages=5, features=112, grad_steps=3, classifier_width=32, dilations=(1, 3, 5), units=3)
COMPACT = dict(in_channels=1, stages=3, features=16, grad_steps=1, classifier_width=16, dilations=(1, 3, 5), units=1)


@register(
    "dualpriors",
    presets={
        "compact": Preset(kwargs=COMPACT, weights="dualpriors_compact.pt",
                          description="gray, K=3 stages, 16 de-blocker maps, 1 basic unit, J=1; train it with "
                                      "`benchmark train --method dualpriors` (classifier stage, then restorer)"),
        "paper": Preset(kwargs=PAPER, weights="dualpriors_paper.pth",
                        description="the paper's network (K=5, J=3, 112/32 maps, 1.26 M params); the authors "
                                    "release no weights (TensorFlow code not public): train it (`benchmark train "
                                    "--method dualpriors --preset paper`) or pass --weights FILE"),
    },
    default_preset="compact",
    description="Dual priors (Fu et al., ICCV 2021): deep unfolding with a pixel-level de-blocker and a "
                "gradient-domain classifier prior, two-stage training",
    module_cls=DualPriorsModule,
)
def build_dualpriors(**kwargs) -> DualPriorsNet:
    return DualPriorsNet(**kwargs)
