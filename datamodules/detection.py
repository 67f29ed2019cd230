"""Detection datasets: the COCO val2017 layout read with pycocotools.

`CocoDetection`: `<root>/val2017/*.jpg` + `<root>/annotations/instances_val2017.json`; items are (uint8 (3, H, W)
tensor, target) with target boxes xyxy float32 in pixels and labels that are COCO category ids (what torchvision's
COCO detectors output, so no remapping). COCO box mAP: `benchmark.metrics.detection`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress on stdout; keep the benchmark's output clean."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def load_coco(ann_file: str | os.PathLike) -> COCO:
    """pycocotools `COCO` from an instances json; a missing or unreadable file is an error naming it."""
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise FileNotFoundError(f"COCO annotation file {ann_file} does not exist")
    try:
        with _quiet():
            return COCO(str(ann_file))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError) as e:
        raise ValueError(f"COCO annotation file {ann_file} is not a valid instances json: {e}") from e


class CocoDetection(torch.utils.data.Dataset):
    """COCO detection images and boxes, in image-id order.

    Item: `(image, target)`; image uint8 (3, H, W) RGB (gray and CMYK files are converted), passed through
    `transform` when given (e.g. a corruption; it must keep the geometry, boxes are not transformed); target
    `{"boxes": float32 (K, 4) xyxy, "labels": int64 (K,) COCO category ids, "image_id": int, "iscrowd": int64 (K,),
    "area": float32 (K,)}` with every annotation of the image, crowd ones flagged (COCOeval ignores them).
    `image_ids` restricts to a subset (evaluate `coco_map(..., image_ids=ds.ids)` then).
    """

    def __init__(self, root: str | os.PathLike, split: str = "val2017", image_ids: Iterable[int] | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        root = Path(root).expanduser()
        self.image_dir = root / split
        self.ann_file = root / "annotations" / f"instances_{split}.json"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder {self.image_dir} does not exist (expected the layout "
                                    f"<root>/{split}/*.jpg with <root>/annotations/instances_{split}.json)")
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file {self.ann_file} does not exist (expected the layout "
                                    f"<root>/{split}/*.jpg with <root>/annotations/instances_{split}.json)")
        self.coco = load_coco(self.ann_file)
        all_ids = sorted(self.coco.getImgIds())
        if image_ids is None:
            self.ids = all_ids
        else:
            self.ids = [int(i) for i in image_ids]
            unknown = sorted(set(self.ids) - set(all_ids))
            if unknown:
                raise KeyError(f"image ids {unknown[:10]} are not in {self.ann_file}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def target(self, index: int) -> dict:
        image_id = self.ids[index]
        anns = self.coco.imgToAnns.get(image_id, [])
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        return {
            "boxes": boxes,
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "image_id": image_id,
            "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64),
            "area": torch.tensor([a.get("area", w * h) for a, (_, _, w, h) in zip(anns, xywh.tolist())],
                                 dtype=torch.float32),
        }

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        path = self.image_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"COCO image {path} (image id {self.ids[index]}) does not exist")
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()
        if self.transform is not None:
            image = self.transform(image)
        return image, self.target(index)


def collate_detection(batch):
    """DataLoader collate for detection: a tuple of images and a tuple of targets (sizes differ)."""
    return tuple(zip(*batch))
