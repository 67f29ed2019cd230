"""Semantic segmentation metrics: mmseg's IoU metrics (mIoU, mAcc, aAcc).

Conventions (those of mmsegmentation's `IoUMetric`, which produced the published PSPNet numbers):
- Pixels whose ground truth is `ignore_index` (255 = VOC's object boundaries) are dropped, prediction included.
- Over the whole set: per class, intersection = correct pixels, union = predicted + labelled - intersection.
  IoU_c = intersection / union, Acc_c = intersection / labelled, aAcc = all correct / all labelled pixels.
- A class with union 0 (absent from both prediction and ground truth) has IoU NaN; a class absent from the
  ground truth has Acc NaN (even if predicted; its IoU is then 0). mIoU and mAcc are `nanmean`s over classes.
- Values are fractions in [0, 1]; mmseg prints them x100 rounded to 2 decimals.
- Everything is computed from a confusion matrix `conf[gt, pred]` (int64). Ground-truth values outside
  [0, num_classes) other than `ignore_index`, and predictions outside [0, num_classes), are errors.

`SegmentationScores` (torchmetrics) stays exact under DDP: images given with ids keep their own confusion matrix
(list states, `dist_reduce_fx="cat"`), and an id seen more than once -- the distributed sampler pads the last batch
by repeating images, possibly on another rank -- counts once after the cross-process gather. Images without ids
are summed into one matrix (`dist_reduce_fx="sum"`) and never deduplicated. The per-image matrices and ids are kept
flat in the metric's float dtype (float32: exact up to 2^24 pixels per image and ids below 2^24; `.double()` for
more) so that a rank that saw no images gathers with the others.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics import Metric

from datamodules.segmentation import IGNORE_INDEX, VOC_NUM_CLASSES


def segmentation_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int = VOC_NUM_CLASSES,
                           ignore_index: int = IGNORE_INDEX, per_image: bool = False) -> torch.Tensor:
    """Confusion matrix `conf[gt, pred]` (int64, (K, K); with `per_image`, (N, K, K)).

    `pred`: labels (H, W) / (N, H, W), or logits (N, K, H, W) (argmax over dim 1). `target`: (H, W) / (N, H, W).
    """
    if pred.is_floating_point() and pred.ndim == target.ndim + 1:
        pred = pred.argmax(1)
    if pred.shape != target.shape:
        raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    if pred.ndim == 2:
        pred, target = pred.unsqueeze(0), target.unsqueeze(0)
    if pred.ndim != 3:
        raise ValueError(f"expected (H, W) or (N, H, W) label maps, got {tuple(pred.shape)}")
    pred, target = pred.long(), target.long()
    valid = target != ignore_index
    if bool(((target < 0) | (target >= num_classes))[valid].any()):
        bad = torch.unique(target[valid & ((target < 0) | (target >= num_classes))]).tolist()
        raise ValueError(f"target has values {bad[:10]} outside [0, {num_classes}) and != ignore_index "
                         f"{ignore_index}")
    if bool(((pred < 0) | (pred >= num_classes)).any()):
        raise ValueError(f"pred has values outside [0, {num_classes})")
    n, k = pred.shape[0], num_classes
    image = torch.arange(n, device=pred.device).view(n, 1, 1).expand_as(pred)
    flat = (image * k * k + target * k + pred)[valid]
    conf = torch.bincount(flat, minlength=n * k * k).view(n, k, k)
    return conf if per_image else conf.sum(0)


def scores_from_confusion(conf: torch.Tensor) -> dict[str, torch.Tensor]:
    """mmseg IoUMetric from a (K, K) confusion matrix: mIoU, mAcc, aAcc (float64 scalars) and per-class IoU, Acc."""
    conf = conf.double()
    return scores_from_counts(conf.diagonal(), conf.sum(1), conf.sum(0))


def scores_from_counts(intersect: torch.Tensor, area_label: torch.Tensor, area_pred: torch.Tensor) -> dict:
    """`scores_from_confusion` from per-class counts (float64 (K,)): correct, labelled and predicted pixels. The
    counts add up over images, so a set of images -- a bootstrap resample with repeats too -- is the sum of its
    images' counts (the per-image files of issue 26)."""
    intersect, area_label, area_pred = intersect.double(), area_label.double(), area_pred.double()
    union = area_label + area_pred - intersect
    iou = intersect / union  # 0/0 -> NaN: class in neither
    acc = intersect / area_label  # 0/0 -> NaN: class not in ground truth
    total = area_label.sum()
    aacc = intersect.sum() / total if total > 0 else torch.tensor(math.nan, dtype=torch.float64)
    return {"mIoU": iou.nanmean(), "mAcc": acc.nanmean(), "aAcc": aacc, "IoU": iou, "Acc": acc}


