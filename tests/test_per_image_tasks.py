"""Per-image results of detection and segmentation rows, and their paired intervals (issue 26)."""
import gzip

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from benchmark.boards import leaderboard, per_image
from benchmark.cli import main
from benchmark.metrics import coco_resample
from benchmark.metrics.coco_resample import MapResampler, matches_from_eval
from benchmark.metrics.detection import coco_map
from benchmark.metrics.paired import paired_delta, paired_delta_of
from benchmark.metrics.segmentation import (
    counts_statistic,
    per_image_counts,
    scores_from_confusion,
)
from datamodules.detection import _quiet

from .test_photo_detection import _human_models, photo_folder  # noqa: F401 -- a fixture

CATS = (1, 2, 5, 7, 9)  # 9: in the catalogue, never annotated; 7: only detected


def _synth(seed: int, n_img: int = 40):
    """Several categories, scores on a 0.1 grid (ties within and across images), crowd boxes, empty images,
    images with boxes but no detection, detections of a category without ground truth."""
    rng = np.random.default_rng(seed)
    images = [{"id": 10 + 3 * i, "width": 200, "height": 200} for i in range(n_img)]
    anns, dets = [], []
    for im in images:
        if rng.random() < 0.15:
            continue  # empty image
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(5, 50, 2)
            c = int(rng.choice(CATS[:3]))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.random() < 0.1)})
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, 3, 4)
                dets.append({"image_id": im["id"], "category_id": c if rng.random() < .85 else int(rng.choice(CATS[:4])),
                             "bbox": [x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3])],
                             "score": float(np.round(rng.uniform(0.2, 1), 1))})
        if rng.random() < 0.2:
            continue  # boxes, no detection
        for _ in range(rng.integers(0, 12)):
            x, y = rng.uniform(0, 150, 2)
            w, h = rng.uniform(5, 50, 2)
            dets.append({"image_id": im["id"], "category_id": int(rng.choice(CATS[:4])), "bbox": [x, y, w, h],
                         "score": float(np.round(rng.uniform(0, 0.8), 1))})
    return images, anns, dets


def _cocoeval(images, anns, dets):
    gt = COCO()
    gt.dataset = {"images": images, "annotations": [dict(a) for a in anns], "categories": [{"id": c} for c in CATS]}
    with _quiet():
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _duplicated(images, anns, dets, image_ids, positions):
    """The images at `positions` (with repeats), in increasing position order, each copy under a new id."""
    by_id = {im["id"]: im for im in images}
    new_images, new_anns, new_dets = [], [], []
    for j, p in enumerate(np.sort(positions)):
        old, new = int(image_ids[p]), j + 1
        new_images.append({**by_id[old], "id": new})
        new_anns += [{**a, "image_id": new} for a in anns if a["image_id"] == old]
        new_dets += [{**d, "image_id": new} for d in dets if d["image_id"] == old]
    for k, a in enumerate(new_anns):
        a["id"] = k + 1
    return new_images, new_anns, new_dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resampled_map_equals_cocoeval_on_the_full_set(seed):
    ev = _cocoeval(*_synth(seed))
    m = matches_from_eval(ev)
    rs = MapResampler(m)
    assert rs.ties  # tied scores in one image and category: the tiling path
    got = rs.scores(np.arange(m.n_images))
    assert [got["map"], got["map_50"], got["map_75"]] == [float(v) for v in ev.stats[:3]]  # bit for bit
    # the whole precision array too, -1 for the category without ground truth
    full = ev.eval["precision"][:, :, :, 0, -1]
    mine = np.full_like(full, -1.0)
    mine[:, :, np.isin(ev.params.catIds, m.categories)] = rs.precision(np.arange(m.n_images))
    np.testing.assert_array_equal(mine, full)


