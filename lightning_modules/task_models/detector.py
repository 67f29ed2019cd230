"""Detectors that score restored images: torchvision Faster R-CNN, COCO-pretrained R50-FPN or a compact one.

Both builders return a torchvision `FasterRCNN`: input a list of float (3, H, W) tensors in [0, 1] (torchvision's
convention: the model normalises and resizes itself), output in eval mode a list of dicts with `boxes` (xyxy,
input pixels), `labels` (int64) and `scores`; in train mode, given targets, a dict of losses.

Nothing here downloads: weights are local files. The COCO R50-FPN checkpoint is torchvision's own
`fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`; its labels are COCO category ids (91 outputs, 0 = background, the
unused ids are "N/A"), so its predictions feed `benchmark.metrics.detection.coco_map` without remapping.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from lightning_modules.registry import MethodError

R50_FPN_COCO_FILE = "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
R50_FPN_COCO_URL = f"https://download.pytorch.org/models/{R50_FPN_COCO_FILE}"
_MAX_LISTED_KEYS = 20


class DetectorWeightsError(MethodError):
    """A detector weights file that is absent, unreadable or does not fit the model; the message names it."""


def hub_checkpoint_path(filename: str = R50_FPN_COCO_FILE) -> Path:
    """Where torchvision would have cached `filename`: `torch.hub.get_dir()/checkpoints/filename`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _list_keys(keys) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    return shown + (f", ... ({len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else "")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a local `.pth` (plain state dict, or a checkpoint dict holding one under `model` /
    `state_dict`; a DDP `module.` prefix is stripped). Never executes pickled code (`weights_only=True`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DetectorWeightsError(f"detector weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated download, wrong format, pickled objects
        raise DetectorWeightsError(f"could not read detector weights file {path} ({type(e).__name__}: {e}); "
                                   "expected a torch state dict (.pth) as torchvision publishes them") from e
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DetectorWeightsError(f"detector weights file {path} does not hold a state dict "
                                   f"(a mapping of parameter names to tensors); got {type(obj).__name__}")
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_detector_weights(model: nn.Module, path: str | os.PathLike,
                          state_dict: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Load the local state dict file `path` (or `state_dict` already read from it) into `model` strictly; a misfit
    is an error naming the file and listing the missing, unexpected and mis-shaped keys."""
    path = Path(path).expanduser()
    sd = dict(state_dict) if state_dict is not None else read_state_dict(path)
    own = model.state_dict()
    mis_shaped = [f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})"
                  for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = unexpected = []
    if not mis_shaped:
        result = model.load_state_dict(sd, strict=False)
        missing, unexpected = result.missing_keys, result.unexpected_keys
    else:  # FrozenBatchNorm2d drops num_batches_tracked itself; everything else must match by name
        missing = [k for k in own if k not in sd]
        unexpected = [k for k in sd if k not in own and not k.endswith("num_batches_tracked")]
    if mis_shaped or missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_list_keys(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_list_keys(unexpected)}")
        if mis_shaped:
            parts.append(f"keys with another shape ({len(mis_shaped)}): {_list_keys(mis_shaped)}")
        hint = ""
        cls = sd.get("roi_heads.box_predictor.cls_score.weight")
        if cls is not None and hasattr(model, "roi_heads"):
            n_model = model.roi_heads.box_predictor.cls_score.out_features
            if cls.shape[0] != n_model:
                hint = f"; the file has num_classes={cls.shape[0]}, the model {n_model}"
        raise DetectorWeightsError(f"detector weights file {path} does not fit {type(model).__name__}: "
                                   + "; ".join(parts) + hint)
    return model


def build_fasterrcnn_r50_fpn(num_classes: int = 91, weights: str | os.PathLike | None = None, *,
                             random_init: bool = False, trainable_backbone_layers: int = 3,
                             bn_eps: float | None = None, **kwargs) -> FasterRCNN:
    """torchvision's Faster R-CNN ResNet-50-FPN (v1), built exactly as `fasterrcnn_resnet50_fpn(weights=COCO_V1)`
    builds it -- FrozenBatchNorm2d backbone, 3 trainable backbone stages -- but from local weights only.

    - `weights`: a local state-dict file (e.g. torchvision's `fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`).
    - `weights=None`: torchvision's COCO checkpoint from the torch hub cache
      (`torch.hub.get_dir()/checkpoints/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`); absent -> an error saying which
      file to put where. Nothing is downloaded.
    - `random_init=True`: no weights at all (tests, training from scratch).
    - `bn_eps`: FrozenBatchNorm2d eps. None: 0.0 for torchvision's COCO file (torchvision overwrites eps to 0 for
      these legacy weights, part of reproducing their 37.0 box AP), else 1e-5.
    - `**kwargs` go to `FasterRCNN` (`min_size`, `max_size`, `box_score_thresh`, `box_detections_per_img`, ...).
    """
    if random_init and weights is not None:
        raise ValueError("pass either weights=<file> or random_init=True, not both")
    if not random_init and weights is None:
        weights = hub_checkpoint_path()
        if not weights.is_file():
            raise DetectorWeightsError(
                f"no weights for fasterrcnn_resnet50_fpn: put torchvision's COCO checkpoint {R50_FPN_COCO_FILE} "
                f"(from {R50_FPN_COCO_URL}, fetched on a machine with internet) at {weights}, or pass "
                "--task-weights FILE (weights=FILE in Python); nothing is downloaded at run time")
    state_dict = read_state_dict(weights) if weights is not None else None  # a bad file fails before the build
    backbone = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(backbone, trainable_backbone_layers)
    model = FasterRCNN(backbone, num_classes=num_classes, **kwargs)
    if weights is not None:
        load_detector_weights(model, weights, state_dict)
        if bn_eps is None and Path(weights).name == R50_FPN_COCO_FILE:
            bn_eps = 0.0
    if bn_eps is not None:
        overwrite_eps(model, bn_eps)
    return model


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(8, cout), nn.ReLU(inplace=True))


class CompactBackbone(nn.Sequential):
    """Plain conv stack to stride 8. The first layer runs at full resolution, so 3-4 pixel textures (the shapes
    dataset's class cue, what JPEG quantises away) are seen before any subsampling."""

    def __init__(self, widths: tuple[int, ...] = (24, 32, 48, 64)):
        w0, w1, w2, w3 = widths
        super().__init__(_conv(3, w0, 1), _conv(w0, w1, 2), _conv(w1, w1, 1), _conv(w1, w2, 2), _conv(w2, w2, 1),
                         _conv(w2, w3, 2), _conv(w3, w3, 1))
        self.out_channels = w3


def build_compact_detector(num_classes: int, *, widths: tuple[int, ...] = (24, 32, 48, 64),
                           anchor_sizes: tuple[int, ...] = (16, 32, 64, 128),
                           aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0), representation_size: int = 128,
                           min_size: int = 128, max_size: int = 256, backbone: nn.Module | None = None,
                           **kwargs) -> FasterRCNN:
    """A small, randomly initialised torchvision `FasterRCNN` (~0.6 M parameters, ~2.3 MB float32) for the procedural
    shapes data: one stride-8 feature map, one anchor level, RoIAlign 7x7 on it, a 2-layer MLP box head.

    `num_classes` counts the background (torchvision's convention): shapes' 4 classes -> 5, labels 1..4.
    `backbone`: any stride-8 module with `out_channels` instead of `CompactBackbone(widths)` (e.g. a pretrained
    classifier's feature stack). `**kwargs` go to `FasterRCNN` and override the light RPN/RoI sampling defaults.
    """
    backbone = CompactBackbone(widths) if backbone is None else backbone
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    roi_pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, representation_size)
    options = {"rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500, "rpn_pre_nms_top_n_test": 500,
               "rpn_post_nms_top_n_test": 200, "rpn_batch_size_per_image": 128, "box_batch_size_per_image": 128}
    options.update(kwargs)
    return FasterRCNN(backbone, num_classes=None, min_size=min_size, max_size=max_size, rpn_anchor_generator=anchors,
                      box_roi_pool=roi_pool, box_head=box_head,
                      box_predictor=FastRCNNPredictor(representation_size, num_classes), **options)