class SegmentationScores(Metric):
    """Accumulates `conf[gt, pred]`; `compute()` -> dict of mIoU, mAcc, aAcc, IoU (per class), Acc (per class).

    `update(preds, target, ids=None)`: preds are labels (N, H, W) or logits (N, K, H, W), target (N, H, W); `ids`
    (N,) non-negative image ids make the result exact under DDP (each id counted once, across ranks too).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int = VOC_NUM_CLASSES, ignore_index: int = IGNORE_INDEX, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        k = num_classes
        self.add_state("anon_confusion", default=torch.zeros(k, k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("confusions", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        if target.ndim == 2:
            target = target.unsqueeze(0)
            preds = preds.unsqueeze(0)
        conf = segmentation_confusion(preds, target, self.num_classes, self.ignore_index, per_image=True)
        if ids is None:
            self.anon_confusion += conf.sum(0).to(self.anon_confusion.device)
            return
        ids = torch.as_tensor(ids, device=conf.device).reshape(-1)
        if ids.numel() != conf.shape[0]:
            raise ValueError(f"{ids.numel()} ids for {conf.shape[0]} images")
        if bool((ids < 0).any()):
            raise ValueError("image ids must be >= 0")
        # kept flat and in the metric's float dtype, like the empty placeholder torchmetrics gathers for a rank
        # that saw no images: all ranks then send tensors of one dtype and rank, which all_gather needs
        if not ids.numel():
            return
        exact = int(2 / torch.finfo(self.dtype).eps)  # 2^24 for float32
        if int(conf.max()) > exact or int(ids.max()) > exact:
            raise ValueError(f"counts or ids above {exact} are not exact in {self.dtype}: use .double()")
        self.confusions.append(conf.reshape(-1).to(self.dtype))
        self.ids.append(ids.to(self.dtype))

    def confusion(self) -> torch.Tensor:
        """The total (K, K) confusion matrix, repeated ids counted once."""
        total = self.anon_confusion.clone()
        confs = _as_tensor(self.confusions)
        if confs is not None and confs.numel():
            ids = _as_tensor(self.ids).round().long()
            uniq, inverse = torch.unique(ids, return_inverse=True)
            first = torch.full((len(uniq),), len(ids), dtype=torch.long, device=ids.device)
            first.scatter_reduce_(0, inverse, torch.arange(len(ids), device=ids.device), reduce="amin")
            confs = confs.round().long().view(-1, self.num_classes, self.num_classes)
            total = total + confs[first].sum(0).to(total.device)
        return total

    def compute(self) -> dict[str, torch.Tensor]:
        return scores_from_confusion(self.confusion())

    def per_image(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, confusion matrices (N, K, K) int64) of the images given with ids, each id once (its first
        matrix), sorted by id; under DDP call it inside `sync_context()` to see every process's images."""
        confs = _as_tensor(self.confusions)
        k = self.num_classes
        if confs is None or not confs.numel():
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, k, k, dtype=torch.long)
        ids = _as_tensor(self.ids).round().long()
        uniq, inverse = torch.unique(ids, return_inverse=True)
        first = torch.full((len(uniq),), len(ids), dtype=torch.long, device=ids.device)
        first.scatter_reduce_(0, inverse, torch.arange(len(ids), device=ids.device), reduce="amin")
        return uniq.cpu(), confs.round().long().view(-1, k, k)[first].cpu()


def per_image_counts(conf: torch.Tensor) -> dict[str, list[float]]:
    """Per-image columns of (N, K, K) confusion matrices: `inter_XX`, `union_XX`, `label_XX` per class (correct,
    predicted-or-labelled, labelled pixels), `correct` and `total` (aAcc's), as float lists."""
    conf = conf.double()
    inter, label, pred = conf.diagonal(dim1=1, dim2=2), conf.sum(2), conf.sum(1)
    out = {}
    for c in range(conf.shape[1]):
        out[f"inter_{c:02d}"] = inter[:, c].tolist()
        out[f"union_{c:02d}"] = (label[:, c] + pred[:, c] - inter[:, c]).tolist()
        out[f"label_{c:02d}"] = label[:, c].tolist()
    out["correct"], out["total"] = inter.sum(1).tolist(), label.sum(1).tolist()
    return out