@pytest.mark.parametrize("seed", [0, 3])
def test_a_resample_with_repeats_equals_cocoeval_on_duplicated_images(seed):
    images, anns, dets = _synth(seed)
    m = matches_from_eval(_cocoeval(images, anns, dets))
    rs = MapResampler(m)
    rng = np.random.default_rng(seed + 10)
    for draw in range(3):
        positions = rng.integers(0, m.n_images, m.n_images)
        assert len(np.unique(positions)) < len(positions)  # repeats
        ev = _cocoeval(*_duplicated(images, anns, dets, m.image_ids, positions))
        got = rs.scores(rng.permutation(positions))  # the order of the draws does not matter
        assert [got["map"], got["map_50"], got["map_75"]] == pytest.approx([float(v) for v in ev.stats[:3]],
                                                                           abs=1e-12, rel=0)


def test_coco_map_hands_back_its_matches_and_the_file_round_trips():
    images, anns, dets = _synth(4)
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in CATS]}
    with _quiet():
        gt.createIndex()
    matches: list = []
    value = coco_map(dets, gt, matches=matches)
    (m,) = matches
    assert MapResampler(m).scores(np.arange(m.n_images))["map"] == value["map"]
    names, digests = [f"im{i}" for i in m.image_ids], [f"{i:032x}" for i in m.image_ids]
    data = coco_resample.encode(m, names, digests)
    assert data == coco_resample.encode(m, names, digests) and gzip.decompress(data).startswith(coco_resample.MAGIC)
    back, n2, d2 = coco_resample.decode(data)
    assert (n2, d2) == (names, digests)
    for k, v in m.arrays().items():
        assert getattr(back, k).dtype == v.dtype and np.array_equal(getattr(back, k), v), k
    # no detection at all: every AP is 0 and the matches still count the ground truth
    matches = []
    assert coco_map([], gt, matches=matches)["map"] == 0.0
    assert MapResampler(matches[0]).scores(np.arange(len(images)))["map"] == 0.0


def test_resampling_2000_times_1000_photos_is_fast():
    import time

    rng = np.random.default_rng(0)
    det, gt = [], []
    for i in range(1000):
        cs = rng.integers(1, 81, rng.integers(1, 6))
        gt += [(i, int(c), int((cs == c).sum())) for c in set(cs.tolist())]
        for j, s in enumerate(np.sort(rng.random(30).astype(np.float32))[::-1]):
            tp = int(rng.integers(0, 1024)) if rng.random() < .2 else 0
            det.append((i, int(cs[j % len(cs)]) if rng.random() < .5 else int(rng.integers(1, 81)), float(s), tp,
                        ~tp & 1023))
    a = coco_resample._build(1000, det, gt, np.arange(1000))
    b = coco_resample._build(1000, det[::-1], gt, np.arange(1000))
    ra, rb = MapResampler(a), MapResampler(b)
    t0 = time.process_time()
    r = paired_delta_of(lambda i: (ra.scores(i, ("map",))["map"], rb.scores(i, ("map",))["map"]), 1000, 200)
    assert time.process_time() - t0 < 20  # 200 of the 2000 resamples: ~10x under a minute for all on one core
    assert r.lo <= r.delta <= r.hi


def test_segmentation_counts_reproduce_the_scores_exactly():
    rng = np.random.default_rng(0)
    k = 6
    conf = torch.from_numpy(rng.integers(0, 50, (30, k, k)) * (rng.random((30, k, k)) < 0.3))
    conf[:, 5, :] = 0  # a class never labelled (Acc NaN) ...
    conf[:3, :, 5] = 0
    cols = {c: np.asarray(v, dtype=np.float64) for c, v in per_image_counts(conf).items()}
    for metric in ("mIoU", "mAcc", "aAcc"):
        stat = counts_statistic(cols, metric)
        assert stat(np.arange(30)) == float(scores_from_confusion(conf.sum(0))[metric])
        pos = rng.integers(0, 30, 30)
        weighted = (conf * torch.from_numpy(np.bincount(pos, minlength=30))[:, None, None]).sum(0)
        assert stat(pos) == float(scores_from_confusion(weighted)[metric])
    assert cols["correct"].sum() == float(conf.diagonal(dim1=1, dim2=2).sum())
    assert cols["total"].sum() == float(conf.sum())


