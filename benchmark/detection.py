"""Detection on (possibly compressed) images: COCO val2017 loading and COCO box mAP.

- `CocoDetection`: the COCO layout `<root>/val2017/*.jpg` + `<root>/annotations/instances_val2017.json`, read with
  pycocotools; items are (uint8 (3, H, W) tensor, target) with target boxes xyxy float32 in pixels and labels that
  are COCO category ids (what torchvision's COCO detectors output, so no remapping).
- `coco_map`: the reference number, pycocotools `COCOeval(iouType="bbox")` on COCO-format detections
  (`image_id`, `category_id`, `bbox` = xywh, `score`) against the dataset's own annotation file: `map` is
  AP@[.50:.95] (COCO's "box AP"), `map_50`, `map_75`, `map_small/medium/large`, all floats in 0..1.
  Images evaluated twice (the distributed sampler pads the last batch by repeating images) count once.
- `make_map_metric` / `torchmetrics_map`: the same number through `torchmetrics.detection.MeanAveragePrecision`
  with its pycocotools backend (equal to `coco_map` on the same boxes; its GT comes from the targets, not the
  json, and its DDP sync does not drop padded duplicates). torchmetrics' other backend, `faster_coco_eval`, is
  an optional package that carbench does not install.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")  # COCOeval.stats[0:6]


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


def to_coco_detections(image_id: int, output: Mapping[str, torch.Tensor],
                       label_to_category: Mapping[int, int] | None = None) -> list[dict]:
    """One image's torchvision output (`boxes` xyxy, `labels`, `scores`) -> COCO result dicts (bbox xywh).
    Labels are category ids as they are (torchvision COCO models) or mapped through `label_to_category`."""
    boxes = output["boxes"].detach().float().cpu().reshape(-1, 4)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    labels = output["labels"].detach().cpu().tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    if label_to_category is not None:
        labels = [label_to_category[int(lab)] for lab in labels]
    return [{"image_id": int(image_id), "category_id": int(c), "bbox": b, "score": s}
            for b, c, s in zip(xywh, labels, scores)]


def dedup_by_image(predictions: Iterable[Mapping]) -> list[dict]:
    """Keep the first set of detections per image id. An image's detections are a contiguous run (as produced
    per image); a later run with an id already seen is a repeat (DDP sampler padding, ranks gathered) and dropped."""
    kept, seen, current, keep = [], set(), None, True
    for det in predictions:
        image_id = int(det["image_id"])
        if image_id != current:
            current, keep = image_id, image_id not in seen
            seen.add(image_id)
        if keep:
            kept.append(det)
    return kept


def _as_coco(coco_gt) -> COCO:
    if isinstance(coco_gt, COCO):
        return coco_gt
    if isinstance(coco_gt, (str, os.PathLike)):
        return load_coco(coco_gt)
    if isinstance(getattr(coco_gt, "coco", None), COCO):  # a CocoDetection
        return coco_gt.coco
    raise TypeError(f"coco_gt must be a pycocotools COCO, an annotation json path or a CocoDetection, "
                    f"not {type(coco_gt).__name__}")


def map_backends() -> list[str]:
    """COCOeval implementations that import here: pycocotools always, faster_coco_eval when installed (same
    numbers to 1e-6, several times faster: `benchmark bench` measures it)."""
    import importlib.util

    return ["pycocotools"] + (["faster_coco_eval"] if importlib.util.find_spec("faster_coco_eval") else [])


def _evaluate(gt: COCO, dets: list[dict], ids: list[int], backend: str):
    if backend == "auto":
        backend = map_backends()[-1]
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO as FastCOCO
        from faster_coco_eval import COCOeval_faster

        fast_gt = FastCOCO()
        fast_gt.dataset = gt.dataset
        fast_gt.createIndex()
        ev = COCOeval_faster(fast_gt, fast_gt.loadRes(dets), iouType="bbox")
    elif backend == "pycocotools":
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
    else:
        raise ValueError(f"mAP backend {backend!r}: use auto, pycocotools or faster_coco_eval")
    ev.params.imgIds = ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def coco_map(predictions: Iterable[Mapping], coco_gt, image_ids: Iterable[int] | None = None,
             backend: str = "pycocotools") -> dict[str, float]:
    """COCO box mAP of COCO-format detections with pycocotools' `COCOeval(iouType="bbox")`.

    `predictions`: dicts `image_id, category_id, bbox (x, y, w, h), score`, deduplicated by image (`dedup_by_image`).
    `coco_gt`: pycocotools `COCO`, a path to its json, or a `CocoDetection`.
    `image_ids`: the images that were evaluated (default: every image of `coco_gt`); the ground truth of images
    evaluated but without detections counts as missed, images outside are ignored.
    Returns `MAP_KEYS` -> float in 0..1; no detections -> zeros; NaN where there is no ground truth at all
    (COCOeval's -1, e.g. `map_large` when no object is large).
    `backend`: pycocotools (the reference), faster_coco_eval, or auto (the fastest installed).
    """
    gt = _as_coco(coco_gt)
    known = set(gt.getImgIds())
    ids = sorted(known) if image_ids is None else sorted({int(i) for i in image_ids})
    unknown = sorted(set(ids) - known)
    if unknown:
        raise KeyError(f"image ids {unknown[:10]} are not in the ground truth")
    wanted = set(ids)
    dets = []
    for det in dedup_by_image(predictions):
        image_id = int(det["image_id"])
        if image_id not in known:
            raise KeyError(f"a detection has image id {image_id}, which is not in the ground truth")
        if image_id in wanted:
            dets.append({"image_id": image_id, "category_id": int(det["category_id"]),
                         "bbox": [float(v) for v in det["bbox"]], "score": float(det["score"])})
    n_gt = len(gt.getAnnIds(imgIds=ids, iscrowd=False)) if ids else 0
    if not dets or not ids:
        # pycocotools cannot load an empty result list; with ground truth present every AP is 0
        value = 0.0 if n_gt else math.nan
        return {k: value for k in MAP_KEYS}
    with _quiet():
        stats = _evaluate(gt, dets, ids, backend)
    return {k: (float(v) if v >= 0 else math.nan) for k, v in zip(MAP_KEYS, stats[:6])}


def make_map_metric(backend: str = "pycocotools", **kwargs):
    """torchmetrics' COCO mAP (`MeanAveragePrecision(iou_type="bbox", box_format="xyxy")`) on torchvision-style
    outputs and targets. `backend="faster_coco_eval"` needs that optional package, not installed by carbench."""
    from torchmetrics.detection import MeanAveragePrecision

    return MeanAveragePrecision(iou_type="bbox", box_format="xyxy", backend=backend, **kwargs)


def torchmetrics_map(outputs: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Mapping[str, torch.Tensor]],
                     backend: str = "pycocotools", **kwargs) -> dict[str, float]:
    """`MAP_KEYS` from torchmetrics' MeanAveragePrecision: per image, `outputs[i]` (boxes xyxy, scores, labels)
    against `targets[i]` (boxes xyxy, labels, optional iscrowd/area). -1 (no ground truth) becomes NaN."""
    metric = make_map_metric(backend=backend, **kwargs)
    keep = ("boxes", "labels", "iscrowd", "area")
    with _quiet():
        metric.update([{k: v for k, v in o.items() if k in ("boxes", "scores", "labels")} for o in outputs],
                      [{k: v for k, v in t.items() if k in keep} for t in targets])
        result = metric.compute()
    return {k: (float(result[k]) if float(result[k]) >= 0 else math.nan) for k in MAP_KEYS}
