"""The thin LightningModule every restorer shares: it takes the network as an argument.

Images enter and leave as float tensors in [0, 1], NCHW. The module adapts channels (a gray network restores each
RGB channel on its own; a colour network sees a gray image replicated and returns the channel mean) and pads to the
network's `size_multiple` (reflection) so any image size works.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F


class RestorerModule(L.LightningModule):
    def __init__(self, net: torch.nn.Module, lr: float = 1e-3, loss: str = "l2", lr_milestones: tuple = ()):
        super().__init__()
        self.net = net
        self.lr, self.loss_name, self.lr_milestones = lr, loss, tuple(lr_milestones)
        self.betas = (0.9, 0.999)  # Adam's; a method's training recipe may set its paper's
        self.lr_gamma = 0.1  # MultiStepLR factor at each milestone
        self.method_name, self.preset_name, self.weights_path = type(net).__name__.lower(), "", ""

    @property
    def in_channels(self) -> int | None:
        """Channels the network takes; None: any."""
        return getattr(self.net, "in_channels", None)

    @property
    def size_multiple(self) -> int:
        return getattr(self.net, "size_multiple", 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._padded(self.as_net_channels(x))
        if self.in_channels in (None, x.shape[1]):
            return out
        # gray network, colour image: the channels come back; colour network, gray image: their mean
        return out.reshape(x.shape) if self.in_channels == 1 else out.mean(1, keepdim=True)

    def as_net_channels(self, x: torch.Tensor) -> torch.Tensor:
        """x as the network takes it: a colour image as one gray image per channel for a gray network, a gray image
        replicated for a colour one."""
        c = x.shape[1]
        if self.in_channels in (None, c):
            return x
        if self.in_channels == 1:
            return x.reshape(-1, 1, *x.shape[2:])
        if c == 1:
            return x.expand(-1, self.in_channels, -1, -1)
        raise ValueError(f"{self.method_name}: cannot restore {c}-channel input with a {self.in_channels}-channel net")

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        m = self.size_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % m, (-w) % m
        net = self._inference_net() if self._inferring else self.net
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            return net(F.pad(x, (0, pw, 0, ph), mode=mode))[..., :h, :w]
        return net(x)

    _inferring = False  # inside `restore`: the network runs under its measured forward plan
    forward_plan: str | None = None  # the plan's name (`create` sets `method.preset` for a preset's own network)

    def _inference_net(self):
        """The network under its forward plan (`lightning_modules.inference`), built once per mode and network;
        the network itself where no plan is named."""
        if self.forward_plan is None:
            return self.net
        from lightning_modules.inference import forward_mode_now, planned

        key = (forward_mode_now(), id(self.net), self.forward_plan)
        cached = self.__dict__.get("_planned")  # a plain attribute, not a submodule: no state-dict keys
        if cached is None or cached[0] != key:
            cached = self.__dict__["_planned"] = (key, planned(self.net, self.forward_plan))
        return cached[1]

    @torch.no_grad()
    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on [0, 1] images; output clamped to [0, 1]."""
        self._inferring = True
        try:
            return self(x).clamp_(0, 1)
        finally:
            self._inferring = False

    # ---- training on (corrupted, clean) crops --------------------------------------------------------------------
    def _loss(self, pred, target):
        return F.l1_loss(pred, target) if self.loss_name == "l1" else F.mse_loss(pred, target)

    def training_step(self, batch, batch_idx):
        corrupted, clean = batch[0], batch[1]
        loss = self._loss(self(corrupted), clean)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        corrupted, clean = batch[0], batch[1]
        pred = self(corrupted).clamp(0, 1)
        mse = F.mse_loss(pred, clean)
        self.log("val_psnr", -10 * torch.log10(mse), prog_bar=True)

    def configure_optimizers(self):
        return self._with_schedule(torch.optim.Adam(self.parameters(), lr=self.lr, betas=self.betas))

    def _with_schedule(self, opt):
        """opt, stepped down by lr_gamma at each of lr_milestones (optimizer steps) when there are any."""
        if not self.lr_milestones:
            return opt
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(self.lr_milestones), gamma=self.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
