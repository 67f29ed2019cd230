"""Detection: COCO loading, COCOeval mAP on hand-placed boxes (and torchmetrics agreeing), detector builders."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.detection import CocoDetection
from benchmark.metrics.detection import coco_map, dedup_by_image, to_coco_detections, torchmetrics_map
from lightning_modules.task_models.detector import (
    R50_FPN_COCO_FILE,
    DetectorWeightsError,
    build_compact_detector,
    build_fasterrcnn_r50_fpn,
)

# two images, three boxes (x, y, w, h), two categories with non-contiguous COCO ids
IMAGES = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
          {"id": 2, "file_name": "b.jpg", "width": 50, "height": 40}]
GT = {1: (1, 1, [4, 6, 20, 24]),  # annotation id: (image id, category id, bbox)
      2: (1, 3, [30, 10, 26, 16]),
      3: (2, 1, [10, 8, 24, 20])}


@pytest.fixture
def coco_root(tmp_path):
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "val2017" / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8), "L").save(root / "val2017" / "b.jpg")  # gray
    anns = [{"id": aid, "image_id": iid, "category_id": cid, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for aid, (iid, cid, box) in GT.items()]
    doc = {"images": IMAGES, "annotations": anns,
           "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                          {"id": 3, "name": "car", "supercategory": "vehicle"}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    return root


def det(aid, score, dx=0.0):
    """A detection of annotation `aid`'s box shifted right by dx pixels."""
    iid, cid, (x, y, w, h) = GT[aid]
    return {"image_id": iid, "category_id": cid, "bbox": [x + dx, y, w, h], "score": score}


def to_outputs(dets, image_ids=(1, 2)):
    """COCO detections -> torchvision-style per-image outputs (xyxy) for torchmetrics."""
    out = []
    for iid in image_ids:
        mine = [d for d in dets if d["image_id"] == iid]
        xywh = torch.tensor([d["bbox"] for d in mine], dtype=torch.float32).reshape(-1, 4)
        out.append({"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                    "scores": torch.tensor([d["score"] for d in mine], dtype=torch.float32),
                    "labels": torch.tensor([d["category_id"] for d in mine], dtype=torch.int64)})
    return out


def test_loader_yields_rgb_uint8_and_xyxy_boxes(coco_root):
    ds = CocoDetection(coco_root)
    assert len(ds) == 2 and ds.ids == [1, 2]
    img, t = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, 48, 64)
    assert t["image_id"] == 1
    assert t["boxes"].tolist() == [[4, 6, 24, 30], [30, 10, 56, 26]]
    assert t["labels"].tolist() == [1, 3] and t["iscrowd"].tolist() == [0, 0]
    img, t = ds[1]
    assert img.shape == (3, 40, 50)  # gray file -> RGB
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert t["boxes"].tolist() == [[10, 8, 34, 28]] and t["labels"].tolist() == [1]


