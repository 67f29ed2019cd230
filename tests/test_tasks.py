"""Downstream evaluator mechanics on the shapes set with small random-init models (numbers of trained models are
checked where they are trained), tiled restoration, and DetectionMAP's dedup."""
import lightning as L
import pytest
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
    assert all(key in r for r in ev.results)
    if task == "classification":  # top-1 equals a direct computation
        ds = ShapesTaskSet(task, 5)
        with torch.no_grad():
            x = torch.stack([ds[i][0] for i in range(5)]).float() / 255
            y = torch.tensor([int(ds[i][2]) for i in range(5)])
            assert ev.results[0]["top1"] == pytest.approx(100 * float((net(x).argmax(1) == y).float().mean()))


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