def test_label_proxy_rows_pair_their_hits(tmp_path):
    base = {"task": "detection", "model": "m", "dataset": "photos", "codec": "jpeg", "qf": 10, "passes": 1,
            "subsampling": "", "seed": 0, "metric": "label_proxy", "source": "measured", "preset": ""}
    hits_a, hits_b = [1, 1, 0, 1, 0, 1], [1, 0, 0, 0, 0, 1]
    names = [f"p{i}" for i in range(6)]
    rows = [{**base, "method": m, "value": 100 * np.mean(h),
             per_image.KEY: {"image": names, "digest": names, "label_proxy": h}}
            for m, h in (("direct", hits_b), ("dncnn", hits_a))]
    per_image.record(tmp_path / "detection.csv", "detection", rows, leaderboard.TASK_KEY)
    expect = paired_delta(hits_a, hits_b)
    assert rows[1]["_paired"].better == expect.better == 2 and expect.worse == 0
    assert [rows[1][c] for c in per_image.DELTA_COLUMNS] == pytest.approx([100 * expect.delta, 100 * expect.lo,
                                                                           100 * expect.hi])
    assert [rows[0][c] for c in per_image.DELTA_COLUMNS] == ["", "", ""]


# ---- through `benchmark run` on the embedded procedural sets -------------------------------------------------------
def _run(args):
    assert main(args) == 0


@pytest.fixture(scope="module")
def task_boards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("boards")
    args = ["run", "--task", "detection,segmentation", "--method", "dncnn", "--qf", "10", "--n-images", "10",
            "--leaderboard", str(folder), "--quiet", "--cache-dir", str(folder / "cache")]
    _run(args)
    out = {}
    for task in ("detection", "segmentation"):
        board = folder / f"{task}.csv"
        df = leaderboard.read(board, task)
        out[task] = (board, df, {p: p.read_bytes() for p in (folder / "per_image" / task).iterdir()})
    _run(args)  # the direct results come from the cache now, per-image results included
    return out


def _values(board, row):
    return per_image.read_any(board, row, leaderboard.TASK_KEY)


def test_detection_rows_keep_matches_that_give_their_value(task_boards):
    board, df, files = task_boards["detection"]
    assert {p.name.endswith(per_image.MATCHES_SUFFIX) for p in files} == {True} and len(files) == len(df) == 9
    for r in df.to_dict("records"):
        path = per_image.path_for(board, r, leaderboard.TASK_KEY, per_image.MATCHES_SUFFIX)
        values = per_image.read_matches(path)
        assert len(values["image"]) == values["_matches"].n_images == int(r["n_images"]) == 10
        got = MapResampler(values["_matches"]).scores(np.arange(10))[r["metric"]]
        assert leaderboard._fmt(100 * got) == r["value"], r
    rows = {(r["method"], r["metric"]): r for r in df.to_dict("records")}
    for metric in ("map", "map_50", "map_75"):
        assert [rows[("direct", metric)][c] for c in per_image.DELTA_COLUMNS] == ["", "", ""]
        a, b = _values(board, rows[("dncnn", metric)]), _values(board, rows[("direct", metric)])
        ra, rb = MapResampler(a["_matches"]), MapResampler(b["_matches"])
        expect = paired_delta_of(lambda i, ra=ra, rb=rb, metric=metric: (ra.scores(i)[metric], rb.scores(i)[metric]),
                                 10)
        got = [float(rows[("dncnn", metric)][c]) for c in per_image.DELTA_COLUMNS]
        assert got == pytest.approx([100 * v for v in (expect.delta, expect.lo, expect.hi)], abs=1e-4)
        assert got[0] == pytest.approx(float(rows[("dncnn", metric)]["value"]) - float(rows[("direct", metric)]["value"]),
                                       abs=2e-4)


