"""Segmentation on unannotated photos (issue 29): person-mask consistency against the segmenter's own mask on the
clean photo. The IoU and boundary F-score against hand-counted masks and an independent brute-force computation,
the selection of photos by their clean mask (skips counted), and whole runs -- with a stub two-class segmenter
(always) and with the real selfie_seg (where its files are installed) -- against values recomputed outside the
runner."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import skimage.segmentation
import torch
from PIL import Image
from torch import nn

from benchmark.metrics.segmentation import (
    boundary_f_score,
    boundary_tolerance,
    foreground_iou,
    mask_boundary,
)
from datamodules.photos import PhotoDetectionSet, WithPseudoMasks


def _square(top, left, side, shape=(40, 40)):
    m = np.zeros(shape, bool)
    m[top:top + side, left:left + side] = True
    return m


def test_iou_and_boundary_f_of_a_square_moved_by_one_pixel():
    ref, pred = _square(10, 10, 10), _square(10, 11, 10)
    inter, union = (ref & pred).sum(), (ref | pred).sum()
    assert (inter, union) == (90, 110)  # 10 x 9 shared, 10 x 11 covered
    np.testing.assert_allclose(foreground_iou([inter], [union]), [90 / 110])
    # both outlines have 36 pixels; at distance 0, 18 of them are shared (the top and bottom rows' 9 common
    # columns): P = R = 1/2; within 1 px every pixel of each outline has a partner: F = 1
    assert mask_boundary(ref).sum() == 36 and (mask_boundary(ref) & mask_boundary(pred)).sum() == 18
    assert boundary_f_score(pred, ref, tolerance=0) == pytest.approx(0.5)
    assert boundary_f_score(pred, ref, tolerance=1) == pytest.approx(1.0)


def test_boundary_f_of_a_square_inside_another():
    """A 6x6 square centred in a 10x10 one, tolerance 2: each inner outline pixel lies 2 px from the outer outline
    (P = 1); of the outer outline's 36 pixels, the 6 middle ones of each side are within 2 px of the inner outline,
    the corners and their neighbours are not (sqrt(5), sqrt(8) > 2): R = 24/36, F = 2 * 2/3 / (5/3) = 0.8."""
    ref, pred = _square(10, 10, 10), _square(12, 12, 6)
    assert boundary_f_score(pred, ref, tolerance=2) == pytest.approx(0.8)
    assert boundary_f_score(ref, pred, tolerance=2) == pytest.approx(0.8)  # symmetric in P and R
    assert boundary_f_score(pred, ref, tolerance=1) == 0.0  # no outline pixel within 1 px of the other


def test_boundary_is_scikit_images_inner_boundary_and_ignores_the_image_frame():
    rng = np.random.default_rng(0)
    blob = np.zeros((30, 30), bool)
    blob[5:25, 5:25] = rng.random((20, 20)) > 0.3  # a ragged shape off the frame
    np.testing.assert_array_equal(
        mask_boundary(blob), skimage.segmentation.find_boundaries(blob, connectivity=1, mode="inner"))
    half = np.zeros((8, 8), bool)
    half[:, :3] = True  # touches the top, bottom and left edges: its only contour is column 2
    expected = np.zeros((8, 8), bool)
    expected[:, 2] = True
    np.testing.assert_array_equal(mask_boundary(half), expected)


def test_empty_masks_and_the_tolerance():
    empty = np.zeros((20, 20), bool)
    assert boundary_f_score(empty, empty) == 1.0
    assert boundary_f_score(empty, _square(5, 5, 5, (20, 20))) == 0.0
    assert boundary_f_score(_square(5, 5, 5, (20, 20)), empty) == 0.0
    np.testing.assert_allclose(foreground_iou([0, 3], [0, 4]), [1.0, 0.75])
    assert boundary_tolerance(321, 481) == 5 == math.ceil(0.008 * math.hypot(321, 481))
    assert boundary_tolerance(10, 10) == 1


def _brute_boundary_f(pred: np.ndarray, ref: np.ndarray, tol: float) -> float:
    """Boundary F by pairwise distances between outline pixels (scikit-image's inner boundary; no distance
    transform): the yardstick of the runner's values."""
    bp = np.argwhere(skimage.segmentation.find_boundaries(pred, connectivity=1, mode="inner"))
    br = np.argwhere(skimage.segmentation.find_boundaries(ref, connectivity=1, mode="inner"))
    # the frame is no contour: drop outline pixels that are outline only because they touch the image's edge
    h, w = pred.shape

    def inner(points, mask):
        keep = []
        for y, x in points:
            nb = [(y + dy, x + dx) for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))]
            keep.append(any(0 <= a < h and 0 <= b < w and not mask[a, b] for a, b in nb))
        return points[np.array(keep, bool)] if len(points) else points

    bp, br = inner(bp, pred), inner(br, ref)
    if not len(bp) and not len(br):
        return 1.0
    if not len(bp) or not len(br):
        return 0.0
    d = np.sqrt(((bp[:, None, :] - br[None, :, :]) ** 2).sum(-1))
    p, r = (d.min(1) <= tol).mean(), (d.min(0) <= tol).mean()
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def test_boundary_f_equals_brute_force_on_ragged_masks():
    rng = np.random.default_rng(1)
    for _ in range(5):
        a = np.zeros((24, 32), bool)
        a[2:22, 4:30] = rng.random((20, 26)) > 0.4
        b = a.copy()
        b[rng.random(a.shape) > 0.9] ^= True
        b[:, :3] = True  # touching the frame
        for tol in (0, 1, 2, 3):
            assert boundary_f_score(b, a, tol) == pytest.approx(_brute_boundary_f(b, a, tol))


