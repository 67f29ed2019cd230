"""Fidelity evaluator: a LightningModule that restores each test image and scores it, one metric set per
corruption (one test dataloader each). Per-image means, exact under DDP (images are deduplicated by index)."""
from __future__ import annotations

import time

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection

from .metrics import METRICS, PerImageMean, to_uint8


class NonFiniteOutput(ValueError):  # also: an output of the wrong shape
    pass


class FidelityEvaluator(L.LightningModule):
    def __init__(self, restorer: L.LightningModule, n_corruptions: int, channels: str = "rgb"):
        super().__init__()
        self.restorer, self.channels = restorer, channels
        self.scores = nn.ModuleList(
            MetricCollection({k: cls(channels) for k, cls in METRICS.items()}, compute_groups=False)
            for _ in range(n_corruptions))
        self.bpp = nn.ModuleList(PerImageMean() for _ in range(n_corruptions))
        self.results: list[dict] = []
        self.per_image: list[dict[str, torch.Tensor]] = []  # per corruption: {metric: values in image order}
        self.forward_seconds = 0.0  # time inside the restorer: the rest of a job is overhead

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        corrupted, clean, meta = batch
        t0 = time.perf_counter()
        restored = self.restorer.restore(corrupted.float() / 255.0)
        self.forward_seconds += time.perf_counter() - t0
        name = meta["name"][0] if isinstance(meta["name"], (list, tuple)) else meta["name"]
        if restored.shape != corrupted.shape:  # never score a cropped/resized/channel-changed output
            raise NonFiniteOutput(f"method {getattr(self.restorer, 'method_name', '?')!r} returned shape "
                                  f"{tuple(restored.shape)} for input {tuple(corrupted.shape)} on image {name!r}")
        if not torch.isfinite(restored).all():
            raise NonFiniteOutput(f"method {getattr(self.restorer, 'method_name', '?')!r} produced NaN/inf on image "
                                  f"{name!r} ({meta['key'][0]})")
        try:
            self.scores[dataloader_idx].update(to_uint8(restored), clean, ids=meta["index"])
        except ValueError as e:  # e.g. an image the metrics cannot score: name it
            raise ValueError(f"image {name!r} ({meta['key'][0]}): {e}") from e
        self.bpp[dataloader_idx].update(meta["bpp"].double(), ids=meta["index"])

    def on_test_epoch_end(self) -> None:
        self.results, self.per_image = [], []
        for scores, bpp in zip(self.scores, self.bpp):
            values = {k: float(v) for k, v in scores.compute().items()}
            values["n_images"] = scores["psnr"].n_images()
            values["bpp"] = float(bpp.compute())
            self.results.append(values)
            self.per_image.append({k: m.per_image()[1] for k, m in [*scores.items(), ("bpp", bpp)]})
            scores.reset()
            bpp.reset()
