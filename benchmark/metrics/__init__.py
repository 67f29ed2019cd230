"""Metrics: a functional form and a torchmetrics `Metric` per quantity, per-image means exact under DDP.

- `fidelity`: PSNR, SSIM, PSNR-B with the field's conventions (and `PerImageMean`, `first_per_id`).
- `classification`: top-k accuracy. `detection`: COCO box mAP (COCOeval). `segmentation`: mIoU / mAcc / aAcc.
"""
from benchmark.metrics.fidelity import (
    CHANNELS,
    FUNCTIONAL,
    METRICS,
    METRICS_VERSION,
    MIN_SIDE,
    PSNR,
    PSNR_MAX,
    PSNRB,
    SSIM,
    PerImageMean,
    blocking_effect_factor,
    first_per_id,
    psnr,
    psnrb,
    rgb_to_y,
    ssim,
    to_uint8,
)

__all__ = ["CHANNELS", "FUNCTIONAL", "METRICS", "METRICS_VERSION", "MIN_SIDE", "PSNR", "PSNRB", "PSNR_MAX", "SSIM",
           "PerImageMean", "blocking_effect_factor", "first_per_id", "psnr", "psnrb", "rgb_to_y", "ssim", "to_uint8",
           "task_metric"]


def task_metric(task: str, num_classes: int):
    """The metric of a downstream task: top-1/top-5, COCO mAP, or mIoU/mAcc/aAcc."""
    from benchmark.metrics.classification import TopKAccuracy
    from benchmark.metrics.detection import DetectionMAP
    from benchmark.metrics.segmentation import SegmentationScores
    if task == "classification":
        return TopKAccuracy(k=(1, 5) if num_classes > 5 else (1,))
    if task == "segmentation":
        return SegmentationScores(num_classes=num_classes, ignore_index=255)
    if task == "detection":
        return DetectionMAP()
    raise ValueError(f"unknown task {task!r}")