def test_segmentation_rows_keep_counts_that_give_their_value(task_boards):
    board, df, _ = task_boards["segmentation"]
    rows = {(r["method"], r["metric"]): r for r in df.to_dict("records")}
    for r in df.to_dict("records"):
        values = _values(board, r)
        assert len(values["image"]) == int(r["n_images"]) == 10 and "union_00" in values
        assert leaderboard._fmt(100 * counts_statistic(values, r["metric"])(np.arange(10))) == r["value"]
    for metric in ("mIoU", "mAcc", "aAcc"):
        a, b = _values(board, rows[("dncnn", metric)]), _values(board, rows[("direct", metric)])
        sa, sb = counts_statistic(a, metric), counts_statistic(b, metric)
        expect = paired_delta_of(lambda i, sa=sa, sb=sb: (sa(i), sb(i)), 10)
        got = [float(rows[("dncnn", metric)][c]) for c in per_image.DELTA_COLUMNS]
        assert got == pytest.approx([100 * v for v in (expect.delta, expect.lo, expect.hi)], abs=1e-4)


def test_task_per_image_files_are_byte_identical_on_a_rerun(task_boards):
    for task, (board, _, first) in task_boards.items():
        assert {p: p.read_bytes() for p in first} == first, task
        assert not list((board.parent / "per_image" / task).glob(".*.tmp"))


def test_a_detection_reference_without_matches_gives_no_interval(tmp_path):
    common = ["--task", "detection", "--qf", "10", "--n-images", "6", "--leaderboard", str(tmp_path), "--quiet",
              "--cache-dir", str(tmp_path / "cache")]
    _run(["run", "--method", "dncnn", *common])
    for f in (tmp_path / "per_image" / "detection").iterdir():
        f.unlink()  # a board measured before per-image results existed
    _run(["run", "--method", "dncnn", "--no-reference", *common])
    df = leaderboard.read(tmp_path / "detection.csv", "detection")
    dncnn = df[df.method == "dncnn"]
    assert len(dncnn) == 3 and (dncnn[list(per_image.DELTA_COLUMNS)] == "").all().all()
    assert len(list((tmp_path / "per_image" / "detection").iterdir())) == 3  # its own results are kept


def test_photo_rows_keep_consistency_matches_and_label_proxy_hits(photo_folder, tmp_path):  # noqa: F811
    """Unannotated photos with a real detector: consistency mAP rows keep matches, label-proxy rows their hits."""
    _human_models()
    folder = photo_folder
    board = tmp_path / "lb" / "detection.csv"
    with pytest.warns(UserWarning):
        _run(["run", "--task", "detection", "--task-model", "nanodet_g", "--dataset", f"imagenet-flat:{folder}",
              "--method", "dncnn", "--qf", "10", "--leaderboard", str(board.parent), "--quiet",
              "--cache-dir", str(tmp_path / "cache")])
    df = leaderboard.read(board, "detection")
    rows = {(r["method"], r["metric"]): r for r in df.to_dict("records")}
    for r in rows.values():
        values = _values(board, r)
        if r["metric"] == "label_proxy":
            assert len(values["label_proxy"]) == int(r["n_images"]) == 3
            assert leaderboard._fmt(100 * float(np.mean(values["label_proxy"]))) == r["value"]
        else:
            got = MapResampler(values["_matches"]).scores(np.arange(4))[r["metric"].removeprefix("consistency_")]
            assert leaderboard._fmt(100 * got) == r["value"], r
    for metric in ("consistency_map", "label_proxy"):
        assert [rows[("direct", metric)][c] for c in per_image.DELTA_COLUMNS] == ["", "", ""]
        assert all(rows[("dncnn", metric)][c] != "" for c in per_image.DELTA_COLUMNS), metric


def test_compare_rows_pairs_detection_and_segmentation_rows(task_boards):
    from benchmark.boards.compare_rows import compare

    for task, metric in (("detection", "map"), ("segmentation", "mIoU")):
        board, df, _ = task_boards[task]
        rows = {r["method"]: r for r in df[df.metric == metric].to_dict("records")}
        c = compare(board, task, rows["dncnn"], rows["direct"])
        assert not c.missing and not c.error, (task, c.missing, c.error)
        got = c.headline.result
        assert [leaderboard._fmt(v) for v in (got.delta, got.lo, got.hi)] == \
            [rows["dncnn"][k] for k in per_image.DELTA_COLUMNS], task
