"""Downstream runs end to end: the embedded shapes default through the CLI, and each real layout (ImageNet flat
folder, COCO, VOC) through the same runner with hand-checkable models."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from benchmark.boards import leaderboard
from benchmark.cli import main
from benchmark.evaluate.tasks import TaskRequest, run_tasks
from datamodules.corruptions import Corruption
from lightning_modules import task_models
from lightning_modules.task_models import TaskModel, TaskModelError, create_task_model
from tests.coco_reference import coco_map

pytestmark = pytest.mark.usefixtures("single_thread")


def run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _by_hand(task: str, corruption, n: int) -> tuple[str, float]:
    """(metric, percent) of the shipped shapes model on the first n test scenes, clean or corrupted, computed here:
    top-1 by argmax, aAcc by counting pixels, detection mAP by pycocotools' COCOeval run directly."""
    from datamodules.tasks import ShapesTaskSet

    net = create_task_model(task).net.eval()
    items = [ShapesTaskSet(task, n, "test", 0, corruption)[i] for i in range(n)]
    with torch.inference_mode():
        x = torch.stack([it[0] for it in items]).float() / 255.0
        if task == "classification":
            labels = torch.stack([it[2] for it in items])
            return "top1", 100.0 * (net(x).argmax(1) == labels).double().mean().item()
        if task == "segmentation":
            masks = torch.stack([it[2] for it in items])
            return "aAcc", 100.0 * (net(x).argmax(1) == masks).double().mean().item()
        outs = net(list(x))
    return "map", 100.0 * coco_map([it[2] for it in items], outs)


def test_embedded_run_writes_three_boards_and_repeats_exactly(tmp_path, capsys):
    args = ["run", "--task", "classification,detection,segmentation", "--method", "jpeg,dncnn", "--qf", "10",
            "--n-images", "6", "--leaderboard", str(tmp_path), "--quiet", "--cache-dir", str(tmp_path / "cache")]
    rc, out, err = run(args, capsys)
    assert rc == 0, err
    import hashlib

    from lightning_modules.registry import CHECKPOINT_DIR

    shipped_sha = hashlib.sha256((CHECKPOINT_DIR / "dncnn_compact.pt").read_bytes()).hexdigest()[:12]
    metrics = {"classification": {"top1"}, "detection": {"map", "map_50", "map_75"},
               "segmentation": {"mIoU", "mAcc", "aAcc"}}
    boards = {}
    for task, names in metrics.items():
        df = pd.read_csv(tmp_path / f"{task}.csv", dtype=str, keep_default_na=False)
        assert list(df.columns[:len(leaderboard.TASK_COLUMNS)]) == leaderboard.TASK_COLUMNS
        assert set(df.metric) == names and set(df.source) == {"measured"} and set(df.n_images) == {"6"}
        # per metric: the clean reference, the corrupted image as is, and the restored one (in classification the
        # restorer is also scored on the clean images)
        first = df[df.metric == sorted(names)[0]]
        assert sorted(first.method) == ["clean", "direct", "dncnn"] + (["dncnn"] if task == "classification" else [])
        assert set(first[first.method == "dncnn"].codec) == ({"jpeg", "none"} if task == "classification" else {"jpeg"})
        clean = df[df.method == "clean"]
        assert set(clean.qf) == {""} and set(clean.codec) == {"none"} and len(clean) == len(names)
        # the restorer's file by content (the task model's weights stay a label in model_weights)
        assert set(df.weights_sha256[df.method == "dncnn"]) == {shipped_sha}
        assert set(df.weights_sha256[df.method != "dncnn"]) == {""}
        for method, codec in (("clean", "none"), ("direct", "jpeg")):  # recomputed outside the runner
            row = df[(df.method == method) & (df.codec == codec)].set_index("metric").value.astype(float)
            metric, value = _by_hand(task, None if method == "clean" else Corruption("jpeg", (10,)), 6)
            assert row[metric] == pytest.approx(value, abs=1e-3), (task, method, metric)
        boards[task] = df
    assert "[detection]" in out and "dmap" in out
    rc, _, _ = run(args, capsys)
    for task in metrics:  # same seed -> same numbers; rows replaced, not appended
        again = pd.read_csv(tmp_path / f"{task}.csv", dtype=str, keep_default_na=False)
        assert again.value.tolist() == boards[task].value.tolist()