# ---- the photos and their selection -----------------------------------------------------------------------------
@pytest.fixture
def photo_folder(tmp_path):
    """Small crops of scikit-image photos (the brute-force yardstick stays quick): bright and dark scenes."""
    root = tmp_path / "photos"
    root.mkdir()
    crops = {"astronaut.png": skimage.data.astronaut()[::8, ::8], "coffee.png": skimage.data.coffee()[::8, ::8],
             "chelsea.png": skimage.data.chelsea()[::6, ::6], "night.png": np.full((40, 56, 3), 12, np.uint8)}
    for name, px in crops.items():
        Image.fromarray(np.ascontiguousarray(px)).save(root / name)
    return root


class Bright(nn.Module):
    """A two-class 'segmenter' with a known rule: person where the gray level exceeds 0.5 (scores, NCHW)."""

    def forward(self, x):
        p = (x.mean(1, keepdim=True) - 0.5) * 10
        return torch.cat([-p, p], 1)


def _bright_mask(px: np.ndarray) -> np.ndarray:
    return px.astype(np.float32).mean(-1) / 255 > 0.5


def test_photos_are_selected_by_their_clean_mask_and_skips_counted(photo_folder):
    photos = PhotoDetectionSet(photo_folder)
    masks = [torch.from_numpy(_bright_mask(photos[i][0].permute(1, 2, 0).numpy())).long() for i in range(len(photos))]
    shares = [float(m.float().mean()) for m in masks]
    sel = WithPseudoMasks(photos, masks, 0.1)
    assert sel.names == [n for n, s in zip(photos.names, shares) if s >= 0.1]
    assert [n for n, _ in sel.skipped] == [n for n, s in zip(photos.names, shares) if s < 0.1]
    assert "night.png" in dict(sel.skipped) and len(sel) + len(sel.skipped) == len(photos)
    img, mask = sel[0]
    i = photos.names.index(sel.names[0])
    assert torch.equal(img, photos[i][0]) and torch.equal(mask, masks[i])
    with pytest.raises(ValueError, match="no photo's clean mask covers 99%.*4 photos skipped"):
        WithPseudoMasks(photos, masks, 0.99)
    with pytest.raises(ValueError, match="3 masks for 4 photos"):
        WithPseudoMasks(photos, masks[:3], 0.1)


