"""Downstream evaluator: corrupt -> (restore | nothing) -> task model -> task metric, one metric set per corruption.

Metrics are exact under DDP: every update carries image ids and repeated ids (sampler padding) count once.
"""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from pycocotools.coco import COCO
from torch import nn
from torchmetrics import Metric

from .classification import TopKAccuracy
from .metrics import PerImageMean
from .detection import _quiet, coco_map
from .segmentation import SegmentationScores


class DetectionMAP(Metric):
    """COCO box mAP (pycocotools COCOeval) over images given with ids; ground truth comes with the updates.

    Rows are kept as tensors (`cat` states) so ranks gather them; an image id seen twice counts once."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, backend: str = "auto", **kwargs):
        super().__init__(**kwargs)
        self.backend = backend  # COCOeval implementation (detection.coco_map)
        # rows: (block, image_id, x1, y1, x2, y2, score, label) and (block, image_id, x1, y1, x2, y2, label);
        # `block` is unique per (process, scored image), so a repeated image is recognised whatever its neighbours
        self.add_state("dets", default=[], dist_reduce_fx="cat")
        self.add_state("gts", default=[], dist_reduce_fx="cat")
        self._blocks = 0

    def update(self, outputs: list[dict], targets: list[dict], ids: torch.Tensor) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        for out, tgt, i in zip(outputs, targets, ids.tolist()):
            self._blocks += 1
            head = [float(rank * 2**31 + self._blocks), float(i)]
            n, m = len(out["boxes"]), len(tgt["boxes"])
            self.dets.append(torch.cat([torch.tensor(head).expand(n, 2), out["boxes"].detach().float().cpu(),
                                        out["scores"].detach().float().cpu()[:, None],
                                        out["labels"].detach().float().cpu()[:, None]], 1).double())
            self.gts.append(torch.cat([torch.tensor(head).expand(m, 2), tgt["boxes"].float().cpu(),
                                       tgt["labels"].float().cpu()[:, None]], 1).double())

    def compute(self) -> dict[str, float]:
        gts, dets = _rows(self.gts, 7).numpy(), _rows(self.dets, 8).numpy()
        heads = np.concatenate([gts[:, :2], dets[:, :2]])  # (block, image) in arrival order
        images, first_row = np.unique(heads[:, 1], return_index=True)
        first_block = dict(zip(images.tolist(), heads[first_row, 0].tolist()))  # image id -> the block that counts

        def keep(rows):
            counted = np.array([first_block[i] == b for b, i in rows[:, :2].tolist()], dtype=bool)
            return rows[counted.reshape(-1)][:, 1:]

        gts, dets = keep(gts), keep(dets)
        labels = sorted(set(gts[:, 5].astype(int).tolist()) | set(dets[:, 6].astype(int).tolist()))
        coco = COCO()
        coco.dataset = {
            "images": [{"id": int(i)} for i in images],
            "categories": [{"id": c} for c in labels],
            "annotations": [{"id": k + 1, "image_id": int(r[0]), "category_id": int(r[5]), "iscrowd": 0,
                             "bbox": [r[1], r[2], r[3] - r[1], r[4] - r[2]], "area": (r[3] - r[1]) * (r[4] - r[2])}
                            for k, r in enumerate(gts.tolist())],
        }
        with _quiet():
            coco.createIndex()
        preds = [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": [r[1], r[2], r[3] - r[1], r[4] - r[2]],
                  "score": r[5]} for r in dets.tolist()]
        return coco_map(preds, coco, images.astype(int).tolist(), self.backend)


def _rows(state, width: int) -> torch.Tensor:
    if isinstance(state, list):
        return torch.cat(state) if state else torch.zeros(0, width, dtype=torch.float64)
    return state.reshape(-1, width)


def task_metric(task: str, num_classes: int) -> Metric:
    if task == "classification":
        return TopKAccuracy(k=(1, 5) if num_classes > 5 else (1,))
    if task == "segmentation":
        return SegmentationScores(num_classes=num_classes, ignore_index=255)
    if task == "detection":
        return DetectionMAP()
    raise ValueError(f"unknown task {task!r}")


def restore_tiled(restorer, x: torch.Tensor, tile: int | None, overlap: int = 16) -> torch.Tensor:
    """Restore whole, or in overlapping tiles when the image exceeds `tile` (memory budget). Each tile's border
    `overlap` is discarded, so outputs equal the whole-image result away from seams (exactly, for a receptive field
    smaller than the overlap)."""
    h, w = x.shape[-2:]
    if not tile or (h <= tile and w <= tile):
        return restorer.restore(x)
    if tile <= 2 * overlap:
        raise ValueError(f"tile {tile} must exceed twice the overlap ({overlap})")
    out = torch.empty_like(x)
    step = tile - 2 * overlap
    for y0 in range(0, h, step):
        for x0 in range(0, w, step):
            ys, xs = max(y0 - overlap, 0), max(x0 - overlap, 0)
            ye, xe = min(y0 + step + overlap, h), min(x0 + step + overlap, w)
            r = restorer.restore(x[..., ys:ye, xs:xe])
            oy, ox = y0 - ys, x0 - xs
            out[..., y0:min(y0 + step, h), x0:min(x0 + step, w)] = r[..., oy:oy + min(step, h - y0),
                                                                     ox:ox + min(step, w - x0)]
    return out


class TaskEvaluator(L.LightningModule):
    def __init__(self, task: str, task_model: nn.Module, n_corruptions: int, num_classes: int,
                 restorer: L.LightningModule | None = None, tile: int | None = None):
        super().__init__()
        self.task, self.task_model, self.restorer, self.tile = task, task_model.eval(), restorer, tile
        self.scores = nn.ModuleList(task_metric(task, num_classes) for _ in range(n_corruptions))
        self.seen = nn.ModuleList(PerImageMean() for _ in range(n_corruptions))  # distinct images scored
        self.results: list[dict] = []

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        corrupted, _, target, meta = batch
        x = corrupted.float() / 255.0
        if self.restorer is not None:
            x = restore_tiled(self.restorer, x, self.tile)
            if not torch.isfinite(x).all():
                raise ValueError(f"method {getattr(self.restorer, 'method_name', '?')!r} produced NaN/inf "
                                 f"(images {meta['index'].tolist()})")
            x = (x.clamp(0, 1) * 255).round() / 255  # restored images are 8-bit images, as saved
        ids = meta["index"]
        self.seen[dataloader_idx].update(torch.ones(len(ids), dtype=torch.float64), ids)
        metric = self.scores[dataloader_idx]
        if self.task == "classification":
            # a cross-fitted classifier (jpeg_finetune.lite0) picks its fold copy by the label's fold, nothing else
            logits = self.task_model(x, target) if getattr(self.task_model, "routes_by_label", False) \
                else self.task_model(x)
            metric.update(logits, target, ids=ids)
        elif self.task == "segmentation":
            metric.update(self.task_model(x).argmax(1), target, ids=ids)
        else:
            metric.update(self.task_model(list(x)), target, ids)

    def on_test_epoch_end(self) -> None:
        self.results = []
        for metric, seen in zip(self.scores, self.seen):
            values = metric.compute()
            values = {k: float(v) for k, v in values.items() if not isinstance(v, torch.Tensor) or v.numel() == 1}
            values["n_images"] = seen.n_images()
            self.results.append(values)
            metric.reset()
            seen.reset()