@pytest.mark.parametrize("args,msg", [
    (["--task", "nosuch"], "unknown task(s) ['nosuch']"),
    (["--task", "detection", "--dataset", "voc:/x"], "a segmentation set, not detection"),
    (["--task", "detection", "--dataset", "kitti:/x"], "KIND:PATH"),
])
def test_bad_task_arguments_name_the_culprit(tmp_path, capsys, args, msg):
    rc, _, err = run(["run", "--method", "jpeg", "--qf", "10", "--leaderboard", str(tmp_path), "--n-images", "2",
                      "--quiet", *args], capsys)
    assert rc in (1, 2) and msg in err
    assert not list(tmp_path.glob("*.csv"))


def test_task_model_errors_say_what_to_put_where(tmp_path):
    with pytest.raises(TaskModelError, match="pspnet_r50-d8 needs --task-weights"):
        create_task_model("segmentation", "pspnet_r50-d8")
    with pytest.raises(TaskModelError, match="not found; retrain it with `benchmark train --task classification`"):
        create_task_model("classification", "shapes-cnn", str(tmp_path / "missing.pt"))
    wrong = tmp_path / "wrong.pt"
    torch.save({"state_dict": create_task_model("segmentation").net.net.state_dict()}, wrong)
    with pytest.raises(TaskModelError, match="do not fit: .*missing keys"):
        create_task_model("classification", "shapes-cnn", str(wrong))
    with pytest.raises(TaskModelError, match="is a detection model, not segmentation"):
        create_task_model("segmentation", "shapes-frcnn")
    with pytest.raises(TaskModelError, match="unknown detection model 'yolo'"):
        create_task_model("detection", "yolo")


def test_a_failing_restorer_leaves_the_other_rows(monkeypatch):
    from benchmark.evaluate import tasks as task_runner

    def broken(*a, **k):
        raise RuntimeError("weights exploded")

    monkeypatch.setattr(task_runner, "create", broken)
    rows, failures = run_tasks(TaskRequest(["classification"], ["jpeg", "dncnn"], [Corruption("jpeg", (10,))],
                                           n_images=4, progress=False, use_cache=False))
    assert [f.method for f in failures] == ["classification/dncnn"] and "weights exploded" in failures[0].error
    assert sorted(r["method"] for r in rows["classification"]) == ["clean", "direct"]


