"""Detection on real photos without annotations (issue 18): the photo folder (bad files named and counted), the
label proxy against hand-counted cases, the consistency reference, and the whole run with the real detectors on
scikit-image's photos and on a COCO-layout folder the test writes (skipped where their files are not installed)."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from benchmark.metrics.detection import LABEL_PROXY_SCORE, DetectionMAP, LabelProxy
from datamodules.detection import coco_categories
from datamodules.photos import PhotoDetectionSet, WithPseudoBoxes
from tests.coco_reference import coco_map

CAT, PERSON, DOG = 17, 1, 18  # COCO category ids


def _human_models() -> Path:
    folder = Path(os.environ.get("CARBENCH_HUMAN_MODELS", Path.home() / ".cache/carbench/weights/human-models"))
    if not (folder / "centernet.json").is_file() or not (folder / "nanodet.json").is_file():
        pytest.skip(f"detector files absent from {folder}: `bash docker/install.sh` fetches them")
    return folder


@pytest.fixture
def photo_folder(tmp_path):
    """ImageNet-flat names: a tabby cat (-> COCO cat), an astronaut filed as ballplayer (-> person), coffee filed as
    espresso (no COCO category), a gray photo, a truncated JPEG and a 6x6 thumbnail."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.fromarray(skimage.data.chelsea()).save(root / "n02123045_tabby.png")
    Image.fromarray(skimage.data.astronaut()).save(root / "n09835506_ballplayer.png")
    Image.fromarray(skimage.data.coffee()).save(root / "n07920052_espresso.jpg", quality=95)
    Image.fromarray(skimage.data.camera()).save(root / "n02085620_Chihuahua.png")  # gray, not a dog: converted
    data = (root / "n07920052_espresso.jpg").read_bytes()
    (root / "n01440764_tench.JPEG").write_bytes(data[: len(data) // 3])
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "n01443537_goldfish.png")
    return root


def test_photo_folder_names_and_counts_bad_files(photo_folder):
    with pytest.warns(UserWarning):
        ds = PhotoDetectionSet(photo_folder, "imagenet-flat")
    assert ds.names == ["n02085620_Chihuahua.png", "n02123045_tabby.png", "n07920052_espresso.jpg",
                        "n09835506_ballplayer.png"]
    skipped = {Path(p).name: why for p, why in ds.skipped}
    assert set(skipped) == {"n01440764_tench.JPEG", "n01443537_goldfish.png"}
    assert "smaller than" in skipped["n01443537_goldfish.png"]
    assert [Path(p).name for p, _ in ds.converted] == ["n02085620_Chihuahua.png"]
    assert [ds[i][1]["coco_label"] for i in range(len(ds))] == [DOG, CAT, 0, PERSON]
    image, target = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 300, 451) and target["boxes"].shape == (0, 4)
    assert all(ds[i][0].shape[0] == 3 for i in range(len(ds)))  # the gray photo too
    # a plain folder carries no class: no label proxy
    with pytest.warns(UserWarning):  # the bad files again
        plain = PhotoDetectionSet(photo_folder, "folder", n=2)
    assert len(plain) == 2 and all(plain[i][1]["coco_label"] == 0 for i in range(2))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PhotoDetectionSet(photo_folder / "nope")


def _out(*dets):
    return {"boxes": torch.tensor([[0.0, 0, 10, 10]] * len(dets)).reshape(-1, 4),
            "labels": torch.tensor([d[0] for d in dets], dtype=torch.int64),
            "scores": torch.tensor([d[1] for d in dets], dtype=torch.float32)}


def test_label_proxy_counts_hits_among_labelled_photos_once():
    m = LabelProxy()
    outs = [_out((CAT, 0.9)),  # hit
            _out((DOG, 0.9), (CAT, LABEL_PROXY_SCORE - 1e-3)),  # the cat below the threshold: miss
            _out((PERSON, LABEL_PROXY_SCORE)),  # exactly at the threshold: hit
            _out((CAT, 0.99))]  # unlabelled photo: not counted
    targets = [{"coco_label": CAT}, {"coco_label": CAT}, {"coco_label": PERSON}, {"coco_label": 0}]
    m.update(outs, targets, torch.tensor([0, 1, 2, 3]))
    m.update(outs[:1], targets[:1], torch.tensor([0]))  # a padded repeat of photo 0 (DDP): counted once
    assert m.compute() == {"label_proxy": pytest.approx(2 / 3), "n_label": 3}
    empty = LabelProxy()
    empty.update(outs[3:], targets[3:], torch.tensor([3]))
    res = empty.compute()
    assert math.isnan(res["label_proxy"]) and res["n_label"] == 0


def test_consistency_map_is_100_on_the_clean_detections_and_drops_with_a_moved_box():
    clean = {"boxes": torch.tensor([[10.0, 10, 60, 80], [100, 20, 140, 50]]), "labels": torch.tensor([CAT, DOG]),
             "scores": torch.tensor([0.9, 0.5])}
    target = {"boxes": clean["boxes"], "labels": clean["labels"]}
    same = DetectionMAP()
    same.update([clean], [target], torch.tensor([0]))
    assert same.compute()["map"] == pytest.approx(1.0)
    moved = {**clean, "boxes": clean["boxes"] + torch.tensor([[0.0, 0, 0, 0], [30, 0, 30, 0]])}  # IoU 0.14
    shifted = DetectionMAP()
    shifted.update([moved], [target], torch.tensor([0]))
    res = shifted.compute()
    assert res["map_50"] == pytest.approx(0.5)  # the cat found, the dog missed: mean over the two categories