def _by_hand(folder, mask_of, qf: int, min_share: float):
    """(names, per-photo IoU, per-photo boundary F) at JPEG `qf` (datamodules.corruptions.apply), recomputed with
    numpy and the brute-force boundary F, on the photos whose clean mask covers `min_share`."""
    from datamodules.corruptions import Corruption, apply

    photos = PhotoDetectionSet(folder)
    names, ious, fs = [], [], []
    for i in range(len(photos)):
        px = photos[i][0].permute(1, 2, 0).numpy()
        clean = mask_of(px)
        if clean.mean() < min_share:
            continue
        jpeg = mask_of(apply(np.ascontiguousarray(px), Corruption("jpeg", (qf,)))[0])
        names.append(photos.names[i])
        ious.append((clean & jpeg).sum() / (clean | jpeg).sum())
        fs.append(_brute_boundary_f(jpeg, clean, boundary_tolerance(*clean.shape)))
    return names, np.array(ious), np.array(fs)


def test_photo_run_with_a_stub_segmenter_equals_the_values_by_hand(photo_folder, monkeypatch, capsys):
    from benchmark.boards import per_image
    from benchmark.evaluate import tasks
    from datamodules.corruptions import Corruption
    from lightning_modules.task_models import TaskModel

    monkeypatch.setattr(tasks, "create_task_model", lambda task, name, weights: TaskModel(Bright(), "bright", 2, "rule"))
    req = tasks.TaskRequest(tasks=["segmentation"], methods=["direct"], corruptions=[Corruption("jpeg", (10,))],
                            dataset=f"photos:{photo_folder}", use_cache=False, progress=False, task_model="bright")
    rows, failures = tasks.run_tasks(req)
    assert not failures, failures
    err = capsys.readouterr().err
    names, ious, fs = _by_hand(photo_folder, _bright_mask, 10, tasks.MIN_MASK_SHARE)
    assert 0 < len(names) < 4  # the night photo is skipped
    assert f"{len(names)} of 4 photos selected" in err and f"{4 - len(names)} skipped" in err and "night.png" in err
    by = {(r["method"], r["metric"]): r for r in rows["segmentation"]}
    assert set(by) == {("clean", "consistency_iou"), ("clean", "consistency_boundary_f"),
                       ("direct", "consistency_iou"), ("direct", "consistency_boundary_f")}
    assert by["clean", "consistency_iou"]["value"] == pytest.approx(100.0)
    assert by["clean", "consistency_boundary_f"]["value"] == pytest.approx(100.0)
    assert by["direct", "consistency_iou"]["value"] == pytest.approx(100 * ious.mean(), abs=1e-9)
    assert by["direct", "consistency_boundary_f"]["value"] == pytest.approx(100 * fs.mean(), abs=1e-9)
    for r in rows["segmentation"]:
        assert r["n_images"] == len(names) and r["dataset"].endswith("[mask>=0.1]")
        assert r["dataset"].startswith("folder:photos@")
    kept = by["direct", "consistency_iou"][per_image.KEY]
    assert kept["image"] == names
    np.testing.assert_allclose(kept["consistency_iou"], ious, atol=1e-12)
    np.testing.assert_allclose(kept["consistency_boundary_f"], fs, atol=1e-12)
    # the counts beside them give the same IoU per photo
    np.testing.assert_allclose(np.array(kept["inter_01"]) / np.array(kept["union_01"]), ious, atol=1e-12)


