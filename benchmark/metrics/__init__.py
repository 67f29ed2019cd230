"""Metrics: a functional form and a torchmetrics `Metric` per quantity, per-image means exact under DDP.

- `fidelity`: PSNR, SSIM, PSNR-B with the field's conventions (and `PerImageMean`, `first_per_id`); `compiled`: the
  opt-in fused PSNR / PSNR-B kernels (`compile_kernels()`, identical values, for processes scoring thousands of images).
- `perceptual`: LPIPS from local weights (the `lpips` wheel's heads, torchvision's backbone file).
- `distribution`: FID / KID of a whole set from a local Inception file (torch-fidelity's; the `fid` extra).
- `classification`: top-k accuracy. `detection`: COCO box mAP (COCOeval). `segmentation`: mIoU / mAcc / aAcc.
"""
import importlib

# the package's names, imported on first use (PEP 562): `benchmark.metrics.paired` (the board comparisons) and the
# other light modules load without torch; `from benchmark.metrics import PSNR` works as before
_LAZY = {
    "distribution": ("FID", "KID", "InceptionWeightsError", "InceptionWeightsMissing", "MissingExtra",
                     "SetLevelDDPError", "refuse_ddp"),
    "fidelity": ("CHANNELS", "FUNCTIONAL", "METRICS", "METRICS_VERSION", "MIN_SIDE", "PSNR", "PSNR_MAX", "PSNRB", "SSIM",
                 "PerImageMean", "blocking_effect_factor", "first_per_id", "psnr", "psnrb", "rgb_to_y", "ssim",
                 "to_uint8"),
    "compiled": ("compile_kernels",),
    "perceptual": ("LPIPS", "PerceptualWeightsError", "PerceptualWeightsMissing", "lpips"),
}
_FROM = {name: module for module, names in _LAZY.items() for name in names}
_RENAMED = {"DISTRIBUTION_METRICS": ("distribution", "METRICS"), "PERCEPTUAL_METRICS": ("perceptual", "METRICS")}


def _default_metrics() -> tuple:
    # every fidelity row carries PSNR, SSIM and PSNR-B (a row without them would replace a complete one on the
    # board); the perceptual and set-level metrics are added on request (`benchmark run --metrics ...,lpips,fid,kid`)
    return tuple(__getattr__("METRICS"))


def _fidelity_metrics_table() -> dict:
    return {**__getattr__("METRICS"), **__getattr__("PERCEPTUAL_METRICS"), **__getattr__("DISTRIBUTION_METRICS")}


def __getattr__(name: str):
    if name in _FROM:
        value = getattr(importlib.import_module(f"benchmark.metrics.{_FROM[name]}"), name)
    elif name in _RENAMED:
        module, attr = _RENAMED[name]
        value = getattr(importlib.import_module(f"benchmark.metrics.{module}"), attr)
    elif name == "DEFAULT_METRICS":
        value = _default_metrics()
    elif name == "FIDELITY_METRICS":
        value = _fidelity_metrics_table()
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = ["CHANNELS", "DEFAULT_METRICS", "DISTRIBUTION_METRICS", "FID", "FIDELITY_METRICS", "FUNCTIONAL", "KID",
           "LPIPS", "METRICS", "METRICS_VERSION", "MIN_SIDE", "PERCEPTUAL_METRICS", "PSNR", "PSNRB", "PSNR_MAX", "SSIM",
           "InceptionWeightsError", "InceptionWeightsMissing", "MissingExtra", "PerImageMean",
           "PerceptualWeightsError", "PerceptualWeightsMissing", "SetLevelDDPError", "blocking_effect_factor",
           "compile_kernels", "fidelity_metrics", "first_per_id", "lpips", "psnr", "psnrb", "refuse_ddp", "rgb_to_y", "ssim",
           "task_metric", "to_uint8"]


def fidelity_metrics(names) -> tuple[str, ...]:
    """The metrics a fidelity run computes for requested `names` (a list or a comma string): PSNR, SSIM and PSNR-B
    always, then the requested extras in the order given. An unknown name is a ValueError listing the known ones."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = [n.lower() for n in names]
    known = __getattr__("FIDELITY_METRICS")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}: known metrics are {', '.join(known)}")
    return tuple(dict.fromkeys([*__getattr__("DEFAULT_METRICS"), *names]))


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