def counts_statistic(values: dict, metric: str):
    """`positions -> metric` (mIoU / mAcc / aAcc, a fraction) of the summed per-image counts of `values`
    (`per_image_counts` columns as float64 arrays): the row's own value on the full set, bit for bit."""
    import numpy as np

    classes = sorted(int(c[6:]) for c in values if c.startswith("inter_"))
    inter = np.stack([values[f"inter_{c:02d}"] for c in classes], 1)
    union = np.stack([values[f"union_{c:02d}"] for c in classes], 1)
    label = np.stack([values[f"label_{c:02d}"] for c in classes], 1)
    if metric not in ("mIoU", "mAcc", "aAcc"):
        raise ValueError(f"per-image counts give mIoU, mAcc, aAcc, not {metric!r}")

    def statistic(positions) -> float:
        counts = np.bincount(np.asarray(positions).reshape(-1), minlength=len(inter)).astype(np.float64)
        i, u, lab = counts @ inter, counts @ union, counts @ label  # exact: integer counts far below 2^53
        t = torch.from_numpy
        return float(scores_from_counts(t(i), t(lab), t(u - lab + i))[metric])

    return statistic


def _as_tensor(state) -> torch.Tensor | None:
    if isinstance(state, torch.Tensor):
        return state
    return torch.cat(state) if state else None


# ---- person-mask consistency on unannotated photos (issue 29) --------------------------------------------------------
# The reference is the segmenter's own mask on the clean photo; the compressed/restored photo's mask is scored
# against it per image: the foreground IoU and the boundary F-score (the contour accuracy of the DAVIS benchmark,
# Perazzi et al. 2016): an edge measure, because compression moves and frays the mask's outline while barely
# changing its area, which IoU on large masks hardly sees.
BOUNDARY_TOLERANCE = 0.008  # of the image diagonal, as DAVIS's `bound_th` (5 px on a 481 x 321 BSDS500 photo)


def boundary_tolerance(h: int, w: int, fraction: float = BOUNDARY_TOLERANCE) -> int:
    """The matching distance in pixels: `fraction` of the diagonal, rounded up (DAVIS: ceil(0.008 * diagonal))."""
    return max(1, math.ceil(fraction * math.hypot(h, w)))


def mask_boundary(mask) -> np.ndarray:
    """The mask's boundary pixels: foreground pixels with a 4-neighbour in the background. The frame of the image
    is no boundary (an object cut by the photo's edge has no contour there): pixels outside count as their
    nearest inside pixel."""
    m = np.asarray(mask, dtype=bool)
    p = np.pad(m, 1, mode="edge")
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def boundary_f_score(pred, ref, tolerance: int | None = None) -> float:
    """F = 2PR / (P + R) of the boundaries of two (H, W) masks: precision P = share of `pred`'s boundary pixels
    within `tolerance` px (Euclidean) of `ref`'s boundary, recall R = the reverse. Both boundaries empty: 1; one
    empty: 0 (DAVIS's conventions). `tolerance`: `boundary_tolerance(H, W)` when None."""
    from scipy.ndimage import distance_transform_edt

    bp, br = mask_boundary(pred), mask_boundary(ref)
    if bp.shape != br.shape:
        raise ValueError(f"mask shapes differ: {bp.shape} vs {br.shape}")
    tol = boundary_tolerance(*bp.shape) if tolerance is None else tolerance
    if not bp.any() and not br.any():
        return 1.0
    if not bp.any() or not br.any():
        return 0.0
    precision = float((distance_transform_edt(~br)[bp] <= tol).mean())
    recall = float((distance_transform_edt(~bp)[br] <= tol).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def foreground_iou(inter, union) -> np.ndarray:
    """Per-image IoU of the foreground class from its per-image counts (`inter_01`, `union_01`); an image whose
    union is empty (no foreground in either mask) scores 1 (the masks agree)."""
    inter, union = np.asarray(inter, dtype=np.float64), np.asarray(union, dtype=np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)
