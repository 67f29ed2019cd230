"""Compact task models for the embedded shapes set, and the thin LightningModule that trains any task model.

Every task model takes float RGB in [0, 1], NCHW (detectors: a list of CHW tensors, torchvision's convention).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.task_model_names import (  # noqa: F401 -- re-exported: this package's names
    DEFAULT_PHOTO_MODEL,
    DEFAULT_REAL_MODEL,
    PACKAGED_CLASSIFIERS,
    PACKAGED_DETECTORS,
    PACKAGED_SEGMENTERS,
    REAL_TASK_MODELS,
    SHAPES_MODEL_TASKS,
    TaskModelError,
    unknown_task_model,
)


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
            pred = self.net(x).argmax(1)
            self.log("val_pix_acc", (pred == target).float().mean(), prog_bar=True)
            # foreground IoU: is each object pixel found with the right class (batch-level, a training signal only)
            fg = (pred > 0) | (target > 0)
            self.log("val_fg_iou", ((pred == target) & fg).sum() / fg.sum().clamp(min=1), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=self.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ---- the compact task models shipped for the shapes set: one table (name -> spec) --------------------------------
class NormalizedSegmenter(nn.Module):
    """[0, 1] RGB -> PSPNet logits; `net` keeps mmseg's key names, so `net.state_dict()` is an mmseg-style checkpoint."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lightning_modules.task_models.pspnet import normalize

        return self.net(normalize(x))


def _shapes_classifier() -> nn.Module:
    return ShapesClassifier(num_classes=4, width=16)


def _shapes_detector() -> nn.Module:
    from lightning_modules.task_models.detector import build_compact_detector

    # the backbone is shapes-cnn's feature stack (stride 8, 64 channels), initialised from its trained weights when
    # training (as real detectors start from an ImageNet classifier); same input scaling as that classifier
    features = ShapesClassifier(num_classes=4, width=16).features
    features.out_channels = 64
    return build_compact_detector(5, backbone=features, image_mean=[0.5] * 3, image_std=[0.25] * 3)


def _shapes_pspnet() -> nn.Module:
    from lightning_modules.task_models.pspnet import PSPNet

    # ResNet-18-V1c-D8 at 1/4 width: the real PSPNet's layout (stem, dilated stages 3-4, PPM 1/2/3/6) in 0.2 M params
    return NormalizedSegmenter(PSPNet(num_classes=5, depth=18, stem_channels=16, base_channels=16, channels=32,
                                      dropout=0.1))


@dataclass(frozen=True)
class TaskModelSpec:
    task: str
    build: Callable[[], nn.Module]
    weights: str  # file under lightning_modules/checkpoints/
    num_classes: int  # detection: with the background
    description: str


SHAPES_TASK_MODELS = {
    "shapes-cnn": TaskModelSpec("classification", _shapes_classifier, "shapes_cnn.pt", 4,
                                "6-layer CNN, max-pooled head (shapes classes)"),
    "shapes-frcnn": TaskModelSpec("detection", _shapes_detector, "shapes_frcnn.pt", 5,
                                  "torchvision FasterRCNN on shapes-cnn's stride-8 features, one anchor level"),
    "shapes-pspnet": TaskModelSpec("segmentation", _shapes_pspnet, "shapes_pspnet.pt", 5,
                                   "PSPNet ResNet-18-V1c-D8 at 1/4 width, PPM 1/2/3/6 (mmseg key names)"),
}
DEFAULT_SHAPES_MODEL = {spec.task: name for name, spec in SHAPES_TASK_MODELS.items()}

# the names (real models, packaged ones, defaults; SHAPES_MODEL_TASKS mirrors the table above) and TaskModelError
# live in lightning_modules.task_model_names: the command line checks --task-model before torch is imported


@dataclass
class TaskModel:
    net: nn.Module  # takes [0, 1] RGB
    name: str
    num_classes: int
    weights: str
    preprocess: object = None  # classifiers: efficientnet_lite.Preprocess (None: the ImageNet-C 256/224 bilinear)
    # the user-given weights file (--task-weights; a TF.js graph: its .bin) whose sha256 rows record in
    # model_weights_sha256 and key on; "" for the default weights (shipped, packaged or pinned and checked)
    weights_file: str = ""


class MMSegInference(nn.Module):
    """mmseg's VOC test pipeline around a PSPNet: keep-ratio resize to fit `scale`, 'whole' (or 'slide') inference,
    logits resized back to the input size."""

    def __init__(self, net: nn.Module, scale: tuple[int, int] = (2048, 512), mode: str = "whole"):
        super().__init__()
        self.net, self.scale, self.mode = net, scale, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from lightning_modules.task_models.pspnet import mmseg_test_size, normalize, slide_inference, whole_inference

        h, w = x.shape[-2:]
        size = mmseg_test_size(h, w, self.scale)
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False) if size != (h, w) else x
        y = normalize(y)
        logits = whole_inference(self.net, y) if self.mode == "whole" else slide_inference(self.net, y)
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)


