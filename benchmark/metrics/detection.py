"""COCO box mAP (the dataset: `datamodules.detection.CocoDetection`).

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

import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchmetrics import Metric

from datamodules.detection import _quiet, load_coco

MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")  # COCOeval.stats[0:6]


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


def _evaluate(gt: COCO, dets: list[dict], ids: list[int], backend: str, matches: list | None = None):
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
    if matches is not None:  # the per-image results behind the number (benchmark.metrics.coco_resample)
        from benchmark.metrics.coco_resample import matches_from_eval

        if backend != "pycocotools":
            pe = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
            pe.params.imgIds = ids
            pe.evaluate()
            matches.append(matches_from_eval(pe))
        else:
            matches.append(matches_from_eval(ev))
    ev.accumulate()
    ev.summarize()
    return ev.stats


def coco_map(predictions: Iterable[Mapping], coco_gt, image_ids: Iterable[int] | None = None,
             backend: str = "pycocotools", matches: list | None = None) -> dict[str, float]:
    """COCO box mAP of COCO-format detections with pycocotools' `COCOeval(iouType="bbox")`.

    `predictions`: dicts `image_id, category_id, bbox (x, y, w, h), score`, deduplicated by image (`dedup_by_image`).
    `coco_gt`: pycocotools `COCO`, a path to its json, or a `CocoDetection`.
    `image_ids`: the images that were evaluated (default: every image of `coco_gt`); the ground truth of images
    evaluated but without detections counts as missed, images outside are ignored.
    Returns `MAP_KEYS` -> float in 0..1; no detections -> zeros; NaN where there is no ground truth at all
    (COCOeval's -1, e.g. `map_large` when no object is large).
    `backend`: pycocotools (the reference), faster_coco_eval, or auto (the fastest installed).
    `matches`: a list that gets the per-image matching results (`coco_resample.Matches`, images in increasing id
    order) from which `coco_resample.MapResampler` recomputes these numbers on any resample of the images.
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
        if matches is not None:
            matches.append(_gt_only_matches(gt, ids))
        value = 0.0 if n_gt else math.nan
        return {k: value for k in MAP_KEYS}
    with _quiet():
        stats = _evaluate(gt, dets, ids, backend, matches)
    return {k: (float(v) if v >= 0 else math.nan) for k, v in zip(MAP_KEYS, stats[:6])}


def _gt_only_matches(gt: COCO, ids: list[int]):
    """Per-image results without any detection: the non-ignored ground truths per (image, category), as COCOeval
    counts them (not crowd, not `ignore`, area inside areaRng all)."""
    from benchmark.metrics.coco_resample import _P, _build

    lo, hi = _P.areaRng[_P.areaRngLbl.index("all")]
    pos = {i: k for k, i in enumerate(ids)}
    counts: dict = {}
    for a in gt.loadAnns(gt.getAnnIds(imgIds=ids)):
        if not (a.get("ignore", 0) or a.get("iscrowd", 0) or a["area"] < lo or a["area"] > hi):
            key = (pos[a["image_id"]], a["category_id"])
            counts[key] = counts.get(key, 0) + 1
    return _build(len(ids), [], [(i, c, n) for (i, c), n in counts.items()], ids)


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
        # (block, image_id) of every scored image: one with neither detections nor ground truth still counts as
        # an image of the set (its per-image results are empty), so the matches cover every photo
        self.add_state("heads", default=[], dist_reduce_fx="cat")
        self._blocks = 0
        self.matches = None  # per-image results of the last compute (coco_resample.Matches; positions = sorted ids)

    def update(self, outputs: list[dict], targets: list[dict], ids: torch.Tensor) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        for out, tgt, i in zip(outputs, targets, ids.tolist()):
            self._blocks += 1
            # float64: a float32 block id of rank 1 (2**31 + k) would round to 2**31 and no longer name its image
            head = torch.tensor([[float(rank * 2**31 + self._blocks), float(i)]], dtype=torch.float64)
            self.heads.append(head)
            n, m = len(out["boxes"]), len(tgt["boxes"])
            self.dets.append(torch.cat([head.expand(n, 2), out["boxes"].detach().float().cpu(),
                                        out["scores"].detach().float().cpu()[:, None],
                                        out["labels"].detach().float().cpu()[:, None]], 1).double())
            self.gts.append(torch.cat([head.expand(m, 2), tgt["boxes"].float().cpu(),
                                       tgt["labels"].float().cpu()[:, None]], 1).double())

    def compute(self) -> dict[str, float]:
        gts, dets = _rows(self.gts, 7).numpy(), _rows(self.dets, 8).numpy()
        heads = _rows(self.heads, 2).numpy()  # (block, image) in arrival order
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
        matches: list = []
        out = coco_map(preds, coco, images.astype(int).tolist(), self.backend, matches)
        self.matches = matches[0] if matches else None
        return out


def _rows(state, width: int) -> torch.Tensor:
    if isinstance(state, list):
        return torch.cat(state) if state else torch.zeros(0, width, dtype=torch.float64)
    return state.reshape(-1, width)


LABEL_PROXY_SCORE = 0.3  # a detection "finds" the photo's class at this confidence (and consistency GT keeps these)


class LabelProxy(Metric):
    """Share of labelled photos (target `coco_label` > 0: the ImageNet class is a COCO category) where a detection
    of that category scores >= `score`: a label-based check of real photos without boxes. Per image, an image id
    seen twice (DDP padding) counts once. `compute` -> {"label_proxy": fraction, "n_label": labelled photos}."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, score: float = LABEL_PROXY_SCORE, **kwargs):
        super().__init__(**kwargs)
        self.score = score
        self.add_state("rows", default=[], dist_reduce_fx="cat")  # (image id, hit)
        self.hits = None  # (image ids, 0/1 hits) of the last compute, each labelled photo once, by id

    def update(self, outputs: list[dict], targets: list[dict], ids: torch.Tensor) -> None:
        for out, tgt, i in zip(outputs, targets, ids.tolist()):
            label = int(tgt.get("coco_label", 0))
            if label > 0:
                found = ((out["labels"] == label) & (out["scores"] >= self.score)).any()
                self.rows.append(torch.tensor([[float(i), float(found)]], dtype=torch.float64))

    def compute(self) -> dict[str, float]:
        rows = _rows(self.rows, 2)
        _, first = np.unique(rows[:, 0].numpy(), return_index=True)
        hits = rows[first, 1]
        self.hits = (rows[first, 0].numpy().astype(np.int64), hits.numpy().astype(np.float64))
        return {"label_proxy": float(hits.mean()) if len(hits) else math.nan, "n_label": len(hits)}
