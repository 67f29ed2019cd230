"""Top-k accuracy, exact under DDP (images carry ids; repeats count once)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from benchmark.metrics.fidelity import first_per_id


# ---- accuracy ------------------------------------------------------------------------------------------------------
class TopKAccuracy(Metric):
    """Top-k accuracies in percent, `{"top1": ..., "top5": ...}`; exact under DDP when `update` gets image ids
    (images the distributed sampler repeats count once, as in `benchmark.metrics`)."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, k: int | Sequence[int] = (1, 5), **kwargs):
        super().__init__(**kwargs)
        ks = (k,) if isinstance(k, int) else tuple(k)
        if not ks or any(not isinstance(x, int) or x < 1 for x in ks):
            raise ValueError(f"k={k!r}: give positive integers")
        self.k = tuple(sorted(set(ks)))
        self.add_state("correct", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        if logits.ndim != 2:
            raise ValueError(f"logits must be (N, classes), got {tuple(logits.shape)}")
        labels = torch.as_tensor(labels, device=logits.device).reshape(-1).long()
        n, c = logits.shape
        if labels.numel() != n:
            raise ValueError(f"{n} logits rows but {labels.numel()} labels")
        if n and (labels.min() < 0 or labels.max() >= c):
            raise ValueError(f"labels outside 0..{c - 1}")
        if max(self.k) > c:
            raise ValueError(f"top-{max(self.k)} needs at least {max(self.k)} classes, logits have {c}")
        hit = logits.topk(max(self.k), dim=1).indices == labels[:, None]
        correct = torch.stack([hit[:, :k].any(1) for k in self.k], 1).double()
        if ids is None:  # anonymous images never deduplicate
            ids = torch.full((n,), -1, dtype=torch.long)
        self.correct.append(correct)
        self.ids.append(torch.as_tensor(ids, dtype=torch.long, device=logits.device).reshape(-1))

    def per_image(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, correct (N, len(k)) 0/1) after removing repeated ids, sorted by id."""
        return first_per_id(self.correct, self.ids)

    def compute(self) -> dict[str, torch.Tensor]:
        if isinstance(self.correct, list) and not self.correct:
            return {f"top{k}": torch.tensor(float("nan"), dtype=torch.float64) for k in self.k}
        _, correct = self.per_image()
        acc = correct.mean(0) * 100.0
        return {f"top{k}": acc[i] for i, k in enumerate(self.k)}