# the npm-packaged graphs (human_models): (task, name) -> (module, builder, number of classes the output carries)
_PACKAGED_BUILDERS = {("detection", "centernet_mbv3"): ("centernet", "build_centernet_mbv3", 91),
                      ("detection", "nanodet_g"): ("nanodet", "build_nanodet_g", 91),
                      ("segmentation", "selfie_seg"): ("selfie", "build_selfie_seg", 2),  # (background, person)
                      ("segmentation", "meet_seg"): ("meet", "build_meet_seg", 2)}


def create_task_model(task: str, name: str | None = None, weights: str | None = None) -> TaskModel:
    """The network a downstream task is scored with. `name=None` -> the shipped shapes model of the task.

    Shapes models load their shipped checkpoint (or `weights`); real models read local files only (see
    `lightning_modules.task_models.classifier`, `.detector`, `.pspnet`) and say which file to put where when it is missing.
    """
    from lightning_modules.registry import find_weights, mismatch_report, weight_search_dirs

    name = name or DEFAULT_SHAPES_MODEL[task]
    if name in SHAPES_TASK_MODELS:
        spec = SHAPES_TASK_MODELS[name]
        if spec.task != task:
            raise TaskModelError(f"task model {name!r} is a {spec.task} model, not {task}")
        path = Path(weights) if weights else find_weights(spec.weights)
        if path is None or not path.is_file():
            where = weights or f"{spec.weights!r} in one of: " + ", ".join(map(str, weight_search_dirs()))
            raise TaskModelError(f"{name}: weights file {where} not found; retrain it with "
                                 f"`benchmark train --task {task}`")
        net = spec.build()
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
        target = getattr(net, "net", net)
        problems = mismatch_report(target.state_dict(), state)
        if problems:
            raise TaskModelError(f"{name}: weights {path} do not fit: " + "; ".join(problems))
        target.load_state_dict(state)
        return TaskModel(net.eval(), name, spec.num_classes, str(path), weights_file=str(path) if weights else "")
    if task == "classification" and name in PACKAGED_CLASSIFIERS:
        from lightning_modules.task_models.efficientnet_lite import build_efficientnet_lite

        try:
            net, prep, label = build_efficientnet_lite(name, weights)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise TaskModelError(f"classifier {name!r}: {e}") from e
        return TaskModel(net, name, 1000, f"{label} ({prep.describe()})", prep, str(weights or ""))
    if task == "classification":
        from lightning_modules.task_models.classifier import build_classifier

        try:
            net = build_classifier(name, weights)
        except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
            raise TaskModelError(f"classifier {name!r}: {e}") from e
        return TaskModel(net.eval(), name, 1000, str(getattr(net, "weights", "") or ""),
                         weights_file=str(weights or ""))
    if (task, name) in _PACKAGED_BUILDERS:
        import importlib

        from lightning_modules.task_models.human_models import describe, pinned_model_files

        module, builder, classes = _PACKAGED_BUILDERS[task, name]
        try:
            # the installed files are checked against their pinned sha256; a user's file is recorded by its own
            graph = Path(weights) if weights else pinned_model_files(name.split("_")[0])[0]
            net = getattr(importlib.import_module(f"lightning_modules.task_models.{module}"), builder)(graph)
            label = str(graph) if weights else describe(graph)
        except (ValueError, FileNotFoundError) as e:  # GraphError / the missing-file error name the file
            raise TaskModelError(f"{name}: {e}") from e
        # the weights' bytes are in the .bin beside the graph
        return TaskModel(net, name, classes, label, weights_file=str(graph.with_suffix(".bin")) if weights else "")
    if task == "detection" and name in REAL_TASK_MODELS["detection"]:
        from lightning_modules.task_models.detector import build_fasterrcnn_r50_fpn

        try:
            net = build_fasterrcnn_r50_fpn(weights=weights)
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise TaskModelError(str(e)) from e
        return TaskModel(net.eval(), name, 91, str(weights or ""), weights_file=str(weights or ""))
    if task == "segmentation" and name in REAL_TASK_MODELS["segmentation"]:
        from lightning_modules.task_models.pspnet import PSPNet, load_mmseg_checkpoint

        if weights is None:
            raise TaskModelError("pspnet_r50-d8 needs --task-weights FILE: mmseg's VOC checkpoint "
                                 "(pspnet_r50-d8_512x512_20k_voc12aug_20200617_101958-ed5dfbd9.pth from the "
                                 "mmsegmentation model zoo, fetched on a machine with internet)")
        net = PSPNet()
        try:
            load_mmseg_checkpoint(weights, net)
        except (ValueError, FileNotFoundError) as e:
            raise TaskModelError(str(e)) from e
        return TaskModel(MMSegInference(net).eval(), name, 21, str(weights), weights_file=str(weights))
    if task == "segmentation" and name.startswith("mmseg:"):
        from lightning_modules.task_models.mmseg_adapter import MMSegSegmenter

        if weights is None:
            raise TaskModelError(f"{name} needs --task-weights: the checkpoint of that mmseg config")
        try:
            net = MMSegSegmenter(name.split(":", 1)[1], weights)
        except ImportError as e:
            raise TaskModelError(str(e)) from e
        return TaskModel(net, name, int(net.model.decode_head.num_classes), str(weights),
                         weights_file=str(weights))
    raise unknown_task_model(task, name)