# ---- real layouts ----------------------------------------------------------------------------------------------------
def test_imagenet_flat_folder_with_a_torchvision_file(tmp_path):
    """top-1/top-5 of the runner equal a direct computation on ImageNet-C crops with the same weights file."""
    import torchvision

    from datamodules.classification import ClassificationSet, imagenet_flat
    from lightning_modules.task_models.classifier import build_classifier

    rng = np.random.default_rng(0)
    wnids = [f"n{k:08d}" for k in range(1000)]
    (tmp_path / "wnids.txt").write_text("\n".join(wnids) + "\n")
    folder = tmp_path / "flat"
    folder.mkdir()
    for k, w in enumerate(["n00000003", "n00000007", "n00000003", "n00000500"]):
        px = rng.integers(0, 256, (40 + 8 * k, 52, 3), dtype=np.uint8)
        Image.fromarray(px).save(folder / f"{w}_{k}.JPEG", quality=95)
    torch.manual_seed(0)
    weights = tmp_path / "resnet18_random.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)

    rows, failures = run_tasks(TaskRequest(["classification"], ["jpeg"], [Corruption("jpeg", (10,))],
                                           dataset=f"imagenet-flat:{folder}", task_model="resnet18",
                                           task_weights=str(weights), wnids=str(tmp_path / "wnids.txt"),
                                           batch_size=3, progress=False, use_cache=False))
    assert not failures, failures
    got = {(r["method"], r["metric"]): r["value"] for r in rows["classification"]}
    net = build_classifier("resnet18", weights)
    labeled = imagenet_flat(folder, tmp_path / "wnids.txt")
    for method, corruption in (("clean", None), ("direct", Corruption("jpeg", (10,)))):
        ds = ClassificationSet(labeled.samples, corruption)
        x = torch.stack([ds[i][0] for i in range(len(ds))]).float() / 255
        y = torch.tensor([ds[i][1] for i in range(len(ds))])
        with torch.no_grad():
            top5 = net(x).topk(5, dim=1).indices
        assert got[(method, "top1")] == pytest.approx(100 * (top5[:, 0] == y).float().mean().item())
        assert got[(method, "top5")] == pytest.approx(100 * (top5 == y[:, None]).any(1).float().mean().item())
    assert {r["n_images"] for r in rows["classification"]} == {4}


class SizeOracleDetector(torch.nn.Module):
    """Returns the ground-truth boxes of the COCO image with this size (the fixture's images differ in size)."""

    def __init__(self, by_size):
        super().__init__()
        self.by_size = by_size

    def forward(self, images):
        out = []
        for im in images:
            boxes, labels = self.by_size[tuple(im.shape[-2:])]
            out.append({"boxes": boxes, "scores": torch.linspace(0.9, 0.5, len(boxes)), "labels": labels})
        return out


def test_coco_layout_through_the_runner(tmp_path, monkeypatch):
    from .test_detection import GT, IMAGES

    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    by_size = {}
    for im in IMAGES:
        Image.fromarray(rng.integers(0, 256, (im["height"], im["width"], 3), dtype=np.uint8)).save(
            root / "val2017" / im["file_name"])
        gts = [(cid, box) for iid, cid, box in GT.values() if iid == im["id"]]
        by_size[(im["height"], im["width"])] = (
            torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h) in gts], dtype=torch.float32),
            torch.tensor([cid for cid, _ in gts]))
    anns = [{"id": aid, "image_id": iid, "category_id": cid, "bbox": box, "area": box[2] * box[3], "iscrowd": 0}
            for aid, (iid, cid, box) in GT.items()]
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": IMAGES, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]}))
    seen = {}

    def fake_model(task, name, weights):
        seen["args"] = (task, name, weights)
        return TaskModel(SizeOracleDetector(by_size), name, 91, str(weights))

    monkeypatch.setattr("benchmark.evaluate.tasks.create_task_model", fake_model)
    rows, failures = run_tasks(TaskRequest(["detection"], ["jpeg"], [Corruption("jpeg", (10,))],
                                           dataset=f"coco:{root}", task_weights="centernet.json", progress=False,
                                           use_cache=False))
    assert not failures, failures
    assert seen["args"] == ("detection", "centernet_mbv3", "centernet.json")  # the real default model
    got = {(r["method"], r["metric"]): r["value"] for r in rows["detection"]}
    # perfect boxes on every image: AP = 100 for clean and JPEG (boxes do not depend on the pixels)
    for method in ("clean", "direct"):
        assert got[(method, "map")] == pytest.approx(100.0)
        assert got[(method, "map_50")] == pytest.approx(100.0)


class ColourCodedSegmenter(torch.nn.Module):
    """Class k is painted with red = 40 k: logits peak at the nearest code (hand-checkable)."""

    def forward(self, x):
        codes = torch.arange(21, dtype=x.dtype).view(1, -1, 1, 1) * 40 / 255
        return -(x[:, :1] - codes).abs()


