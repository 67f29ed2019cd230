"""pycocotools' COCOeval run directly on boxes: the independent reference the detection tests compare mAP with.
Test code only."""
from __future__ import annotations


def coco_map(truths, outputs) -> float:
    """COCOeval's box mAP (stats[0], a fraction; 0.0 when there is no detection at all) of per-image outputs
    ({"boxes" xyxy, "labels", "scores"}) against per-image truths ({"boxes" xyxy, "labels"}), both lists over the
    same images."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gts, preds = [], []
    for i, (truth, out) in enumerate(zip(truths, outputs)):
        for (x1, y1, x2, y2), c in zip(truth["boxes"].tolist(), truth["labels"].tolist()):
            gts.append({"id": len(gts) + 1, "image_id": i, "category_id": int(c), "iscrowd": 0,
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        preds += [{"image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
                  for (x1, y1, x2, y2), c, s in zip(out["boxes"].tolist(), out["labels"].tolist(),
                                                    out["scores"].tolist())]
    if not preds:
        return 0.0
    coco = COCO()
    cats = sorted({a["category_id"] for a in gts} | {p["category_id"] for p in preds})
    coco.dataset = {"images": [{"id": i} for i in range(len(truths))], "categories": [{"id": c} for c in cats],
                    "annotations": gts}
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(preds), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0])
