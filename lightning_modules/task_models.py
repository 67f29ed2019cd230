"""Compact task models for the embedded shapes set, and the thin LightningModule that trains any task model.

Every task model takes float RGB in [0, 1], NCHW (detectors: a list of CHW tensors, torchvision's convention).
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShapesClassifier(nn.Module):
    """A small CNN; the first two layers keep full resolution because the classes live in 1-2 pixel texture."""

    def __init__(self, num_classes: int = 4, width: int = 24):
        super().__init__()
        w = width
        self.features = nn.Sequential(_conv_bn(3, w), _conv_bn(w, w), _conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w),
                                      _conv_bn(2 * w, 4 * w, 2), _conv_bn(4 * w, 4 * w, 2))
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features((x - 0.5) / 0.25)
        # max over positions: the object is somewhere, the background everywhere
        return self.head(F.adaptive_max_pool2d(f, 1).flatten(1))


class TaskModule(L.LightningModule):
    """Trains a task network on (image, target) batches; the network is an argument."""

    def __init__(self, net: nn.Module, task: str, lr: float = 2e-3, max_steps: int = 1000):
        super().__init__()
        self.net, self.task, self.lr, self.max_steps = net, task, lr, max_steps

    def forward(self, x):
        return self.net(x)

    def _loss(self, x, target):
        if self.task == "detection":
            losses = self.net(list(x), target)
            return sum(losses.values())
        out = self.net(x)
        return F.cross_entropy(out, target, ignore_index=255)

    def training_step(self, batch, batch_idx):
        x = batch[1].float() / 255.0  # clean images
        loss = self._loss(x, batch[2])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, target = batch[1].float() / 255.0, batch[2]
        if self.task == "classification":
            self.log("val_acc", (self.net(x).argmax(1) == target).float().mean(), prog_bar=True)
        elif self.task == "segmentation":
            self.log("val_pix_acc", (self.net(x).argmax(1) == target).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=self.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
