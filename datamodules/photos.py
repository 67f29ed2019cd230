"""Unannotated photos for detection: any image folder, or an ImageNet layout whose class names a COCO category.

No annotated COCO images exist offline, so detection on real photos is scored against two references (the scoring
is `benchmark.evaluate.tasks`): the detector's own clean-image detections (consistency mAP), and, where the photo's
ImageNet class is a COCO category (`datamodules.detection.IMAGENET_TO_COCO`), whether that class is found (label
proxy). Items are `(uint8 CHW photo, {"boxes": (0, 4), "labels": (0,), "coco_label": id or 0})`; the boxes are
filled with the clean detections by `WithPseudoBoxes`.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.sources import SCORABLE_MIN_SIDE

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".avif"}


def _wnid_of(path: Path, layout: str) -> str | None:
    """`imagenet-flat`: `<wnid>_*.JPEG`; `imagenet`: the `<wnid>/` folder; a plain folder has no class."""
    if layout == "imagenet-flat":
        return path.name.split("_", 1)[0]
    if layout == "imagenet":
        return path.parent.name
    return None


def photo_paths(root: str | os.PathLike, layout: str = "folder") -> list[Path]:
    """The photos of a folder in name order: its images (`folder`, `imagenet-flat`) or those of its sub-folders
    (`imagenet`)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"photo folder {root} does not exist")
    pattern = "*/*" if layout == "imagenet" else "*"
    paths = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"photo folder {root} holds no {'/'.join(sorted(IMAGE_SUFFIXES))} images"
                                + (" in wnid sub-folders" if layout == "imagenet" else ""))
    return paths


class PhotoDetectionSet(Dataset):
    """Photos decoded once and kept (the first `n`): an unreadable file or one under `SCORABLE_MIN_SIDE` pixels is
    named, skipped and counted (`skipped`); a gray/CMYK one is converted to RGB and counted (`converted`)."""

    def __init__(self, root: str | os.PathLike, layout: str = "folder", n: int | None = None, progress: bool = False):
        from datamodules.classification import ImageError, _bar, load_rgb_noted
        from datamodules.detection import coco_category_of

        paths = photo_paths(root, layout)
        self.images, self.labels, self.names = [], [], []
        self.skipped: list[tuple[str, str]] = []
        self.converted: list[tuple[str, str]] = []
        bar = _bar(len(paths) if n is None else min(n, len(paths)), "decoding", progress)
        for path in paths:
            if n is not None and len(self.images) >= n:
                break
            try:
                px, note = load_rgb_noted(path)
                if min(px.shape[:2]) < SCORABLE_MIN_SIDE:
                    raise ImageError(f"{px.shape[1]}x{px.shape[0]} is smaller than {SCORABLE_MIN_SIDE} px")
            except ImageError as e:
                warnings.warn(f"skipped {path}: {e}", stacklevel=2)
                self.skipped.append((str(path), str(e)))
                continue
            if note:
                self.converted.append((str(path), note))
            self.images.append(torch.from_numpy(np.array(px)).permute(2, 0, 1).contiguous())
            wnid = _wnid_of(path, layout)
            self.labels.append((coco_category_of(wnid) or 0) if wnid else 0)
            self.names.append(path.name)
            bar.update(1)
        bar.close()
        if not self.images:
            raise FileNotFoundError(f"no usable photo in {root} ({len(self.skipped)} skipped)")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                "coco_label": self.labels[i]}


class WithPseudoBoxes(Dataset):
    """The photos with the clean image's detections as their boxes: the ground truth of consistency mAP."""

    def __init__(self, photos: Dataset, boxes: list[dict[str, torch.Tensor]]):
        if len(boxes) != len(photos):
            raise ValueError(f"{len(boxes)} sets of pseudo boxes for {len(photos)} photos")
        self.photos, self.boxes = photos, boxes

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, i: int):
        image, target = self.photos[i]
        return image, {**target, "boxes": self.boxes[i]["boxes"], "labels": self.boxes[i]["labels"]}


class WithPseudoMasks(Dataset):
    """The photos whose clean mask covers at least `min_share` of their pixels, with that mask as their target:
    the reference of person-mask consistency (issue 29). `masks`: the segmenter's (H, W) 0/1 mask on each clean
    photo; `selected` the kept photos' indices, `skipped` the others' (name, share), counted and reported, never
    silently dropped. Items are `(uint8 CHW photo, (H, W) int64 mask)`; `names` follow the selection."""

    def __init__(self, photos: Dataset, masks: list[torch.Tensor], min_share: float):
        if len(masks) != len(photos):
            raise ValueError(f"{len(masks)} masks for {len(photos)} photos")
        if not 0 <= min_share < 1:
            raise ValueError(f"min_share {min_share} must be in [0, 1)")
        self.photos, self.min_share = photos, min_share
        names = list(getattr(photos, "names", None) or getattr(getattr(photos, "base", None), "names", None)
                     or [str(i) for i in range(len(photos))])
        self.shares = [float(m.float().mean()) for m in masks]
        self.selected = [i for i, s in enumerate(self.shares) if s >= min_share and s > 0]
        self.skipped = [(names[i], s) for i, s in enumerate(self.shares) if i not in set(self.selected)]
        self.masks = [masks[i].long() for i in self.selected]
        self.names = [names[i] for i in self.selected]
        if not self.selected:
            raise ValueError(f"no photo's clean mask covers {min_share:.0%} of its pixels "
                             f"({len(self.skipped)} photos skipped; the largest share is {max(self.shares):.1%})")

    def __len__(self) -> int:
        return len(self.selected)

    def __getitem__(self, i: int):
        return self.photos[self.selected[i]][0], self.masks[i]