def test_paired_interval_of_a_per_photo_column(photo_folder):
    """A method row's delta on photos resamples the mean of its per-photo column against direct's (not the
    set-level mIoU its counts would give)."""
    from benchmark.boards.per_image import gives, paired

    a = {"image": ["x", "y", "z"], "digest": ["1", "2", "3"], "consistency_iou": np.array([0.9, 0.8, 1.0]),
         "inter_00": np.array([1.0, 1, 1]), "inter_01": np.array([9.0, 8, 10]), "union_00": np.array([2.0, 2, 1]),
         "union_01": np.array([10.0, 10, 10]), "label_00": np.array([1.0, 1, 1]), "label_01": np.array([10.0, 10, 10])}
    b = {**a, "consistency_iou": np.array([0.8, 0.8, 0.7])}
    assert gives(a, "consistency_iou") and not gives(a, "consistency_boundary_f") and gives(a, "mIoU")
    p = paired(a, b, "consistency_iou", 100.0)
    assert p.result.delta == pytest.approx(100 * (0.1 + 0.0 + 0.3) / 3) and p.result.n_images == 3


def _selfie_files() -> Path:
    folder = Path(os.environ.get("CARBENCH_HUMAN_MODELS", Path.home() / ".cache/carbench/weights/human-models"))
    if not (folder / "selfie.json").is_file() or not (folder / "selfie.bin").is_file():
        pytest.skip(f"selfie files absent from {folder}: `bash docker/install.sh` fetches them")
    return folder


def test_real_selfie_is_the_photo_default_and_equals_the_values_by_hand(tmp_path):
    """`benchmark run --task segmentation --dataset photos:DIR` without --task-model: selfie_seg, rows named for
    their reference, per-image files written, values equal to the segmenter run outside the runner."""
    import pandas as pd

    from benchmark.cli import main
    from lightning_modules.task_models import create_task_model

    _selfie_files()
    root = tmp_path / "people"
    root.mkdir()
    Image.fromarray(skimage.data.astronaut()[::2, ::2]).save(root / "astronaut.png")
    Image.fromarray(skimage.data.camera()[::2, ::2]).save(root / "camera.png")  # gray: converted to RGB
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(root / "flat.png")  # no person
    argv = ["run", "--task", "segmentation", "--dataset", f"photos:{root}", "--method", "jpeg", "--qf", "10",
            "--leaderboard", str(tmp_path / "lb"), "--no-cache", "--quiet"]
    assert main(argv) == 0
    rows = pd.read_csv(tmp_path / "lb" / "segmentation.csv")
    assert set(rows["model"]) == {"selfie_seg"} and set(rows["metric"]) == {"consistency_iou",
                                                                            "consistency_boundary_f"}
    net = create_task_model("segmentation", "selfie_seg").net

    def mask_of(px):
        x = torch.from_numpy(np.ascontiguousarray(px)).permute(2, 0, 1).float()[None] / 255
        return net(x).argmax(1)[0].numpy() == 1

    names, ious, fs = _by_hand(root, mask_of, 10, 0.1)
    assert "flat.png" not in names and "astronaut.png" in names
    direct = rows[rows["method"] == "direct"].set_index("metric")
    assert direct.loc["consistency_iou", "value"] == pytest.approx(100 * ious.mean(), abs=1e-3)
    assert direct.loc["consistency_boundary_f", "value"] == pytest.approx(100 * fs.mean(), abs=1e-3)
    assert set(rows["n_images"]) == {len(names)}
    assert len(list((tmp_path / "lb" / "per_image" / "segmentation").glob("*.csv.gz"))) == len(rows)


def test_check_suite_is_skipped_with_a_message_without_the_segmenter_files(tmp_path, monkeypatch, capsys):
    from benchmark.cli.check import run_check
    from benchmark.cli.common import SUITE
    from lightning_modules import registry

    assert SUITE["headline-segmentation"][0][0][:5] == ["run", "--task", "segmentation", "--task-model", "selfie_seg"]
    empty = tmp_path / "weights"
    empty.mkdir()
    monkeypatch.setenv("CARBENCH_HUMAN_MODELS", str(empty / "human-models"))
    monkeypatch.setattr(registry, "weight_search_dirs", lambda: [empty])
    rc, findings = run_check(["headline-segmentation"], committed_dir=tmp_path)
    out = capsys.readouterr().out
    assert rc == 0 and findings == []
    assert "headline-segmentation run 1 skipped" in out and "selfie.json" in out