def test_voc_layout_through_the_runner(tmp_path, monkeypatch):
    root = tmp_path / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True)
    (root / "ImageSets/Segmentation/val.txt").write_text("a\nb\n")
    for k, name in enumerate("ab"):
        mask = np.zeros((32, 40), np.uint8)
        mask[8:24, 8 + 8 * k:32] = 1 + k
        mask[7, :] = 255  # void boundary: ignored
        img = np.zeros((32, 40, 3), np.uint8)
        img[..., 0] = np.where(mask == 255, 200, mask.astype(np.int32) * 40)
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=100, subsampling=0)
        m = Image.frombytes("P", (40, 32), mask.tobytes())
        m.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 253))
        m.save(root / "SegmentationClass" / f"{name}.png")
    monkeypatch.setattr("benchmark.evaluate.tasks.create_task_model",
                        lambda task, name, weights: TaskModel(ColourCodedSegmenter(), name, 21, ""))
    rows, failures = run_tasks(TaskRequest(["segmentation"], ["jpeg"], [Corruption("jpeg", (5,))],
                                           dataset=f"voc:{root}", progress=False, use_cache=False))
    assert not failures, failures
    got = {(r["method"], r["metric"]): r["value"] for r in rows["segmentation"]}
    # the quality-100 file decodes within 20 levels of the codes: every labelled pixel right, three classes present
    assert got[("clean", "mIoU")] == pytest.approx(100.0)
    assert got[("clean", "aAcc")] == pytest.approx(100.0)
    assert got[("direct", "mIoU")] < 100.0  # QF 5 moves edge pixels across codes


def test_mmseg_adapter_without_mmcv_points_to_the_native_model():
    from lightning_modules.task_models.mmseg_adapter import mmseg_import_error

    if mmseg_import_error() is None:
        pytest.skip("mmseg and mmcv's ops import here: the adapter's error path cannot be exercised")
    with pytest.raises(TaskModelError, match="native `pspnet_r50-d8`"):
        create_task_model("segmentation", "mmseg:pspnet_r50-d8_512x512_20k_voc12aug.py", "x.pth")


def test_plot_draws_the_board_values(tmp_path):
    from benchmark.boards.plots import plot_task_board, task_series

    rows = [{"task": "classification", "model": "m", "method": "clean", "preset": "", "dataset": "shapes",
             "codec": "none", "qf": "", "passes": 0, "metric": "top1", "value": 97.0, "source": "measured"}]
    for method, preset, values in (("direct", "", (80.0, 90.0)), ("dncnn", "compact", (82.0, 91.0))):
        rows += [{"task": "classification", "model": "m", "method": method, "preset": preset, "dataset": "shapes",
                  "codec": "jpeg", "qf": str(q), "passes": 1, "metric": "top1", "value": v, "source": "measured"}
                 for q, v in zip((20, 10), values[::-1])]
    board = leaderboard.upsert(tmp_path / "classification.csv", rows, leaderboard.TASK_KEY, leaderboard.TASK_COLUMNS)
    assert task_series(board, "top1") == {"clean": 97.0, "direct": [(10, 80.0), (20, 90.0)],
                                          "dncnn.compact": [(10, 82.0), (20, 91.0)]}
    png = plot_task_board(board, "top1", tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_detector_backbone_starts_from_the_shipped_classifier():
    from benchmark.cli.train import _init_detector_backbone
    from lightning_modules.task_models import SHAPES_TASK_MODELS

    det = SHAPES_TASK_MODELS["shapes-frcnn"].build()
    record = _init_detector_backbone(det)
    cls = create_task_model("classification").net
    assert "shapes_cnn.pt" in record
    for (k, a), (k2, b) in zip(det.backbone.state_dict().items(), cls.features.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # the shipped detector was trained from there: same layout, weights moved on
    shipped = create_task_model("detection").net
    assert shipped.backbone.state_dict().keys() == cls.features.state_dict().keys()
