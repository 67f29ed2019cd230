"""Downstream evaluator mechanics on the shapes set with small random-init models (numbers of trained models are
checked where they are trained), tiled restoration, and DetectionMAP's dedup."""
import lightning as L
import pytest
import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmark.metrics.detection import DetectionMAP
from benchmark.evaluate.tasks import TaskEvaluator
from lightning_modules.restorers.tiling import restore_tiled
from datamodules.corruptions import Corruption
from datamodules.shapes import CLASSES
from datamodules.tasks import ShapesTaskSet, collate
from lightning_modules import create
from lightning_modules.task_models.detector import build_compact_detector
from lightning_modules.task_models.pspnet import PSPNet, normalize
from lightning_modules.task_models import ShapesClassifier
from tests.coco_reference import coco_map


pytestmark = pytest.mark.usefixtures("single_thread")


class Segmenter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = PSPNet(num_classes=len(CLASSES) + 1, depth=18, stem_channels=8, base_channels=8, channels=16,
                          dilations=(1, 1, 1, 1), strides=(1, 2, 2, 2))

    def forward(self, x):
        return self.net(normalize(x))


@pytest.mark.parametrize("task,model", [
    ("classification", lambda: ShapesClassifier(width=8)),
    ("segmentation", Segmenter),
    ("detection", lambda: build_compact_detector(len(CLASSES) + 1, widths=(8, 8, 8, 8))),
])
def test_evaluator_runs_every_task_through_lightning(task, model):
    torch.manual_seed(0)
    net = model().eval()
    corruptions = [None, Corruption("jpeg", (10,))]
    loaders = [DataLoader(ShapesTaskSet(task, 5, corruption=c), batch_size=2, collate_fn=collate) for c in corruptions]
    ev = TaskEvaluator(task, net, len(corruptions), num_classes=len(CLASSES) + 1)
    L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(ev, loaders, verbose=False)
    assert [r["n_images"] for r in ev.results] == [5, 5]
    key = {"classification": "top1", "segmentation": "mIoU", "detection": "map"}[task]
    for c, res in zip(corruptions, ev.results):  # each value equals a direct computation on the same images
        assert res[key] == pytest.approx(_by_hand(task, net, c, 5), rel=1e-6, abs=1e-9), (task, c)


def _by_hand(task: str, net, corruption, n: int) -> float:
    """In the evaluator's units (top-1 percent, mIoU and mAP fractions), outside it: top-1 by argmax; mIoU by counting
    pixels per class over the set (a class in neither prediction nor truth left out); detection mAP by pycocotools'
    COCOeval run directly."""
    ds = ShapesTaskSet(task, n, corruption=corruption)
    items = [ds[i] for i in range(n)]
    with torch.no_grad():
        x = torch.stack([it[0] for it in items]).float() / 255
        if task == "classification":
            y = torch.stack([it[2] for it in items])
            return 100 * float((net(x).argmax(1) == y).double().mean())
        if task == "segmentation":
            pred, truth = net(x).argmax(1), torch.stack([it[2] for it in items])
            ious = []
            for k in range(len(CLASSES) + 1):
                inter = int(((pred == k) & (truth == k)).sum())
                union = int(((pred == k) | (truth == k)).sum())
                if union:
                    ious.append(inter / union)
            return sum(ious) / len(ious)
        outs = net(list(x))
    return max(coco_map([it[2] for it in items], outs), 0.0)


def test_tiled_restoration_equals_whole_image():
    restorer = create("dncnn")  # 10 conv layers: receptive radius 10 < overlap 16 -> tiles agree exactly
    x = torch.rand(1, 3, 70, 90)
    whole = restorer.restore(x)
    tiled = restore_tiled(restorer, x, tile=40, overlap=16)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="twice the overlap"):
        restore_tiled(restorer, x, tile=20, overlap=16)


def test_detection_map_perfect_and_deduplicated():
    m = DetectionMAP()
    boxes = torch.tensor([[10.0, 10, 40, 40], [50, 50, 90, 80]])
    labels = torch.tensor([1, 2])
    out = {"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": labels}
    tgt = {"boxes": boxes, "labels": labels}
    miss = {"boxes": boxes + 200, "scores": torch.tensor([0.5, 0.4]), "labels": labels}
    m.update([out, miss], [tgt, tgt], torch.tensor([0, 1]))
    # per class: the true positive ranks first (precision 1 up to recall 0.5), the miss after it: COCO's
    # 101-point interpolation gives 51/101
    assert m.compute()["map"] == pytest.approx(51 / 101)
    m.update([miss], [tgt], torch.tensor([1]))  # a padded repeat of image 1 changes nothing
    assert m.compute()["map"] == pytest.approx(51 / 101)
    m2 = DetectionMAP()
    m2.update([out], [tgt], torch.tensor([3]))
    assert m2.compute()["map"] == pytest.approx(1.0)


def test_detection_map_counts_an_image_with_no_boxes_at_all():
    """A photo with no clean detections (no ground truth) whose restored copy gives no detection either is still
    one of the images: the per-image matches cover every photo (else the row got no interval), mAP as COCOeval."""
    from benchmark.metrics.coco_resample import MapResampler
    from benchmark.metrics.detection import coco_map as coco_map_of
    from pycocotools.coco import COCO

    boxes = torch.tensor([[10.0, 10, 40, 40], [50, 50, 90, 80]])
    labels = torch.tensor([1, 2])
    out = {"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": labels}
    tgt = {"boxes": boxes, "labels": labels}
    empty_out = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    empty_tgt = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    miss = {"boxes": boxes + 200, "scores": torch.tensor([0.5, 0.4]), "labels": labels}
    m = DetectionMAP()
    m.update([out, empty_out, miss], [tgt, empty_tgt, tgt], torch.tensor([0, 1, 2]))
    value = m.compute()["map"]
    assert m.matches.n_images == 3 and m.matches.image_ids.tolist() == [0, 1, 2]
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in range(3)], "categories": [{"id": 1}, {"id": 2}],
                  "annotations": [{"id": 1 + k + 2 * j, "image_id": i, "category_id": int(c), "iscrowd": 0,
                                   "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                   "area": (b[2] - b[0]) * (b[3] - b[1])}
                                  for j, i in enumerate((0, 2)) for k, (b, c) in enumerate(zip(boxes.tolist(), labels))]}
    gt.createIndex()
    dets = [{"image_id": i, "category_id": int(c), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)}
            for i, o in ((0, out), (2, miss)) for b, c, s in zip(o["boxes"].tolist(), o["labels"], o["scores"])]
    assert value == pytest.approx(coco_map_of(dets, gt, [0, 1, 2])["map"]) == pytest.approx(51 / 101)
    assert MapResampler(m.matches).scores(np.arange(3))["map"] == pytest.approx(value)