def test_loader_errors_name_the_expected_path(coco_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere" / "val2017")):
        CocoDetection(tmp_path / "nowhere")
    (coco_root / "annotations" / "instances_val2017.json").unlink()
    with pytest.raises(FileNotFoundError, match=str(coco_root / "annotations" / "instances_val2017.json")):
        CocoDetection(coco_root)


PERFECT = [det(1, 0.9), det(2, 0.8), det(3, 0.7)]
# half-width shift: intersection w/2, union 3w/2 -> IoU 1/3 < 0.5 for every box
ALL_MISS = [det(1, 0.9, dx=10), det(2, 0.8, dx=13), det(3, 0.7, dx=12)]
# COCOeval per category, 101 recall points r = 0, 0.01, ..., 1; precision at r = the best precision at recall >= r
# (0 where recall r is never reached); AP = mean over r, then mean over categories, then over IoU .50:.05:.95.
# Car (id 3): its one box found exactly -> AP 1. Person (id 1): 2 boxes, A found exactly with the top score, C hit
# at IoU 1/3 (a false positive) with a lower score: recall reaches 0.5 at precision 1, never more -> the 51 points
# r = 0..0.50 have precision 1, the 50 above 0 -> AP 51/101. Same at every IoU threshold (exact boxes, IoU 1).
HALF_FOUND = [det(1, 0.9), det(2, 0.8), det(3, 0.3, dx=12)]
HALF_FOUND_MAP = (1 + 51 / 101) / 2
# The same with the false positive ranked first: precision 0 then 1/2 at recall 1/2; the interpolated precision
# is 1/2 for all 51 points r <= 0.5 -> person AP 25.5/101.
FP_FIRST = [det(1, 0.9), det(2, 0.8), det(3, 0.95, dx=12)]
FP_FIRST_MAP = (1 + 25.5 / 101) / 2
# Car box (w 26) shifted by 6: IoU 20/32 = 0.625 -> a hit at thresholds .50, .55, .60, a miss at the 7 above;
# person is perfect. Per threshold mAP (1 + 1)/2 three times, (1 + 0)/2 seven times -> (3 + 3.5)/10 = 0.65.
IOU_0625 = [det(1, 0.9), det(2, 0.8, dx=6), det(3, 0.7)]


@pytest.mark.parametrize("dets, expect", [
    (PERFECT, {"map": 1.0, "map_50": 1.0, "map_75": 1.0}),
    (ALL_MISS, {"map": 0.0, "map_50": 0.0, "map_75": 0.0}),
    (HALF_FOUND, {"map": HALF_FOUND_MAP, "map_50": HALF_FOUND_MAP, "map_75": HALF_FOUND_MAP}),
    (FP_FIRST, {"map": FP_FIRST_MAP, "map_50": FP_FIRST_MAP, "map_75": FP_FIRST_MAP}),
    (IOU_0625, {"map": 0.65, "map_50": 1.0, "map_75": 0.5}),
], ids=["perfect", "all-miss", "half-found", "fp-first", "iou-0.625"])
def test_coco_map_on_hand_placed_boxes(coco_root, dets, expect):
    ds = CocoDetection(coco_root)
    got = coco_map(dets, ds)
    for key, value in expect.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    # all boxes are small (area < 32^2); medium/large have no ground truth -> NaN, not a number that looks like 0
    assert got["map_small"] == pytest.approx(got["map"]) and math.isnan(got["map_large"])
    # torchmetrics' MeanAveragePrecision (pycocotools backend) gives the same numbers
    tm = torchmetrics_map(to_outputs(dets), [ds[i][1] for i in range(len(ds))])
    for key in ("map", "map_50", "map_75", "map_small"):
        assert tm[key] == pytest.approx(got[key], abs=1e-6), key


def test_torchmetrics_equals_cocoeval_on_jittered_boxes(coco_root):
    ds = CocoDetection(coco_root)
    rng = np.random.default_rng(1)
    dets = []
    for aid in GT:
        for _ in range(4):  # four jittered guesses per box, some with the wrong category
            d = det(aid, float(rng.uniform(0.05, 1.0)), dx=float(rng.normal(0, 3)))
            d["bbox"][1] += float(rng.normal(0, 3))
            if rng.random() < 0.2:
                d["category_id"] = 4 - d["category_id"]  # 1 <-> 3
            dets.append(d)
    got = coco_map(dets, ds)
    tm = torchmetrics_map(to_outputs(dets), [ds[i][1] for i in range(len(ds))])
    assert 0.0 < got["map"] < 1.0
    for key in ("map", "map_50", "map_75"):
        assert tm[key] == pytest.approx(got[key], abs=1e-6), key


def test_coco_map_without_detections_is_zero(coco_root):
    assert coco_map([], CocoDetection(coco_root)) == {k: 0.0 for k in coco_map([], CocoDetection(coco_root))}
    assert coco_map([], coco_root / "annotations" / "instances_val2017.json")["map"] == 0.0


def test_coco_map_restricted_to_evaluated_images(coco_root):
    ds = CocoDetection(coco_root)
    only_first = [det(1, 0.9), det(2, 0.8)]
    assert coco_map(only_first, ds, image_ids=[1])["map"] == pytest.approx(1.0)
    assert coco_map(only_first, ds)["map"] == pytest.approx(HALF_FOUND_MAP)  # image 2's box counted as missed
    with pytest.raises(KeyError, match="7"):
        coco_map([dict(det(1, 0.9), image_id=7)], ds)


def test_dedup_keeps_first_set_per_image(coco_root):
    ds = CocoDetection(coco_root)
    # a DDP rank re-evaluated image 1 (sampler padding); its second set (misses here) must not count
    repeated = PERFECT + [det(1, 0.99, dx=10), det(2, 0.98, dx=13)]
    assert dedup_by_image(repeated) == PERFECT
    assert coco_map(repeated, ds)["map"] == pytest.approx(1.0)
    interleaved = [det(1, 0.9), det(2, 0.8), det(3, 0.7), det(1, 0.5, dx=10)]
    assert dedup_by_image(interleaved) == interleaved[:3]


def test_to_coco_detections_round_trip():
    out = {"boxes": torch.tensor([[4.0, 6.0, 24.0, 30.0]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.5])}
    assert to_coco_detections(1, out) == [{"image_id": 1, "category_id": 1, "bbox": [4.0, 6.0, 20.0, 24.0],
                                           "score": 0.5}]
    assert to_coco_detections(1, out, {1: 18})[0]["category_id"] == 18


# --- detectors -------------------------------------------------------------------------------------------------

SMALL = {"min_size": 64, "max_size": 64, "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 50}  # CPU-cheap


@pytest.fixture(scope="module")
def r50_file(tmp_path_factory):
    """A random-init torchvision R50-FPN (plain BatchNorm, 3 classes) with non-trivial BN statistics, saved."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    ref = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, **SMALL)
    g = torch.Generator().manual_seed(0)
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    path = tmp_path_factory.mktemp("r50") / "r50.pth"
    torch.save(ref.state_dict(), path)
    return ref.eval(), path


def test_r50_loads_a_torchvision_state_dict(r50_file):
    ref, path = r50_file
    model = build_fasterrcnn_r50_fpn(num_classes=3, weights=path, **SMALL).eval()
    saved = ref.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    x = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        want, got = ref(x)[0], model(x)[0]
    # FrozenBatchNorm2d (as torchvision's pretrained build) vs the reference's eval-mode BatchNorm2d: same maths,
    # float rounding apart
    assert torch.equal(got["labels"], want["labels"]) and len(got["boxes"]) > 0
    torch.testing.assert_close(got["scores"], want["scores"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["boxes"], want["boxes"], rtol=1e-4, atol=1e-2)


def test_r50_errors_name_the_file_and_the_keys(r50_file, tmp_path, monkeypatch):
    _, path = r50_file
    with pytest.raises(DetectorWeightsError, match="num_classes=3, the model 5") as err:
        build_fasterrcnn_r50_fpn(num_classes=5, weights=path)
    assert str(path) in str(err.value) and "roi_heads.box_predictor.cls_score.weight" in str(err.value)
    bad = tmp_path / "other.pth"
    torch.save({"backbone.body.conv1.weight": torch.zeros(64, 3, 7, 7), "head.extra": torch.zeros(1)}, bad)
    with pytest.raises(DetectorWeightsError, match="missing keys") as err:
        build_fasterrcnn_r50_fpn(num_classes=3, weights=bad)
    assert str(bad) in str(err.value) and "unexpected keys (1): head.extra" in str(err.value)
    assert "missing keys (294): backbone.body.bn1.weight" in str(err.value) and "(274 more)" in str(err.value)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(DetectorWeightsError, match=f"could not read detector weights file {corrupt}"):
        build_fasterrcnn_r50_fpn(weights=corrupt)
    with pytest.raises(DetectorWeightsError, match=f"{tmp_path / 'absent.pth'} does not exist"):
        build_fasterrcnn_r50_fpn(weights=tmp_path / "absent.pth")
    # no weights given and none in the hub cache: says which file to put where
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(DetectorWeightsError) as err:
        build_fasterrcnn_r50_fpn()
    assert str(tmp_path / "hub" / "checkpoints" / R50_FPN_COCO_FILE) in str(err.value)
    assert "https://download.pytorch.org/models/" + R50_FPN_COCO_FILE in str(err.value)


def test_r50_uses_the_hub_cache_file(r50_file, tmp_path, monkeypatch):
    _, path = r50_file
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / R50_FPN_COCO_FILE).symlink_to(path)
    model = build_fasterrcnn_r50_fpn(num_classes=3)
    saved = torch.load(path, weights_only=True)
    assert torch.equal(model.backbone.body.conv1.weight, saved["backbone.body.conv1.weight"])
    assert model.backbone.body.bn1.eps == 0.0  # torchvision's legacy COCO weights run with eps 0


def test_compact_detector_trains_and_predicts():
    torch.manual_seed(0)
    model = build_compact_detector(num_classes=5, min_size=64, max_size=64)  # no upscaling: CPU-cheap
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params * 4 < 5e6, n_params
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 36.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[4.0, 2.0, 30.0, 40.0], [30.0, 10.0, 60.0, 30.0]]),
                "labels": torch.tensor([2, 4])}]
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out, img in zip(outputs, images):
        assert set(out) == {"boxes", "labels", "scores"}
        assert out["boxes"].shape[1] == 4 and len(out["boxes"]) == len(out["scores"]) == len(out["labels"])
        if len(out["boxes"]):
            assert out["boxes"][:, 2].max() <= img.shape[2] and out["boxes"][:, 3].max() <= img.shape[1]
            assert out["labels"].min() >= 1 and out["labels"].max() <= 4