def test_pseudo_boxes_become_the_targets(photo_folder):
    with pytest.warns(UserWarning):
        ds = PhotoDetectionSet(photo_folder, "imagenet-flat")
    boxes = [{"boxes": torch.tensor([[1.0, 2, 3, 4]]) * i, "labels": torch.tensor([i]), "scores": torch.tensor([.5])}
             for i in range(len(ds))]
    wrapped = WithPseudoBoxes(ds, boxes)
    assert torch.equal(wrapped[2][1]["boxes"], boxes[2]["boxes"]) and wrapped[2][1]["coco_label"] == 0
    with pytest.raises(ValueError, match="3 sets of pseudo boxes for 4 photos"):
        WithPseudoBoxes(ds, boxes[:3])


def _consistency_map_by_hand(folder, model: str, qf: int) -> float:
    """Consistency mAP (percent) recomputed outside the runner: the detector on each photo, clean and at JPEG `qf`
    (datamodules.corruptions.apply), the clean detections scoring >= LABEL_PROXY_SCORE as ground truth, and
    pycocotools' COCOeval run directly on the boxes."""
    from datamodules.corruptions import Corruption, apply
    from lightning_modules.task_models import create_task_model

    with pytest.warns(UserWarning):
        photos = PhotoDetectionSet(folder, "imagenet-flat")
    net = create_task_model("detection", model).net.eval()
    truths, outputs = [], []
    with torch.inference_mode():
        for i in range(len(photos)):
            px = photos[i][0]
            jpeg = torch.from_numpy(apply(px.permute(1, 2, 0).numpy(), Corruption("jpeg", (qf,)))[0]).permute(2, 0, 1)
            (clean,), (out,) = net([px.float() / 255.0]), net([jpeg.float() / 255.0])
            keep = clean["scores"] >= LABEL_PROXY_SCORE
            truths.append({"boxes": clean["boxes"][keep], "labels": clean["labels"][keep]})
            outputs.append(out)
    return 100.0 * coco_map(truths, outputs)


@pytest.mark.parametrize("model", ["centernet_mbv3", "nanodet_g"])
def test_photo_board_rows_with_the_real_detectors(photo_folder, tmp_path, model):
    from benchmark.cli import main

    _human_models()
    argv = ["run", "--task", "detection", "--task-model", model, "--dataset", f"imagenet-flat:{photo_folder}",
            "--method", "jpeg", "--qf", "10", "--leaderboard", str(tmp_path / "lb"), "--quiet"]
    with pytest.warns(UserWarning):
        assert main(argv) == 0
    import pandas as pd

    rows = pd.read_csv(tmp_path / "lb" / "detection.csv")
    from benchmark.evaluate.tasks import dataset_label

    label = dataset_label(f"imagenet-flat:{photo_folder}")  # named by its name and content: no machine path
    assert label.startswith("imagenet-flat:photos@")
    assert set(rows["model"]) == {model} and set(rows["dataset"]) == {label}
    clean = rows[rows["method"] == "clean"].set_index("metric")["value"]
    direct = rows[rows["method"] == "direct"].set_index("metric")["value"]
    assert clean["consistency_map"] == pytest.approx(100.0) and clean["consistency_map_50"] == pytest.approx(100.0)
    assert direct["consistency_map"] == pytest.approx(_consistency_map_by_hand(photo_folder, model, 10), abs=1e-3)
    # the three labelled photos (dog id on a gray camera man: no dog; the cat; the astronaut as a person)
    n_label = rows[(rows["metric"] == "label_proxy")]["n_images"]
    assert set(n_label) == {3}
    assert clean["label_proxy"] == pytest.approx(200 / 3)  # cat and person found, no dog in the camera man
    # a re-run serves the same rows from the caches
    with pytest.warns(UserWarning):
        assert main(argv[:-3] + ["--leaderboard", str(tmp_path / "lb2"), "--quiet"]) == 0
    again = pd.read_csv(tmp_path / "lb2" / "detection.csv")
    assert again["value"].tolist() == rows["value"].tolist()


def test_real_detector_on_a_coco_layout_folder(tmp_path):
    """`coco:DIR` with real annotations: the astronaut's box as ground truth, mAP@0.5 from the real detector."""
    from benchmark.cli import main

    _human_models()
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(skimage.data.astronaut()).save(root / "val2017" / "000000000001.jpg", quality=95)
    box = [0, 0, 380, 512]  # the suited figure, x y w h
    doc = {"images": [{"id": 1, "file_name": "000000000001.jpg", "width": 512, "height": 512}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": PERSON, "bbox": box, "area": box[2] * box[3],
                            "iscrowd": 0}],
           "categories": [{"id": i, "name": n} for i, n in coco_categories().items()]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    argv = ["run", "--task", "detection", "--task-model", "centernet_mbv3", "--dataset", f"coco:{root}",
            "--method", "jpeg", "--qf", "10", "--leaderboard", str(tmp_path / "lb"), "--quiet"]
    assert main(argv) == 0
    import pandas as pd

    rows = pd.read_csv(tmp_path / "lb" / "detection.csv")
    clean = rows[rows["method"] == "clean"].set_index("metric")["value"]
    assert set(rows["metric"]) == {"map", "map_50", "map_75"}  # the annotations are the reference
    assert clean["map_50"] == pytest.approx(100.0)  # the one person found at IoU >= 0.5, ranked first
