"""Segmentation datasets: the PASCAL VOC 2012 layout (mIoU / mAcc / aAcc: `benchmark.metrics.segmentation`)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

VOC_NUM_CLASSES = 21


IGNORE_INDEX = 255


class VOCSegmentation(Dataset):
    """PASCAL VOC 2012 segmentation: `root/JPEGImages/<name>.jpg`, `root/SegmentationClass/<name>.png` (palette
    PNG: the palette index is the class id, 255 = ignore), names listed in `root/ImageSets/Segmentation/<split>.txt`.

    `root` is the `VOC2012` folder (a `VOCdevkit` folder holding `VOC2012` also works). Items are
    `(image uint8 (3, H, W) RGB, mask int64 (H, W), {"index": i, "name": name})`. Images differ in size: use
    batch size 1 or `collate_list`.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", image_dir: str = "JPEGImages",
                 mask_dir: str = "SegmentationClass"):
        root = Path(root)
        if not (root / "ImageSets").exists() and (root / "VOC2012" / "ImageSets").exists():
            root = root / "VOC2012"
        self.root = root
        self.split = split
        self.image_dir = root / image_dir
        self.mask_dir = root / mask_dir
        split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        for path, what in ((root, "VOC2012 folder"), (split_file, "split list"), (self.image_dir, "image folder"),
                           (self.mask_dir, "mask folder")):
            if not path.exists():
                raise FileNotFoundError(f"VOC {what} not found: expected {path}")
        self.names = [ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()]
        if not self.names:
            raise ValueError(f"{split_file} lists no images")

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.names[index]}.jpg"

    def mask_path(self, index: int) -> Path:
        return self.mask_dir / f"{self.names[index]}.png"

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        from PIL import Image

        name = self.names[index]
        img_path, mask_path = self.image_path(index), self.mask_path(index)
        for p in (img_path, mask_path):
            if not p.is_file():
                raise FileNotFoundError(f"VOC image {name!r}: expected {p}")
        with Image.open(img_path) as im:
            img = np.asarray(im.convert("RGB"))
        with Image.open(mask_path) as m:
            if m.mode not in ("P", "L"):
                raise ValueError(f"{mask_path}: mask mode {m.mode!r}; expected a palette ('P') or 'L' PNG whose "
                                 "values are class ids")
            mask = np.asarray(m)
        if mask.shape != img.shape[:2]:
            raise ValueError(f"{mask_path}: mask {mask.shape} does not match image {img.shape[:2]} ({img_path})")
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return image, torch.from_numpy(mask.astype(np.int64)), {"index": index, "name": name}


def collate_list(batch):
    """Collate variable-size items into (list of images, list of masks, list of metas)."""
    images, masks, metas = zip(*batch)
    return list(images), list(masks), list(metas)
